r"""Record EM / EM+APL's own training loop (Correr-Zhou/SPML-AckTheUnknown ``main.py``) for the parity tests (issue 20).

Runs ``main.py``'s ``execute_training_run`` from a scratch copy of the release on the tiny data and
initial weights of ``tests/parity.py`` with its COCO settings (ResNet-50, Adam lr 1e-5, batch 16,
alpha 0.1; EM+APL beta 0.9, neg_proportion 0.9: ``--config em`` / ``em_apl``) for 5 epochs (EM+APL:
warm-up 1, so that pseudo-labelling runs), stopping at the first epoch without val improvement as
the release does, and writes ``tests/fixtures/parity/em.json`` or ``em_apl.json``.

The release scores the train images for APL through its training loader, flipped at random
(``RandomHorizontalFlip``); spml scores them unflipped (documented default). The parity run scores
unflipped on both sides; ``em_apl.json``'s ``flipped_scoring`` entry is the release run with its
scoring pass flipped (spml's flip draws of that epoch), the difference the test pins.

    mkdir -p /tmp/ref-ack && git --git-dir=/work/.mirror/Correr-Zhou+SPML-AckTheUnknown/repo archive HEAD -- '*.py' | tar -x -C /tmp/ref-ack
    python benchmarks/parity_em.py /tmp/ref-ack --loss em        # or em_apl
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity_common as pc  # noqa: E402

from parity_common import parity  # noqa: E402

REPO = "Correr-Zhou/SPML-AckTheUnknown"
SEED = 1200  # em.yaml's seed and their P['seed']: spml's order and flips on both sides
EPOCHS, WARMUP = 5, 1
SPML = {
    "em": ("em", [f"epochs={EPOCHS}"]),
    "em_apl": ("em_apl", [f"epochs={EPOCHS}", f"loss_params.num_epochs={EPOCHS}", f"loss_params.warmup_epoch={WARMUP}"]),
}


def params(loss: str, val_frac: float) -> dict[str, Any]:
    """Their ``P`` for ``--dataset coco`` (main.py ``__main__``), our epochs and warm-up."""
    return {
        "dataset": "coco", "loss": {"em": "EM", "em_apl": "EM_APL"}[loss], "val_set_variant": "clean",
        "bsize": 16, "lr": 1e-5, "alpha": 0.1, "neg_proportion": 0.9, "warmup_epoch": WARMUP, "beta": 0.9,
        "seed": SEED, "use_pretrained": False, "num_workers": 0, "stop_metric": "map", "split_seed": 1200,
        "val_frac": val_frac, "ss_seed": 999, "ss_frac_train": 1.0, "ss_frac_val": 1.0,
        "train_set_variant": "observed", "num_epochs": EPOCHS, "freeze_feature_extractor": False,
        "use_feats": False, "arch": "resnet50", "feature_extractor_arch": "resnet50", "feat_dim": parity.FEAT_DIM,
    }


def record(code: Path, loss: str, data: Path, flipped_scoring: bool) -> tuple[dict[str, Any], list[str]]:
    """One run of their ``execute_training_run``; the trajectory and the shims used."""
    for module in ("main", "datasets", "models", "losses", "instrumentation", "metrics"):
        sys.modules.pop(module, None)
    ref_main, datasets = pc.import_reference(code, "main", "datasets")
    val_frac = pc.write_formatted(data, code / "data" / "coco", datasets.generate_split, 1200)
    shims = [pc.install_num_classes(datasets), pc.install_transforms(datasets)]
    clock = pc.EpochClock(auto=False)
    seen: dict[str, Any] = {}
    shims.append(pc.flip_train_items(datasets, clock, SEED, seen))
    shims.append(f"DataLoader(shuffle=True) -> spml's batches of (seed {SEED}, epoch); run_train_phase wrapped to set the epoch")

    body, head = pc.backbone_state(drop=1)
    initialize = ref_main.initialize_training_run

    def initialize_training_run(P: Any, *rest: Any) -> Any:  # noqa: N803
        P, Z, model = initialize(P, *rest)  # noqa: N806
        with torch.no_grad():  # in place: the optimizer already holds these parameters
            model.f.feature_extractor.load_state_dict(body)
            model.f.linear_classifier.load_state_dict(head)
        return P, Z, model

    ref_main.initialize_training_run = initialize_training_run
    shims.append("main.initialize_training_run wrapped: tests/parity.py init_state loaded into the model it built (use_pretrained False)")

    losses: list[float] = []
    weights: list[dict[str, Any]] = []
    pseudo: list[dict[str, Any]] = []
    pc.wrap(ref_main, "compute_batch_loss", lambda out, *a, **k: losses.append(float(out["loss_tensor"].detach())))
    run_train_phase = ref_main.run_train_phase

    def train_phase(model: Any, P: Any, Z: Any, logger: Any, epoch: int, phase: str) -> Any:  # noqa: N803
        clock.epoch, clock.flips = epoch, True  # their P['epoch'] is 1-based, as spml's
        out = run_train_phase(model, P, Z, logger, epoch, phase)
        weights.append(parity.weights_summary(model.f.feature_extractor, model.f.linear_classifier))
        pseudo.append({})
        return out

    ref_main.run_train_phase = train_phase
    apl = ref_main.aysmmetric_pseudo_labeling

    def pseudo_labeling(model: Any, P: Any, Z: Any, logger: Any, epoch: int, phase: str) -> Any:  # noqa: N803
        clock.flips = flipped_scoring
        out = apl(model, P, Z, logger, epoch, phase)
        obs = np.asarray(seen["train"].label_matrix_obs)
        entries = np.argwhere(obs < 0)
        pseudo[-1] = {"pseudo_negatives": len(entries), "pseudo_entries": entries.tolist(),
                      "targets": [float(-obs[i, j]) for i, j in entries]}
        return out

    ref_main.aysmmetric_pseudo_labeling = pseudo_labeling
    shims.append("main.aysmmetric_pseudo_labeling wrapped: " + ("its scoring pass flipped by spml's draws of the epoch" if flipped_scoring else "its scoring pass unflipped (spml's documented default)"))
    P = params(loss, val_frac)  # noqa: N806
    with pc.install_loader(clock, SEED, sort=False):
        *_, logs = ref_main.execute_training_run(P, feature_extractor=None, linear_classifier=None)
    epochs = sorted(logs["metrics"]["val"])
    val = [logs["metrics"]["val"][e]["map_clean"] / 100.0 for e in epochs]
    best = int(np.argmax(val))  # their update_best_results: the first strict maximum
    return {"losses": losses, "weights": weights, "pseudo_labels": pseudo, "val_map": val,
            "best_epoch": epochs[best], "test_map": logs["metrics"]["test"][epochs[best]]["map_clean"] / 100.0}, shims


def main() -> None:
    """Record one loss's reference run into its fixture."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference", type=Path, help="scratch copy of Correr-Zhou/SPML-AckTheUnknown")
    ap.add_argument("--loss", choices=tuple(SPML), required=True)
    ap.add_argument("--commit", default=None, help="the reference's commit (default: the stored snapshot's HEAD)")
    args = ap.parse_args()
    code = args.reference.resolve()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="parity-em-"))
    data = parity.tiny_data(work / "data")
    rec, shims = record(code, args.loss, data, flipped_scoring=False)
    if args.loss == "em_apl":
        rec["flipped_scoring"], _ = record(code, args.loss, data, flipped_scoring=True)
        shims.append("em_apl: run twice, the scoring pass unflipped (the parity) and flipped (`flipped_scoring`: the release's augmentation)")
    header = pc.common_header(REPO, args.commit or pc.mirror_commit(REPO), f"python benchmarks/parity_em.py REF --loss {args.loss}", shims)
    config, overrides = SPML[args.loss]
    header["spml"] = {"config": config, "overrides": overrides, "seed": SEED}
    header["params"] = params(args.loss, 0.0)
    print(pc.write_fixture(args.loss, header, rec))


if __name__ == "__main__":
    main()
