"""The spml side of the reference-run parity tests for the Cole et al.-derived loops.

The loops: VLPL, GR-Loss, AEVLP, BoostLU. This module builds the tiny data both sides train on and
runs spml's shipped config, recording the same trajectory that the recording scripts
(``benchmarks/parity_<method>.py``) record from the authors' loops.

The data: ``spml synth`` (20 pool images: train 16, val 4; 4 test; 4 classes; seed 0) at
48 px, re-encoded as PNG so that both sides decode the same pixels (PIL and torchvision's JPEG decoders may differ in the last
bit), with the single-positive labels of ``spml observe --seed 0``. Images are already at the
training size, so both resizes are the identity.

The recorded trajectory (``trajectory``): the loss of every optimiser step; after every step the
norm and the first entries of the classifier weight and of the first convolution; val mAP per
epoch (percent, as the releases print it); the selected epoch; test mAP of the selected weights;
method-specific arrays added by the caller (pseudo-labels per epoch).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from PIL import Image

import spml
from spml.data.layout import PreparedData
from spml.data.observe import observe
from spml.data.synth import make_synthetic
from spml.training import TrainingHooks

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "parity"
POOL, TEST, SIZE, CLASSES, SEED = 20, 4, 48, 4, 0
OBSERVED = "single-positive-seed0.npy"
# Tensors whose norm and first entries are recorded after every step (spml names; the recording
# scripts map them to the release's).
TRACKED = ("head.fc.weight", "backbone.conv1.weight")
ENTRIES = 4


def build_data(root: Path) -> Path:
    """The tiny PNG data folder under ``root`` (``root/data``), with its single-positive labels."""
    data_dir = make_synthetic(root / "data", num_images=POOL, image_size=SIZE, num_classes=CLASSES, seed=SEED, test_images=TEST)
    for split in ("train", "val", "test"):
        listing = data_dir / f"{split}_images.txt"
        lines = []
        for line in listing.read_text().splitlines():
            source = Path(line) if Path(line).is_absolute() else data_dir / line
            png = source.with_suffix(".png")
            with Image.open(source) as image:
                image.convert("RGB").save(png)
            source.unlink()
            lines.append(str(png.relative_to(data_dir)) if not Path(line).is_absolute() else str(png))
        listing.write_text("".join(f"{x}\n" for x in lines))
    observe(PreparedData.open(data_dir), "single-positive", seed=SEED)
    return data_dir


CLIP_NAME = "parity-clip"


def build_clip(root: Path) -> tuple[Path, Path]:
    """The CLIP stand-in both sides use: an untrained micro CLIP at the tiny size, seed 0.

    open_clip's own initialisation under ``torch.manual_seed(0)`` (no training: parity needs the
    same model on both sides, not a good one); a 48 px ViT with 8 px patches, so that both sides'
    CLIP inputs are the training images themselves. Returns ``(checkpoint, model_config)``.
    """
    import open_clip
    from safetensors.torch import save_file

    from spml.vlm.micro_clip import MicroClipConfig

    root.mkdir(parents=True, exist_ok=True)
    config = root / f"{CLIP_NAME}.json"
    config.write_text(json.dumps(MicroClipConfig(image_size=SIZE).to_open_clip()))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model(CLIP_NAME, load_weights=False)
    checkpoint = root / f"{CLIP_NAME}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, checkpoint)
    return checkpoint, config


def clip_overrides(root: Path) -> dict[str, str]:
    """``method_params`` naming the stand-in CLIP of :func:`build_clip` (files under ``root``)."""
    checkpoint, config = build_clip(root)
    return {
        "method_params.vlm": f"open_clip:{CLIP_NAME}",
        "method_params.vlm_checkpoint": str(checkpoint),
        "method_params.vlm_model_config": str(config),
    }


def weight_stats(state: Mapping[str, torch.Tensor], names: Mapping[str, str] | None = None) -> list[float]:
    """Norm and first entries of each tracked tensor (``names`` maps spml's names to ``state``'s)."""
    out: list[float] = []
    for name in TRACKED:
        tensor = state[names[name] if names else name].detach().double().flatten()
        out += [float(tensor.norm()), *tensor[:ENTRIES].tolist()]
    return out


class Recorder(TrainingHooks):
    """Records the spml run's trajectory.

    Step losses (a forward hook on the loss), weights after every optimiser step (a global step
    hook), the loss's keyword inputs per step when asked.
    """

    def __init__(self, keep_inputs: tuple[str, ...] = ()) -> None:
        """Start empty; ``keep_inputs``: loss keyword inputs to keep per step (e.g. ``pseudo``)."""
        self.losses: list[float] = []
        self.weights: list[list[float]] = []
        self.inputs: dict[str, list[np.ndarray]] = {k: [] for k in keep_inputs}
        self.model: torch.nn.Module | None = None
        self._handles: list[Any] = []

    def setup(self, model: torch.nn.Module, loss: torch.nn.Module) -> None:
        """Hook the loss's forward and every optimiser step."""
        self.model = model
        self._handles.append(loss.register_forward_hook(self._on_loss, with_kwargs=True))
        self._handles.append(register_optimizer_step_post_hook(self._on_step))

    def _on_loss(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        if not module.training:
            return
        self.losses.append(float(output.detach()))
        for key, values in self.inputs.items():
            values.append(kwargs[key].detach().cpu().numpy().copy())

    def _on_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self.model is not None:
            self.weights.append(weight_stats(self.model.state_dict()))

    def close(self) -> None:
        """Remove the hooks (the step hook is global to torch)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def run_spml(
    data_dir: Path,
    out: Path,
    config: str,
    overrides: Mapping[str, Any],
    keep_inputs: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Train shipped ``config`` with ``overrides`` through :func:`spml.train`; return its trajectory."""
    cfg = spml.load_config(config, **dict(overrides))
    recorder = Recorder(keep_inputs)
    try:
        result = spml.train(data_dir, cfg, out, hooks=recorder)
    finally:
        recorder.close()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trajectory = {
        "step_loss": recorder.losses,
        "step_weights": recorder.weights,
        "val_map": [100.0 * m["val_map"] for m in metrics if m.get("val_map") is not None],
        "best_epoch": result.best_epoch,
        "test_map": 100.0 * result.test_map,
        "inputs": recorder.inputs,
    }
    return trajectory


def initial_state(data_dir: Path, config: str, overrides: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weights spml's run of ``config`` starts from (what the recording scripts load into the release)."""
    from spml.training.runmodel import RunModel

    cfg = spml.load_config(config, **dict(overrides))
    return {k: v.clone() for k, v in RunModel(cfg, PreparedData.open(data_dir), torch.device("cpu")).model.state_dict().items()}


def assert_same_start(data_dir: Path, config: str, overrides: Mapping[str, Any], reference: Mapping[str, Any]) -> None:
    """Whether spml starts from the weights the release was given (norms and first entries, exactly).

    They come from timm's ResNet-50 initialisation under the config's seed: another timm or torch
    version may draw others, and the whole trajectory would then differ for that reason alone.
    """
    ours = weight_stats(initial_state(data_dir, config, overrides))
    if not np.allclose(ours, reference["initial_weights"], rtol=1e-7, atol=0):
        raise AssertionError(
            "spml's initial weights differ from those the fixture was recorded from (another timm or torch "
            "version?): record it again with its header's command"
        )


def load_fixture(method: str) -> dict[str, Any]:
    """The recorded reference trajectory ``tests/fixtures/parity/<method>.json``."""
    return json.loads((FIXTURES / f"{method}.json").read_text())


# Tolerances. Both sides run float32 on the CPU with the same weights, data order, flips and pixels;
# what differs is the order of a few reductions (timm's pooling and torchvision's, the loss's mean
# over a masked matrix), which moves the last bits: measured 2e-7 relative on the losses and 1e-9
# on the tracked weights. The bounds leave two orders of magnitude for other CPUs and BLAS builds.
LOSS_RTOL = 1e-5
WEIGHT_RTOL = 1e-6
MAP_ATOL = 1e-6  # percent: mAP depends only on the ranking of the scores, identical on both sides


def assert_trajectory(spml_run: Mapping[str, Any], reference: Mapping[str, Any]) -> None:
    """Whether spml's trajectory equals the recorded one (AssertionError where not).

    Step losses, weights after every step, val mAP per epoch (hence where both stopped), the
    selected epoch and its test mAP.
    """
    np.testing.assert_allclose(spml_run["step_loss"], reference["step_loss"], rtol=LOSS_RTOL, atol=0)
    np.testing.assert_allclose(spml_run["step_weights"], reference["step_weights"], rtol=WEIGHT_RTOL, atol=1e-9)
    np.testing.assert_allclose(spml_run["val_map"], reference["val_map"], rtol=0, atol=MAP_ATOL)
    assert spml_run["best_epoch"] == reference["best_epoch"]
    assert abs(spml_run["test_map"] - reference["test_map"]) <= MAP_ATOL


def assert_pseudo_on_unknown(spml_run: Mapping[str, Any], reference: Mapping[str, Any], data_dir: Path) -> None:
    """Whether spml's ``pseudo`` loss input equals the release's pseudo-labels on every unknown entry.

    Unknown entries are the only ones at which either loss reads a pseudo-label. On observed
    positives spml's ``pseudo`` holds the observed 1 (observed labels win) while the releases keep
    CLIP's own decision there; both losses then use the observed label, so that is pinned as a
    difference of representation only. Also checks that the steps held some pseudo-positive (a
    comparison of empty rows would prove nothing).
    """
    observed = np.load(data_dir / "observed" / OBSERVED)
    assert len(spml_run["inputs"]["pseudo"]) == len(reference["step_pseudo"])
    pseudo_positives = 0
    for ours, theirs, rows in zip(spml_run["inputs"]["pseudo"], reference["step_pseudo"], reference["order"], strict=True):
        unknown = observed[rows] == 0
        np.testing.assert_array_equal(ours[unknown], np.asarray(theirs)[unknown])
        assert (ours[~unknown] == 1).all()
        pseudo_positives += int((ours[unknown] == 1).sum())
    assert pseudo_positives > 0
