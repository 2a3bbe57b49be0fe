r"""Record the Large Loss release's training loop (LL-R, LL-Ct, LL-Cp) for the parity tests (issue 20).

Runs ``train.py``'s ``run_train`` from a scratch copy of snucml/LargeLossMatters on the tiny data and
initial weights of ``tests/parity.py`` (ResNet-50, Adam lr 1e-5 with the head at 10x, batch 16: the
settings of ``--config ll_r|ll_ct|ll_cp``) for 4 epochs, and writes ``tests/fixtures/parity/<scheme>.json``.
``delta_rel`` is raised to 10 (LL-R, LL-Ct) and 5 (LL-Cp) percent per epoch on both sides, so that a
16 x 4 batch has several entries rejected or corrected (the shipped 0.5 / 0.2 / 0.1 give one).

LL-Cp: the release tests ``P['mod_scheme'] is 'LL-Cp'`` in ``train.py`` and ``losses.py``. A string
constant with a ``-`` is not interned, so no string passed in is either module's constant and the
test is always false: the release's LL-Cp runs as LL-Ct (k from the clean rate, no permanent
correction), which is what ``ll_cp.json`` records. spml's ``ll_cp`` is the paper's (fixed k,
permanent corrections); the test pins the difference. Making the release run the paper's LL-Cp
would need an edit of its files, which these recordings never make.

    mkdir -p /tmp/ref-ll && git --git-dir=/work/.mirror/snucml+LargeLossMatters/repo archive HEAD -- '*.py' | tar -x -C /tmp/ref-ll
    python benchmarks/parity_ll.py /tmp/ref-ll --scheme ll_r      # also ll_ct, ll_cp
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity_common as pc  # noqa: E402

from parity_common import parity  # noqa: E402

REPO = "snucml/LargeLossMatters"
SEED = 0  # ll_*.yaml set no seed: spml's default, which drives the order and flips on both sides
EPOCHS = 4
SCHEMES = {"ll_r": ("LL-R", 10.0), "ll_ct": ("LL-Ct", 10.0), "ll_cp": ("LL-Cp", 5.0)}


def params(scheme: str, delta_rel: float, val_frac: float, save: Path) -> dict[str, Any]:
    """Their ``config.py`` defaults with ``set_follow_up_configs`` applied, for ``--dataset coco``."""
    return {
        "ss_seed": 999, "ss_frac_train": 1.0, "ss_frac_val": 1.0, "use_feats": False, "val_frac": val_frac,
        "split_seed": 1200, "train_set_variant": "observed", "val_set_variant": "clean", "arch": "resnet50",
        "freeze_feature_extractor": False, "use_pretrained": False, "num_epochs": EPOCHS, "save_path": str(save),
        "exp_name": "parity", "num_workers": 0, "gpu_num": "0", "dataset": "coco", "optimizer": "adam",
        "bsize": 16, "lr": 1e-5, "lr_mult": 10.0, "mod_scheme": scheme, "delta_rel": delta_rel / 100,
        "feat_dim": parity.FEAT_DIM, "num_classes": parity.NUM_CLASSES, "clean_rate": 1,
    }


def record(code: Path, scheme: str, delta_rel: float, work: Path, data: Path) -> tuple[dict[str, Any], list[str]]:
    """One run of their ``run_train``; the trajectory and the shims used."""
    ref_train, datasets, models, losses = pc.import_reference(code, "train", "datasets", "models", "losses")
    val_frac = pc.write_formatted(data, code / "data" / "coco", datasets.generate_split, 1200)
    shims = [pc.install_num_classes(datasets), pc.install_transforms(datasets)]
    clock = pc.EpochClock(auto=True)
    seen: dict[str, Any] = {}
    shims.append(pc.flip_train_items(datasets, clock, SEED, seen))
    shims.append(f"DataLoader(shuffle=True) -> spml's batches of (seed {SEED}, epoch)")

    body, head = pc.backbone_state(drop=2)

    def image_classifier(P: Any) -> Any:  # noqa: N803
        model = models.ImageClassifier(P)
        model.feature_extractor.load_state_dict(body)
        model.linear_classifier.load_state_dict(head)
        seen["model"] = model
        return model

    # train.py looks up `models.ImageClassifier`: it gets this namespace (models.py keeps its class,
    # whose `super(ImageClassifier, self)` must find the original).
    ref_train.models = types.SimpleNamespace(ImageClassifier=image_classifier)
    shims.append("train.models.ImageClassifier: the release's class, then tests/parity.py init_state loaded (use_pretrained False)")

    step_losses: list[float] = []
    strict: list[int] = []
    compute = losses.compute_batch_loss

    def compute_batch_loss(preds: Any, label_vec: Any, P: Any) -> Any:  # noqa: N803
        loss, correction_idx = compute(preds, label_vec, P)
        step_losses.append(float(loss.detach()))
        strict.append(0 if correction_idx is None else int(correction_idx[0].numel()))
        return loss, correction_idx

    losses.compute_batch_loss = compute_batch_loss
    observed0 = parity.observed_labels(data) == 1
    maps: list[float] = []
    weights: list[dict[str, Any]] = []
    corrected: list[list[list[int]]] = []
    compute_metrics = ref_train.compute_metrics

    def metrics(y_pred: Any, y_true: Any) -> Any:
        out = compute_metrics(y_pred, y_true)
        maps.append(out["map"] / 100.0)
        model = seen["model"]
        weights.append(parity.weights_summary(model.feature_extractor, model.linear_classifier))
        now = np.asarray(seen["train"].label_matrix_obs) == 1
        corrected.append(np.argwhere(now & ~observed0).tolist())
        return out

    ref_train.compute_metrics = metrics
    P = params(scheme, delta_rel, val_frac, work / "save")  # noqa: N806
    (work / "save").mkdir(exist_ok=True)
    with pc.install_loader(clock, SEED, sort=False):
        ref_train.run_train(P)
    # compute_metrics ran after every epoch's val phase, then once on test with the best weights.
    val = maps[:-1]
    best = int(np.argmax(val))  # their `bestmap_val < map_val`: the first strict maximum
    out = {"losses": step_losses, "strict_corrections_per_step": strict, "weights": weights[:-1],
           "val_map": val, "best_epoch": best + 1, "test_map": maps[-1], "corrected_entries": corrected[:-1]}
    return out, shims


def main() -> None:
    """Record one scheme's reference run into its fixture."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference", type=Path, help="scratch copy of snucml/LargeLossMatters")
    ap.add_argument("--scheme", choices=tuple(SCHEMES), required=True)
    ap.add_argument("--commit", default=None, help="the reference's commit (default: the stored snapshot's HEAD)")
    args = ap.parse_args()
    code = args.reference.resolve()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="parity-ll-"))
    data = parity.tiny_data(work / "data")
    name, delta = SCHEMES[args.scheme]
    rec, shims = record(code, name, delta, work, data)
    header = pc.common_header(REPO, args.commit or pc.mirror_commit(REPO), f"python benchmarks/parity_ll.py REF --scheme {args.scheme}", shims)
    header["spml"] = {"config": args.scheme, "overrides": [f"epochs={EPOCHS}", f"loss_params.delta_rel={delta:g}"], "seed": SEED}
    header["params"] = params(name, delta, 0.0, Path("save"))
    print(pc.write_fixture(args.scheme, header, rec))


if __name__ == "__main__":
    main()
