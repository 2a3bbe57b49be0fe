"""CCD against the authors' own training loop (k0u-id/CCD), recorded in fixtures/parity/ccd.json.

``benchmarks/parity_ccd.py REF_CHECKOUT`` ran the release's ``main_multi.py`` (shims listed in the
fixture's header) on the tiny symmetric set of ``parity_vlm.py``, with its stand-in CLIP and seeded
ResNet-18. These tests rebuild the same inputs and run spml on them.

What must agree, and how closely:

* The label arithmetic (bias, debiased initial labels, local labels, mixing, the adaptive
  threshold, the early-stopping rule) fed the reference's own CLIP and classifier outputs: to
  float32 rounding (1e-6).
* spml's CLIP scores of the whole images: the reference's to 1e-3 (spml caches similarities in
  float16); of the reference's crops: softmax probabilities to 0.02 (spml resizes a crop to uint8
  before CLIP's preprocessing, the reference resizes the normalised float tensor twice).
* Training (slow test): the two warm-up epochs to 1e-3 relative (one Adam step magnifies float
  noise in near-zero gradients into lr-sized steps; the second epoch then differs at ~2e-4).
* The CAM box: the release's own CAMs boxed by spml with ``cam_box_rule: raster`` give its boxes
  exactly.
* Deliberate differences, pinned: spml's default box (``bbox``) is the bounding box of every
  pixel above 0.95, where the release takes the first and last such pixels in raster order as
  corners (and slices up to ``last + offset`` exclusive): every spml box contains the release's
  box, the updated labels differ (mean |diff| < 0.05 here) and so do the post-update losses (< 5%
  here) and the epoch picked; spml's training-label mAP (eval-mode predictions, labels >= 0.5) differs from the
  release's (training-mode predictions, labels == 1), so the early-stopping epochs differ.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from parity import one_torch_thread  # noqa: F401  (autouse: one torch thread)
from parity_vlm import NAMES, checksum, rebuild_inputs

from spml.api import load_config, train
from spml.data.dataset import load_image
from spml.data.layout import ReferenceProtocolData
from spml.methods.ccd.views import cam_box, crop_resized, max_over_views
from spml.pseudolabels.ccd import (
    adaptive_view_threshold,
    clip_probabilities,
    debias,
    early_stop_epoch,
    estimate_clip_bias,
    mix_labels,
)
from spml.training.hooks import TrainingHooks
from spml.vlm import load_vlm, score_split
from spml.vlm.scores import score_images
from spml.vlm.text import text_embeddings

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "ccd.json"
REF = json.loads(FIXTURE.read_text())
INPUTS = REF["header"]["inputs"]
L = INPUTS["num_classes"]
CLASSES = list(NAMES[:L])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The recording's data, CLIP and backbone, rebuilt from their seeds (checked against the header)."""
    root = tmp_path_factory.mktemp("parity_ccd")
    built = rebuild_inputs(root, INPUTS, clip=True)
    data, backbone, (checkpoint, config) = built["data"], built["backbone"], built["clip"]
    vlm = load_vlm("open_clip:parity-clip", checkpoint=checkpoint, model_config=config, preprocessing="squash")
    return {"root": root, "data": data, "clip": (checkpoint, config), "backbone": backbone, "vlm": vlm}


def ref_array(key: str) -> np.ndarray:
    return np.asarray(REF[key], dtype=np.float64)


def view_rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's views: image row, class, crop softmax scores."""
    rows = {name: i for i, name in enumerate(REF["names"])}
    image = np.array([rows[v["id"]] for v in REF["views"]])
    cls = np.array([v["class"] for v in REF["views"]])
    return image, cls, np.array([v["scores"] for v in REF["views"]])


def test_initial_labels_match_reference() -> None:
    probs = clip_probabilities(ref_array("global_similarity"), 100.0)
    bias = estimate_clip_bias(probs, entropy_threshold=2.0)
    assert bias.fallback == [] and bias.num_confident == int(sum(REF["confident"]))
    np.testing.assert_allclose(bias.bias, ref_array("clip_bias"), atol=1e-6, rtol=0)
    initial = np.clip(debias(probs, bias.bias, 0.05), 0, 1)
    np.testing.assert_allclose(initial, ref_array("initial_labels"), atol=1e-6, rtol=0)


