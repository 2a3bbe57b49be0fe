"""Loading open_clip models: specs, offline failures, weightless models, preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spml.errors import SpmlError
from spml.vlm import Preprocess, load_vlm, model_name_for, parse_spec
from spml.vlm.micro_clip import MicroClipConfig
from spml.vlm import model as vlm_model
from spml.vlm.model import IMAGENET_MEAN, IMAGENET_STD

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def test_parse_spec():
    assert parse_spec("open_clip:ViT-L-14-336/openai") == ("ViT-L-14-336", "openai")
    assert parse_spec("open_clip:hf-hub:org/name") == ("hf-hub:org/name", None)
    assert parse_spec("open_clip:micro-clip") == ("micro-clip", None)
    for bad in ("ViT-B-32/openai", "open_clip:", "open_clip:ViT-B-32/", "open_clip:hf-hub:"):
        with pytest.raises(SpmlError):
            parse_spec(bad)


def test_unknown_model_names_how_to_list():
    with pytest.raises(SpmlError, match=r"unknown open_clip model 'ViT-Q-99'.*list_models\(\)"):
        load_vlm("open_clip:ViT-Q-99/openai")


def test_unknown_tag_lists_valid_tags():
    with pytest.raises(SpmlError, match=r"unknown pretrained tag 'nope' for ViT-B-32; valid: .*openai"):
        load_vlm("open_clip:ViT-B-32/nope")


def test_model_without_weights_is_refused():
    with pytest.raises(SpmlError, match=r"has no weights.*method_params.vlm_checkpoint=FILE.*ViT-B-32/none"):
        load_vlm("open_clip:ViT-B-32")


def test_offline_download_gives_one_line(monkeypatch):
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("timm/resnet50_clip.openai", "open_clip_pytorch_model.bin"), str):
        pytest.skip("RN50/openai weights are in the local cache")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # no network in tests, and no retries
    with pytest.raises(SpmlError) as err:
        load_vlm("open_clip:RN50/openai")
    message = str(err.value)
    assert "\n" not in message
    assert "open_clip_pytorch_model.bin" in message and "timm/resnet50_clip.openai" in message
    assert "method_params.vlm_checkpoint=FILE" in message and "method_params.vlm=open_clip:RN50" in message
    with pytest.raises(SpmlError, match=r"huggingface.co/org/clip.*method_params.vlm=open_clip:local-dir:FOLDER"):
        load_vlm("open_clip:hf-hub:org/clip")


def test_weightless_model_is_deterministic_and_never_downloads(monkeypatch):
    import open_clip.pretrained

    def no_download(*args, **kwargs):
        raise AssertionError("a weightless model must not download")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", no_download)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_download)
    a = load_vlm("open_clip:ViT-B-32/none")
    b = load_vlm("open_clip:ViT-B-32/none")
    assert a.identity == {"model": "ViT-B-32", "pretrained": "none"}
    assert a.preprocess.size == (224, 224)
    assert a.preprocess.mean == pytest.approx(OPENAI_MEAN) and a.preprocess.std == pytest.approx(OPENAI_STD)
    assert not a.model.training and not any(p.requires_grad for p in a.model.parameters())
    pa, pb = a.model.visual.conv1.weight, b.model.visual.conv1.weight
    assert torch.equal(pa, pb)
    emb = a.encode_texts(["a photo of a dog"])
    assert emb.shape == (1, 512) and float(emb.norm()) == pytest.approx(1.0, abs=1e-5)


def _micro_files(tmp_path, name="micro-clip"):
    from open_clip import add_model_config, create_model
    from safetensors.torch import save_file

    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(MicroClipConfig().to_open_clip()))
    add_model_config(config)
    torch.manual_seed(1)
    model = create_model(name, load_weights=False)
    checkpoint = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    return checkpoint, config, model


def test_local_checkpoint_and_config(tmp_path):
    checkpoint, config, model = _micro_files(tmp_path)
    vlm = load_vlm("open_clip:micro-clip", checkpoint, config)
    assert vlm.image_size == 32 and vlm.preprocess.size == (32, 32)
    assert set(vlm.identity) == {"model", "pretrained", "checkpoint_sha256", "model_config"}
    assert torch.equal(vlm.model.visual.conv1.weight, model.visual.conv1.weight)
    assert vlm.tokenizer(["a photo of a red circle"]).shape == (1, 24)  # context length from the config
    resized = vlm.at_size(48)
    assert resized.preprocess.size == (48, 48) and resized.identity == vlm.identity
    assert resized.encode_images(torch.zeros(1, 3, 48, 48)).shape == (1, 64)
    assert vlm.at_size(48) is resized  # reloaded once


def test_local_file_errors(tmp_path):
    checkpoint, config, _ = _micro_files(tmp_path)
    with pytest.raises(SpmlError, match="checkpoint file not found"):
        load_vlm("open_clip:micro-clip", tmp_path / "missing.safetensors", config)
    with pytest.raises(SpmlError, match="registers this config as 'micro-clip', but the spec names 'tiny'"):
        load_vlm("open_clip:tiny", checkpoint, config)
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(SpmlError, match="not JSON"):
        load_vlm("open_clip:broken", checkpoint, bad)
    with pytest.raises(SpmlError, match="either a pretrained tag"):
        load_vlm("open_clip:micro-clip/openai", checkpoint, config)
    wrong = tmp_path / "wrong.safetensors"
    wrong.write_bytes(b"garbage")
    with pytest.raises(SpmlError) as err:
        load_vlm("open_clip:micro-clip", wrong, config)
    assert "\n" not in str(err.value)


def test_preprocess_modes_and_normalisation():
    base = dict(mean=OPENAI_MEAN, std=OPENAI_STD)
    grey = (128 / 255 - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    black = -np.array(OPENAI_MEAN) / np.array(OPENAI_STD)

    image = torch.full((3, 40, 80), 128, dtype=torch.uint8)
    image[:, :, :8] = 0  # a dark strip that the centre crop removes
    shortest = Preprocess(size=(20, 20), resize_mode="shortest", **base)(image)
    assert shortest.shape == (3, 20, 20)
    np.testing.assert_allclose(shortest[:, :, 4].numpy(), np.repeat(grey[:, None], 20, 1), atol=1e-5)

    image = torch.full((3, 40, 80), 128, dtype=torch.uint8)
    image[:, :, :40] = 0  # dark left half
    squash = Preprocess(size=(20, 20), resize_mode="squash", **base)(image)
    np.testing.assert_allclose(squash[:, 10, 0].numpy(), black, atol=1e-5)  # squash keeps the whole width
    np.testing.assert_allclose(squash[:, 10, 19].numpy(), grey, atol=1e-5)

    image = torch.full((3, 40, 80), 128, dtype=torch.uint8)
    longest = Preprocess(size=(20, 20), resize_mode="longest", fill_color=0, **base)(image)
    np.testing.assert_allclose(longest[:, 0, 10].numpy(), black, atol=1e-5)  # padding rows
    np.testing.assert_allclose(longest[:, 10, 10].numpy(), grey, atol=1e-5)
    with pytest.raises(ValueError):
        Preprocess(size=(20, 20), **base)(image.float())


def test_local_dir_is_the_offline_form_of_hf_hub(tmp_path):
    checkpoint, config, model = _micro_files(tmp_path / "files")
    folder = tmp_path / "repo"
    folder.mkdir()
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear", "resize_mode": "squash"}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": json.loads(config.read_text()), "preprocess_cfg": preprocess})
    )
    (folder / "open_clip_model.safetensors").write_bytes(checkpoint.read_bytes())
    vlm = load_vlm(f"open_clip:local-dir:{folder}")
    assert torch.equal(vlm.model.visual.conv1.weight, model.visual.conv1.weight)
    assert vlm.preprocess.mean == (0.5, 0.5, 0.5) and vlm.preprocess.resize_mode == "squash"
    assert vlm.identity["model"] == "local-dir:repo" and len(vlm.identity["files_sha256"]) == 2
    assert vlm.tokenizer(["a photo of a red circle"]).shape == (1, 24)
    with pytest.raises(SpmlError, match="no open_clip_config.json"):
        load_vlm(f"open_clip:local-dir:{tmp_path / 'files'}")
    with pytest.raises(SpmlError, match="brings its own weights"):
        load_vlm(f"open_clip:local-dir:{folder}", checkpoint=checkpoint)


# -- QuickGELU for weights trained with it; preprocessing modes --------------------------------


def test_model_name_for_maps_quick_gelu_weights_without_loading(monkeypatch):
    import open_clip

    def no_build(*args, **kwargs):
        raise AssertionError("model_name_for must not build a model")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_build)
    assert model_name_for("open_clip:ViT-L-14-336/openai") == "ViT-L-14-336-quickgelu"
    assert model_name_for("open_clip:RN50x64/openai") == "RN50x64-quickgelu"
    assert model_name_for("open_clip:ViT-B-32-quickgelu/openai") == "ViT-B-32-quickgelu"
    assert model_name_for("open_clip:ViT-B-32/laion400m_e32") == "ViT-B-32-quickgelu"  # also trained with it
    assert model_name_for("open_clip:ViT-B-32/laion2b_s34b_b79k") == "ViT-B-32"  # GELU weights
    assert model_name_for("open_clip:ViT-B-32/none") == "ViT-B-32"
    assert model_name_for("open_clip:hf-hub:org/name") == "hf-hub:org/name"


def test_openai_weights_build_the_quick_gelu_model(monkeypatch):
    import open_clip
    from open_clip.transformer import QuickGELU

    real = open_clip.create_model_and_transforms
    built = {}

    def weightless(name, **kwargs):  # the real factory call, minus the (network) weights
        built["name"] = name
        return real(name, **{**kwargs, "pretrained": None, "load_weights": False})

    monkeypatch.setattr(open_clip, "create_model_and_transforms", weightless)
    monkeypatch.setattr(vlm_model, "missing_vlm_weights", lambda *args: None)  # as if cached: no offline refusal
    vlm = load_vlm("open_clip:ViT-B-32/openai")
    assert built["name"] == "ViT-B-32-quickgelu" == vlm.identity["model"]
    acts = {type(m) for m in vlm.model.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))}
    assert acts == {QuickGELU}
    gelu = load_vlm("open_clip:ViT-B-32/none")  # no QuickGELU-trained weights: open_clip's own GELU
    assert not any(isinstance(m, QuickGELU) for m in gelu.model.modules())


def test_squash_mode_keeps_the_whole_image_with_imagenet_statistics(tmp_path):
    checkpoint, config, _ = _micro_files(tmp_path)
    native = load_vlm("open_clip:micro-clip", checkpoint, config)
    squash = load_vlm("open_clip:micro-clip", checkpoint, config, preprocessing="squash")
    assert squash.preprocess.resize_mode == "squash" and squash.preprocess.size == native.preprocess.size
    assert squash.preprocess.mean == IMAGENET_MEAN and squash.preprocess.std == IMAGENET_STD
    image = torch.full((3, 32, 128), 128, dtype=torch.uint8)
    image[:, :, :16] = 0  # a dark strip at the left edge of a 4:1 landscape image
    black = -np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(squash.preprocess(image)[:, 16, 0].numpy(), black, atol=1e-5)  # kept
    assert float(native.preprocess(image)[:, 16, 0].min()) > 0  # the centre crop drops it
    assert squash.preprocess_identity["mode"] == "squash" and native.preprocess_identity["mode"] == "native"
    assert squash.preprocess_identity != native.preprocess_identity
    assert squash.at_size(48).preprocess.resize_mode == "squash"  # reloading keeps the mode
    custom = native.with_preprocessing("squash", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert custom.model is native.model and custom.preprocess.mean == (0.5, 0.5, 0.5)
    assert custom.preprocess.resize_mode == "squash" and native.preprocess.resize_mode == "shortest"
    with pytest.raises(SpmlError, match="unknown VLM preprocessing 'crop'.*native, squash"):
        load_vlm("open_clip:micro-clip", checkpoint, config, preprocessing="crop")
    with pytest.raises(SpmlError, match="std must be three numbers"):
        native.with_preprocessing("native", std=(1.0, 0.0, 1.0))
