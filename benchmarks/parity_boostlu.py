"""Record BoostLU + LL-R's reference trajectory (youngwk/BridgeGapExplanationPAMC ``train.run_train``).

The numbers go to ``tests/fixtures/parity/boostlu.json``; ``tests/test_parity_boostlu.py``
reproduces them with ``spml.train`` and the shipped ``boostlu`` config.

    git --git-dir=/work/.mirror/youngwk+BridgeGapExplanationPAMC/repo archive HEAD | tar -x -C /tmp/ref-bl
    OMP_NUM_THREADS=1 python3 benchmarks/parity_boostlu.py /tmp/ref-bl [--commit SHA]

Shims (in memory; the checkout is not edited), besides those of ``parity_refloop``:

* ``munch`` (not installed here) is a dict with attribute access, as the release uses it;
* the release's config from its own ``get_configs`` (``--dataset pascal --largelossmod_scheme LL-R
  --num_epochs 4``; alpha 5, batch 16, lr 1e-5, lr_mult 10 are its defaults), then the keys its
  ``set_default_configs`` hard-codes: ``use_pretrained`` false, ``num_workers`` 0, ``num_classes`` 4,
  ``save_path`` a temporary folder;
* ``models.ImageClassifier`` loads spml's initial weights after it is built (the 1 x 1 convolution
  gets spml's linear head);
* ``torch.load`` of the release's own best-weights file with ``weights_only=False``;
* ``models.F``: torch.nn.functional with ``adaptive_avg_pool2d`` recording its input, the boosted
  CAM the release pools into its logits.

Recorded: the loss of every step (``losses.compute_batch_loss``), the tracked weights after every
step, val mAP per epoch and test mAP (``train.compute_metrics``, percent), the selected epoch, the
test images' scores and their boosted CAMs (with the bias) under the selected weights.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

import parity_common as pc
import parity_refloop as ref

METHOD, CONFIG, EPOCHS, BATCH = "boostlu", "boostlu", 4, 16
OVERRIDES = {"epochs": EPOCHS, "image_size": ref.parity_tiny.SIZE, "pretrained": "none", "device": "cpu"}
NAMES = {"head.fc.weight": "onebyone_conv.weight", "backbone.conv1.weight": "feature_extractor.0.weight"}


def record(checkout: Path, commit: str) -> Path:
    """Run the release on the tiny data; write the fixture."""
    work, data_dir, _, start, folder = ref.prepare(METHOD, CONFIG, OVERRIDES, clip=False)

    ref.shim_munch()
    ref.shim_torch_load()
    mods = ref.import_release(checkout, ["config", "datasets", "models", "losses", "train", "instrumentation"])
    n_train = len(ref.reference_split(ref.parity_tiny.POOL)[0])
    order = ref.SpmlOrder(n_train, BATCH, seed=0)  # boostlu.yaml: spml's default seed
    ref.patch_metadata(mods["datasets"], folder, ref.parity_tiny.CLASSES)
    ref.patch_transforms(mods["datasets"], {"train": order}, ref.parity_tiny.SIZE)
    ref.patch_dataloader(order)
    tracker = ref.StepTracker(NAMES)

    def started(model: torch.nn.Module, P: dict) -> None:  # noqa: N803  (the release's name)
        model.load_state_dict({
            **ref.tv_resnet_state(start, "feature_extractor."),
            "onebyone_conv.weight": start["head.fc.weight"][:, :, None, None],
            "onebyone_conv.bias": start["head.fc.bias"],
        })
        tracker.model = model

    pc.after_init(mods["models"].ImageClassifier, started)
    losses: list[float] = []
    pc.wrap(mods["losses"], "compute_batch_loss", lambda out, *a, **k: losses.append(float(out[0].detach())))
    maps: list[float] = []
    scores: list[np.ndarray] = []

    def on_metrics(out: dict, y_pred: np.ndarray, y_true: np.ndarray) -> None:
        maps.append(float(out["map"]))
        scores.append(np.asarray(y_pred, dtype=float))

    pc.wrap(mods["train"], "compute_metrics", on_metrics)
    cams: list[np.ndarray] = []

    def pool(cam: torch.Tensor, size: int) -> torch.Tensor:
        cams.append(cam.detach().numpy().copy())
        return F.adaptive_avg_pool2d(cam, size)

    mods["models"].F = types.SimpleNamespace(adaptive_avg_pool2d=pool)

    sys.argv = ["main.py", "--dataset", "pascal", "--largelossmod_scheme", "LL-R", "--num_epochs", str(EPOCHS)]
    P = mods["config"].get_configs()  # noqa: N806
    (work / "runs").mkdir()
    P.update(use_pretrained=False, num_workers=0, num_classes=ref.parity_tiny.CLASSES, save_path=str(work / "runs"))
    if P["bsize"] != BATCH:
        raise ValueError(f"the release's batch is {P['bsize']}, spml's boostlu config {BATCH}")
    mods["train"].run_train(P)

    val_map, test_map = maps[:-1], maps[-1]
    best = max(range(len(val_map)), key=lambda i: (val_map[i], -i)) + 1
    n_test = ref.parity_tiny.TEST
    test_cam = np.concatenate(cams)[-n_test:]  # the last forward passes: the test set, selected weights
    header = {
        "reference": "youngwk/BridgeGapExplanationPAMC",
        "commit": commit,
        "command": f"python3 benchmarks/parity_boostlu.py CHECKOUT (train.run_train, LL-R, alpha 5, {EPOCHS} epochs, batch {BATCH})",
        "spml": {"config": CONFIG, "overrides": OVERRIDES},
        "shims": __doc__.split("Shims")[1].split("Recorded")[0].strip() + " See benchmarks/parity_refloop.py.",
    }
    return ref.write_fixture(METHOD, header, start, {
        "step_loss": losses, "step_weights": tracker.weights,
        "val_map": val_map, "best_epoch": best, "test_map": test_map,
        "test_scores": scores[-1].tolist(), "test_cam": test_cam.tolist(),
    })


if __name__ == "__main__":
    ref.main(__doc__, "youngwk/BridgeGapExplanationPAMC", record)