def test_label_update_matches_reference() -> None:
    """Threshold, view classes and the updated labels from the reference's classifier and crop scores."""
    probs = clip_probabilities(ref_array("global_similarity"), 100.0)
    bias = estimate_clip_bias(probs, entropy_threshold=2.0)
    initial = np.clip(debias(probs, bias.bias, 0.05), 0, 1)
    preds = np.array([u["preds"] for u in REF["update"]])
    search = adaptive_view_threshold(preds, bound=4, start=0.05, step=0.001, block=100)
    assert search.threshold == pytest.approx(REF["multiplier"])
    # spml selects probs > threshold, the release >= threshold: the same classes unless one ties.
    image, cls, scores = view_rows()
    chosen = np.argwhere(preds > search.threshold)
    assert sorted(map(tuple, chosen.tolist())) == sorted(zip(image.tolist(), cls.tolist()))
    local, has_view = max_over_views(scores, image, len(REF["names"]))
    assert has_view.all()
    np.testing.assert_allclose(local, np.array([u["local_raw"] for u in REF["update"]]), atol=1e-6, rtol=0)
    updated = mix_labels(initial, debias(local, bias.bias, 0.05), alpha=0.2)
    np.testing.assert_allclose(updated, ref_array("updated_labels"), atol=1e-6, rtol=0)


def test_cam_boxes_match_reference() -> None:
    """The release's CAMs boxed by spml: ``raster`` gives its boxes exactly, spml's ``bbox`` contains them."""
    size, offset = INPUTS["size"], INPUTS["offset"]
    for view in REF["views"]:
        cam = torch.tensor(view["cam"])
        assert list(cam_box(cam, (size, size), 0.95, offset, rule="raster")) == view["box"]
        x0, y0, x1, y1 = cam_box(cam, (size, size), 0.95, offset)
        bx0, by0, bx1, by1 = view["box"]
        assert x0 <= bx0 and y0 <= by0 and x1 >= bx1 and y1 >= by1


def test_early_stopping_rule_matches_reference() -> None:
    """The release's rule on its own training-label mAPs picks its ``bestccd`` epoch (0-based there)."""
    maps = [e["train_map"] for e in REF["epochs"]]
    assert early_stop_epoch(maps) == REF["ccd_stop"]["epoch"]


def test_clip_scores_match_reference(inputs: dict) -> None:
    """The CLIP scores of spml: the whole images and on the reference's crops (squashed, as the shim feeds them)."""
    data = ReferenceProtocolData.open(inputs["data"])
    split = data.split("train")
    assert [p.name for p in split.images] == REF["names"]
    sims = np.asarray(score_split(inputs["vlm"], split, CLASSES, ["a photo of the {}"], cache_root=data.cache_dir, num_workers=0))
    np.testing.assert_allclose(sims[:, 0], ref_array("global_similarity"), atol=1e-3, rtol=0)
    vlm = inputs["vlm"]
    vlm = dataclasses.replace(vlm, preprocess=dataclasses.replace(vlm.preprocess, resize_mode="squash"))
    text = text_embeddings(vlm, CLASSES, ["a photo of the {}"], cache_root=None)
    crops = [crop_resized(load_image(split.images[REF["names"].index(v["id"])]), tuple(v["box"]), INPUTS["size"])
             for v in REF["views"]]
    probs = clip_probabilities(np.asarray(score_images(vlm, crops, text, batch_size=64)), 100.0)
    np.testing.assert_allclose(probs, view_rows()[2], atol=0.02, rtol=0)


