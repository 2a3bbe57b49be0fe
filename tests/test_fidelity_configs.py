"""The shipped paper configs resolve to the authors' released settings (issue 20), and the reference protocol.

Each assertion names the release's file and setting it pins (docs/reproduction.md lists them);
changing a config away from the release fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from spml.api import load_config, train
from spml.data.layout import PreparedData, ReferenceProtocolData
from spml.errors import SpmlError
from spml.methods.registry import get_method
from spml.papers.schema import load_paper
from spml.pseudolabels.cdul import is_update_epoch
from spml.training.autotune import should_tune
from spml.training.defaults import resolve_defaults
from tiny import synthetic_set


def test_cole_linear_is_the_papers_plain_setting_without_selection() -> None:
    cfg = load_config("cole_linear")
    # train.py linear_fixed_features: Adam at a constant lr, 25 epochs, no early stopping, clean val.
    assert (cfg.regime, cfg.optimizer, cfg.loss, cfg.backbone, cfg.image_size) == ("linear", "adam", "an", "resnet50", 448)
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.weight_decay) == (1e-4, 8, 25, 0.0)
    assert (cfg.schedule, cfg.warmup_steps, cfg.center_features) == ("constant", 0, False)
    assert (cfg.early_stopping.patience, cfg.early_stopping.max_drop) == (0, 0.0)
    assert (cfg.val_set_variant, cfg.seed) == ("clean", 1200)
    assert not should_tune(cfg, get_method(cfg.method))
    # Resolving the regime's defaults at any size changes none of it (the recipe stays the linear default).
    for rows in (101, 65_665):
        resolved = resolve_defaults(cfg, rows)
        assert (resolved.schedule, resolved.warmup_steps, resolved.center_features, resolved.batch_size,
                resolved.epochs, resolved.early_stopping.patience) == ("constant", 0, False, 8, 25, 0)
    recipe = resolve_defaults(load_config(None, ["regime=linear"]), 65_665)
    assert (recipe.schedule, recipe.center_features) == ("cosine", True)


def test_ccd_boosts_positive_cams_by_the_run_scripts_coeff() -> None:
    # train_gpu#0.sh --coeff 3; train.py: model.alpha = coeff * alpha at epoch 0.
    code, paper = load_config("ccd"), load_config("ccd_paper")
    assert (code.head, code.head_params) == ("linear", {"boost": 3.0})
    assert paper.head_params == {"boost": 1.0}  # the paper's text has no boost
    assert load_config(None, ["method=ccd"]).head_params == {}  # spml's --method ccd default: no boost
    assert code.protocol == "standard"


def test_cdul_release_holds_the_reproductions_networks_and_schedule() -> None:
    spml_choice, release = load_config("cdul"), load_config("cdul_release")
    assert (spml_choice.backbone, spml_choice.image_size, spml_choice.method_params["vlm"]) == (
        "resnet50", 448, "open_clip:ViT-B-16/openai")
    assert (release.backbone, release.image_size) == ("resnet101", 224)
    mp = release.method_params
    assert (mp["vlm"], mp["vlm_preprocess"], mp["template"]) == ("open_clip:RN50x64/openai", "native", "a photo of a {}")
    # src/train.py: update when (epoch + 1) > warmup (10) and (epoch + 1) % 10 == 0 -> run epochs 20, 30, ...
    updates = [e for e in range(1, 101) if is_update_epoch(e, mp["warmup_epochs"], mp["update_every"])]
    assert updates == [e for e in range(1, 101) if e > 10 and e % 10 == 0]
    assert (release.lr, release.batch_size, release.epochs) == (1e-5, 8, 100)


@pytest.mark.parametrize("name", ["gr", "gpr_voc", "gpr_coco", "gpr_nuswide", "gpr_cub", "boostlu"])
def test_head_lr_times_ten_and_clean_val_as_the_releases(name: str) -> None:
    cfg = load_config(name)
    assert (cfg.head_lr_mult, cfg.val_set_variant) == (10.0, "clean")


@pytest.mark.parametrize("name", ["gr", "gpr_voc", "gpr_coco", "gpr_nuswide", "gpr_cub"])
def test_two_point_drop_stops_gr_and_aevlp(name: str) -> None:
    cfg = load_config(name)
    assert cfg.early_stopping.max_drop == 0.02  # train.py: bestmap_val - map_val > 2 (percent)
    # AEVLP also stops after 2 epochs without a new best (train.py early_stop == 2); GR has no such rule.
    assert cfg.early_stopping.patience == (None if name == "gr" else 2)


def test_prompts_as_the_releases() -> None:
    for name in ("gpr_voc", "gpr_coco", "gpr_nuswide"):  # models.py PromptLearner: "a photo of a " + name + "."
        mp = load_config(name).method_params
        assert (mp["template"], mp["prompt_names"]) == ("a photo of a {}.", "raw")
    cub = load_config("gpr_cub").method_params
    assert (cub["template"], cub.get("prompt_names", "auto")) == ("a photo of a {}.", "auto")
    for name in ("vlpl", "vlpl_voc"):  # main_clip.py: *_labelonly text features for COCO and VOC
        mp = load_config(name).method_params
        assert (mp["template"], mp["prompt_names"]) == ("{}", "raw")
    for name in ("vlpl_nuswide", "vlpl_cub"):
        mp = load_config(name).method_params
        assert (mp["template"], mp["prompt_names"]) == ("a photo of a {}", "auto")


def test_q2l_takes_the_releases_recipe() -> None:
    cfg = load_config("q2l")
    assert (cfg.schedule, cfg.onecycle_pct_start, cfg.warmup_steps, cfg.lr, cfg.batch_size, cfg.epochs) == ("onecycle", 0.2, 0, 1e-4, 64, 80)
    assert (cfg.optimizer, cfg.weight_decay, cfg.ema_decay) == ("adamw", 1e-2, 0.9997)
    assert (cfg.augment.flip, cfg.augment.randaugment, cfg.augment.cutout) == (0.0, True, 0.005)
    assert cfg.protocol == "standard"
    assert load_config("q2l", ["protocol=reference"]).protocol == "reference"


def test_reference_protocol_is_checked() -> None:
    with pytest.raises(SpmlError, match="protocol must be one of"):
        load_config(None, ["protocol=test"])
    with pytest.raises(SpmlError, match="observed"):
        load_config("gr", ["protocol=reference"])
    with pytest.raises(SpmlError, match="val_set_variant"):
        load_config(None, ["protocol=reference", "val_set_variant=observed"])


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("protocol") / "data", num_images=60, num_classes=3, seed=5)


def test_reference_protocol_trains_on_train_and_val_and_selects_on_test(synth: Path, tmp_path: Path) -> None:
    data = PreparedData.open(synth)
    assert data.for_protocol("standard") is data
    ref = data.for_protocol("reference")
    assert isinstance(ref, ReferenceProtocolData)
    train_split, val_split, test_split = (data.split(n) for n in ("train", "val", "test"))
    assert ref.split("train").images == [*train_split.images, *val_split.images]
    np.testing.assert_array_equal(ref.split("train").labels, np.concatenate([train_split.labels, val_split.labels]))
    assert ref.split("val").images == test_split.images
    assert ref.split("train") is ref.split("train")  # built once while the files stay the same

    settings = ["device=cpu", "image_size=32", "eval_batch_size=64", "backbone=test_resnet", "pretrained=none",
                "regime=linear", "epochs=3", "lr=0.01", "batch_size=16"]
    runs = {}
    for protocol in ("standard", "reference"):
        train(synth, load_config(None, [*settings, f"protocol={protocol}"]), tmp_path / protocol)
        runs[protocol] = json.loads((tmp_path / protocol / "results.json").read_text())
    # The epoch is chosen on the test split: its val mAP is the test mAP of the same weights.
    assert runs["reference"]["val_map"] == pytest.approx(runs["reference"]["test_map"], abs=1e-6)
    assert runs["standard"]["val_map"] != pytest.approx(runs["standard"]["test_map"], abs=1e-6)
    assert (runs["reference"]["protocol"], runs["standard"]["protocol"]) == ("reference", "standard")


def test_cole_linear_run_trains_all_25_epochs_at_a_constant_lr_without_selection(synth: Path, tmp_path: Path) -> None:
    tiny = ["device=cpu", "image_size=32", "eval_batch_size=64", "backbone=test_resnet", "pretrained=none",
            "expected_num_pos=1.5"]
    run = tmp_path / "cole"
    train(synth, load_config("cole_linear", tiny), run)
    results = json.loads((run / "results.json").read_text())
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    # No selection (test_cole_linear_is_the_papers_plain_setting_without_selection): the file's lr and batch ran.
    assert (results["epochs_run"], results["stopped_early"]) == (25, False)
    assert (resolved["lr"], resolved["batch_size"], resolved["schedule"], resolved["warmup_steps"],
            resolved["center_features"], resolved["early_stopping"]["patience"]) == (1e-4, 8, "constant", 0, False, 0)


def test_query2label_backbone_freeze_is_the_reference_protocols_one_key() -> None:
    """Their frozen BatchNorm, stem and layer1: spml's q2l default leaves them trained, --protocol reference freezes them."""
    rows = [row for table in load_paper("query2label").tables for row in table.rows]
    assert rows and all(load_config(r.config, r.run_overrides("reference")).freeze_backbone == "bn_stem_layer1" for r in rows)
    assert all(load_config(r.config, r.run_overrides("honest")).freeze_backbone == "none" for r in rows)
