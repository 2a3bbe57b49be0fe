"""Record GR-Loss's reference trajectory (yan4xi1/GRLoss ``train.run_train``) on spml's tiny data.

The numbers go to ``tests/fixtures/parity/gr.json``; ``tests/test_parity_gr.py`` reproduces them
with ``spml.train`` and the shipped ``gr`` config.

    git --git-dir=/work/.mirror/yan4xi1+GRLoss/repo archive HEAD | tar -x -C /tmp/ref-gr
    OMP_NUM_THREADS=1 python3 benchmarks/parity_gr.py /tmp/ref-gr [--commit SHA]

Shims (in memory; the checkout is not edited), besides those of ``parity_refloop``:

* ``munch`` (not installed here) is a dict with attribute access, as the release uses it;
* the release's config from its own ``get_configs`` with ``--num_epochs 3 --use_pretrained false
  --num_workers 0``, then ``num_classes`` 4 (its table knows only the four datasets);
* ``models.ImageClassifier`` loads spml's initial weights after it is built;
* ``torch.load`` of the release's own best-weights file with ``weights_only=False`` (torch >= 2.6
  refuses the ``(state_dict, P)`` tuple the release saves by default);
* ``argparse.Namespace.delta_rel = 0``: the release's ``config.set_follow_up_configs`` reads
  ``args.delta_rel``, an LL option its parser never defines, so ``main.py`` fails as shipped
  (AttributeError); GR never reads it.

Recorded: the loss of every step (``losses.GR_loss``'s return value), the tracked weights after every
step, val mAP per epoch and test mAP (``train.compute_metrics``, percent), the selected epoch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


import parity_common as pc
import parity_refloop as ref

METHOD, CONFIG, EPOCHS, BATCH = "gr", "gr", 3, 8
# The shipped config's keys changed for the tiny run, the same on both sides.
OVERRIDES = {"epochs": EPOCHS, "image_size": ref.parity_tiny.SIZE, "pretrained": "none", "device": "cpu"}
NAMES = {"head.fc.weight": "linear_classifier.weight", "backbone.conv1.weight": "feature_extractor.0.weight"}


def record(checkout: Path, commit: str) -> Path:
    """Run the release on the tiny data; write the fixture."""
    work, data_dir, _, start, folder = ref.prepare(METHOD, CONFIG, OVERRIDES, clip=False)

    ref.shim_munch()
    mods = ref.import_release(checkout, ["config", "datasets", "models", "losses", "train"])
    n_train = len(ref.reference_split(ref.parity_tiny.POOL)[0])
    order = ref.SpmlOrder(n_train, BATCH, seed=1200)  # gr.yaml: seed 1200
    ref.patch_metadata(mods["datasets"], folder, ref.parity_tiny.CLASSES)
    ref.patch_transforms(mods["datasets"], {"train": order}, ref.parity_tiny.SIZE)
    ref.patch_dataloader(order)
    tracker = ref.StepTracker(NAMES)

    ref.start_cole_classifier(mods["models"].ImageClassifier, start, tracker)
    losses: list[float] = []
    pc.wrap(mods["losses"], "GR_loss", lambda out, *a, **k: losses.append(float(out.detach())))
    maps: list[float] = []
    pc.wrap(mods["train"], "compute_metrics", lambda out, *a, **k: maps.append(float(out["map"])))
    ref.shim_torch_load()
    argparse.Namespace.delta_rel = 0
    sys.argv = ["main.py", "--dataset", "pascal", "--num_epochs", str(EPOCHS), "--bsize", str(BATCH),
                "--use_pretrained", "false", "--num_workers", "0", "--save_path", str(work / "runs")]
    P = mods["config"].get_configs()  # noqa: N806
    P["num_classes"] = ref.parity_tiny.CLASSES
    mods["train"].run_train(P)

    val_map, test_map = maps[:-1], maps[-1]
    best = max(range(len(val_map)), key=lambda i: (val_map[i], -i)) + 1  # first strict best, as the release
    header = {
        "reference": "yan4xi1/GRLoss",
        "commit": commit,
        "command": f"python3 benchmarks/parity_gr.py CHECKOUT (train.run_train, {EPOCHS} epochs, batch {BATCH})",
        "spml": {"config": CONFIG, "overrides": OVERRIDES},
        "shims": __doc__.split("Shims")[1].split("Recorded")[0].strip() + " See benchmarks/parity_refloop.py.",
    }
    return ref.write_fixture(METHOD, header, start, {
        "step_loss": losses, "step_weights": tracker.weights,
        "val_map": val_map, "best_epoch": best, "test_map": test_map,
    })


if __name__ == "__main__":
    ref.main(__doc__, "yan4xi1/GRLoss", record)