class WeightRecorder(TrainingHooks):
    """The head's weights after every epoch (the numbers the reference recorded)."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def setup(self, model: torch.nn.Module, loss: torch.nn.Module) -> None:
        self.model = model
        self.initial = checksum({"weight": model.head.fc.weight.detach(), "bias": model.head.fc.bias.detach()})

    def on_epoch_end(self, epoch, train_probs) -> None:  # type: ignore[no-untyped-def]
        w = self.model.head.fc.weight.detach().double()
        self.epochs.append({"head_weight_norm": float(w.norm()), "head_weight_first": w.flatten()[:8].tolist(),
                            "head_bias": self.model.head.fc.bias.detach().double().tolist()})

    @property
    def needs_train_probs(self) -> bool:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["bbox", "raster"])
def test_training_trajectory(inputs: dict, tmp_path: Path, rule: str) -> None:
    """spml.train with the shipped ``ccd`` config on the reference's inputs, protocol reference.

    ``raster`` (the release's box rule, ``method_params.cam_box_rule``) runs all 6 epochs: the
    trajectory, the epoch picked and its test mAP are the release's. ``bbox`` (the shipped rule)
    runs the warm-up and the update epoch, and pins how far its labels and losses move.
    """
    checkpoint, config = inputs["clip"]
    size = INPUTS["size"]
    epochs = INPUTS["epochs"] if rule == "raster" else 3
    overrides = {
        # the tiny set: backbone and its weights, sizes, full batch, epochs, lr (as the recording)
        "backbone": "resnet18", "pretrained": str(inputs["backbone"]), "image_size": size,
        "batch_size": sum(INPUTS["counts"][s] for s in ("train", "val")), "epochs": epochs,
        "lr": INPUTS["lr"], "protocol": "reference", "device": "cpu",
        "method_params.vlm": "open_clip:parity-clip", "method_params.vlm_checkpoint": str(checkpoint),
        "method_params.vlm_model_config": str(config),
        # the 640 frame and its 80 px offset are the 64 px image and 8 px; crops squashed as the shim
        "method_params.cam_image_size": size, "method_params.box_offset": INPUTS["offset"],
        "method_params.box_offset_frame": size, "method_params.crop_long_side": size,
        "method_params.crop_resize_mode": "squash", "method_params.color_jitter": 0.0,
        "method_params.cam_box_rule": rule,
    }
    recorder = WeightRecorder()
    run = tmp_path / "run"
    train(inputs["data"], load_config("ccd", overrides), run, hooks=recorder)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run / "results.json").read_text())
    steps = REF["steps"]
    assert len(steps) == INPUTS["epochs"] and len(metrics) == epochs  # one full-batch step an epoch
    assert recorder.initial == INPUTS["head"]  # the reference's 1x1 classifier started from spml's head
    warmup = 2
    for m, s, e, w in zip(metrics[:warmup], steps[:warmup], REF["epochs"][:warmup], recorder.epochs[:warmup]):
        assert m["train_loss"] == pytest.approx(s["loss"], rel=1e-3)
        assert m["val_map"] == pytest.approx(e["test_map"] / 100, abs=0.01)
        assert w["head_weight_norm"] == pytest.approx(e["head_weight_norm"], rel=1e-3)
        np.testing.assert_allclose(w["head_bias"], e["head_bias"], atol=2e-3)
    # The update: same threshold, same (image, class) views.
    assert results["method"]["class_threshold_used"] == pytest.approx(REF["multiplier"])
    views = np.load(run / "ccd_views.npy")
    ref_boxes = {(REF["names"].index(v["id"]), v["class"]): v["box"] for v in REF["views"]}
    assert sorted((int(v[0]), int(v[5])) for v in views) == sorted(ref_boxes)
    labels = load_file(str(run / "last.safetensors"))["hooks.labels"].double().numpy()
    diff = np.abs(labels - ref_array("updated_labels"))
    if rule == "bbox":
        for v in views:
            x0, y0, x1, y1 = ref_boxes[(int(v[0]), int(v[5]))]
            # 1 px of slack: the CAMs differ at float rounding, which can move a pixel across 0.95
            assert v[1] <= x0 + 1 and v[2] <= y0 + 1 and v[3] >= x1 - 1 and v[4] >= y1 - 1
        assert diff.mean() < 0.05  # 0.027 when recorded: the boxes alone
        for m, s in zip(metrics[warmup:], steps[warmup:]):
            assert m["train_loss"] == pytest.approx(s["loss"], rel=0.05)  # 2.7% when recorded
        return
    # raster: the release's boxes, but its corners are unstable: when float rounding moves one pixel
    # across 0.95, a blob's first pixel in raster order can jump along its top row (3 of the 120
    # boxes moved by 5-11 px when recorded; the release's own CAMs give all 120: test above). The
    # labels then differ by that and spml's crop scoring (uint8 crop): 0.0028 on average when
    # recorded; the losses by < 0.4%; the epoch picked and its test mAP are the release's.
    moved = [v for v in views if np.abs(np.asarray(v[1:5]) - np.asarray(ref_boxes[(int(v[0]), int(v[5]))])).max() > 1]
    assert len(moved) <= len(views) // 20
    assert diff.mean() < 0.01
    for m, s in zip(metrics[warmup:], steps[warmup:]):
        assert m["train_loss"] == pytest.approx(s["loss"], rel=0.01)
    assert results["protocol"] == "reference"
    assert results["best_epoch"] == REF["best"]["epoch"] + 1  # the release counts epochs from 0
    assert results["test_map"] == pytest.approx(REF["best"]["test_map"] / 100, abs=0.005)
