"""Record VLPL's reference trajectory (mvrl/VLPL ``main_clip.py``, run as ``__main__``) on spml's tiny data.

The numbers go to ``tests/fixtures/parity/vlpl.json``; ``tests/test_parity_vlpl.py`` reproduces
them with ``spml.train`` and the shipped ``vlpl`` config.

    git --git-dir=/work/.mirror/mvrl+VLPL/repo archive HEAD | tar -x -C /tmp/ref-vlpl
    OMP_NUM_THREADS=1 python3 benchmarks/parity_vlpl.py /tmp/ref-vlpl [--commit SHA]

``main_clip.py -d coco`` (its defaults: EM_PL, ResNet-50, temp 0.01, threshold 0.3, seed 0) runs
as the script it is, in a temporary folder holding its text-feature file. Shims (in memory; the
checkout is not edited), besides those of ``parity_refloop``:

* the CLIP: ``transformers`` is not installed; a stand-in module whose
  ``CLIPVisionModelWithProjection.from_pretrained`` returns the untrained micro CLIP of
  ``parity_tiny.build_clip`` (``image_embeds`` = open_clip's ``encode_image``), the same model spml
  loads; ``CoCo80text_feature_labelonly.npy`` holds its L2-normalised text embeddings of the bare
  class names (the release's file is of the bare label; the script that made it is not released);
* the CLIP input size: ``torchvision.transforms.Resize((336, 336))`` (ViT-L/14-336's input, hard-coded
  in ``main_clip.py``) resizes to the micro CLIP's 48 px, the identity on the tiny images;
* ``models.resnet50(pretrained=True)`` builds without weights; ``ImageClassifier`` then loads spml's
  initial weights (ResNet-50 and the linear classifier);
* ``np.Inf`` (gone in numpy 2; ``instrumentation.train_logger`` reads it) is ``np.inf``;
* the run stops after epoch 3 (``main_clip.py`` hard-codes 10 epochs; nothing in its loop depends on
  the number): the logger raises once epoch 3's test phase is logged.

Recorded: the loss of every step (``losses.compute_batch_loss``'s ``loss_tensor``), the CLIP
pseudo-labels of every step (``logits_pl``, 1 where softmax(sim / temp) > threshold) with the rows
they belong to, the tracked weights after every step, val mAP per epoch, the selected epoch and the
test mAP at it (the logger's ``map_clean``, percent).
"""

from __future__ import annotations

import os
import runpy
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torchvision

import parity_common as pc
import parity_refloop as ref
import spml
from spml.data.layout import PreparedData

METHOD, CONFIG, EPOCHS, BATCH = "vlpl", "vlpl", 3, 8
OVERRIDES = {"epochs": EPOCHS, "image_size": ref.parity_tiny.SIZE, "pretrained": "none", "device": "cpu"}
NAMES = {"head.fc.weight": "f.linear_classifier.fc.weight", "backbone.conv1.weight": "f.vision_extractor.0.weight"}


class StopAfter(Exception):
    """Raised by the logger once the last recorded epoch is logged."""


class ClipStandIn(torch.nn.Module):
    """``CLIPVisionModelWithProjection``'s interface over an open_clip model: ``.image_embeds``."""

    def __init__(self, model: torch.nn.Module) -> None:
        """Wrap ``model``."""
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> types.SimpleNamespace:
        """The image embeddings (unnormalised, as the HF model's)."""
        return types.SimpleNamespace(image_embeds=self.model.encode_image(pixels))


def record(checkout: Path, commit: str) -> Path:
    """Run the release on the tiny data; write the fixture."""
    work, data_dir, clip, start, folder = ref.prepare(METHOD, CONFIG, OVERRIDES, clip=True)

    vlm = spml.load_vlm(clip["method_params.vlm"], checkpoint=clip["method_params.vlm_checkpoint"],
                        model_config=clip["method_params.vlm_model_config"])
    classes = PreparedData.open(data_dir).classes  # raw names: vlpl.yaml's template "{}", prompt_names raw
    with torch.no_grad():
        text = torch.nn.functional.normalize(vlm.model.encode_text(vlm.tokenizer(classes)), dim=-1)
    run_dir = work / "release"
    run_dir.mkdir()
    np.save(run_dir / "CoCo80text_feature_labelonly.npy", text.numpy().astype(np.float32))

    transformers = types.ModuleType("transformers")
    for name in ("CLIPProcessor", "CLIPVisionModel", "AutoTokenizer", "CLIPTextModelWithProjection"):
        setattr(transformers, name, None)
    transformers.CLIPVisionModelWithProjection = types.SimpleNamespace(from_pretrained=lambda *a, **k: ClipStandIn(vlm.model))
    sys.modules["transformers"] = transformers
    if not hasattr(np, "Inf"):
        np.Inf = np.inf
    resize = torchvision.transforms.Resize

    class ClipResize(resize):
        def __init__(self, size: object, *args: object, **kwargs: object) -> None:
            size = (ref.parity_tiny.SIZE,) * 2 if tuple(size) == (336, 336) else size
            super().__init__(size, *args, **kwargs)

    mods = ref.import_release(checkout, ["datasets", "models", "losses", "instrumentation"])
    n_train = len(ref.reference_split(ref.parity_tiny.POOL)[0])
    order = ref.SpmlOrder(n_train, BATCH, seed=0)  # vlpl.yaml: spml's default seed
    ref.patch_metadata(mods["datasets"], folder, ref.parity_tiny.CLASSES)
    ref.patch_transforms(mods["datasets"], {"train": order}, ref.parity_tiny.SIZE)
    ref.patch_dataloader(order)
    torchvision.transforms.Resize = ClipResize
    mods["models"].resnet50 = lambda pretrained=False: torchvision.models.resnet50(weights=None)
    tracker = ref.StepTracker(NAMES)

    def started(classifier: torch.nn.Module, *args: object) -> None:
        missing, unexpected = classifier.load_state_dict({
            **ref.tv_resnet_state(start, "vision_extractor."),
            "linear_classifier.fc.weight": start["head.fc.weight"],
            "linear_classifier.fc.bias": start["head.fc.bias"],
        }, strict=False)
        if unexpected or any(not k.startswith("feature_extractor.") for k in missing):
            raise RuntimeError(f"initial weights do not fit the release's model: {missing} {unexpected}")

    pc.after_init(mods["models"].ImageClassifier, started)
    pc.after_init(mods["models"].MultilabelModel, lambda model, *a: setattr(tracker, "model", model))

    steps: list[dict] = []

    def on_loss(batch: dict, *args: object) -> None:
        steps.append({
            "loss": float(batch["loss_tensor"].detach()),
            "rows": [int(i) for i in batch["idx"]],
            "pseudo": batch["logits_pl"].detach().numpy().astype(int).tolist(),
        })

    pc.wrap(mods["losses"], "compute_batch_loss", on_loss)
    loggers: list = []

    class Logger(mods["instrumentation"].train_logger):
        def __init__(self, P: dict) -> None:  # noqa: N803
            super().__init__(P)
            loggers.append(self)

        def update_best_results(self, phase: str, epoch: int, variant: str) -> bool:
            new_best = super().update_best_results(phase, epoch, variant)
            if phase == "test" and epoch == EPOCHS:
                raise StopAfter
            return new_best

    mods["instrumentation"].train_logger = Logger
    sys.argv = [str(checkout / "main_clip.py"), "-d", "coco"]
    cwd = os.getcwd()
    os.chdir(run_dir)
    try:
        runpy.run_path(str(checkout / "main_clip.py"), run_name="__main__")
    except StopAfter:
        pass
    finally:
        os.chdir(cwd)
        torchvision.transforms.Resize = resize

    (logger,) = loggers
    metrics = logger.logs["metrics"]
    val_map = [float(metrics["val"][e]["map_clean"]) for e in range(1, EPOCHS + 1)]
    best = int(logger.best_epoch)
    header = {
        "reference": "mvrl/VLPL",
        "commit": commit,
        "command": f"python3 benchmarks/parity_vlpl.py CHECKOUT (main_clip.py -d coco, stopped after {EPOCHS} epochs, batch {BATCH})",
        "spml": {"config": CONFIG, "overrides": OVERRIDES, "clip": "parity_tiny.clip_overrides"},
        "shims": __doc__.split("Shims")[1].split("Recorded")[0].strip() + " See benchmarks/parity_refloop.py.",
    }
    return ref.write_fixture(METHOD, header, start, {
        "step_loss": [s["loss"] for s in steps], "step_weights": tracker.weights,
        "order": [s["rows"] for s in steps], "step_pseudo": [s["pseudo"] for s in steps],
        "val_map": val_map, "best_epoch": best, "test_map": float(metrics["test"][best]["map_clean"]),
    })


if __name__ == "__main__":
    ref.main(__doc__, "mvrl/VLPL", record)
