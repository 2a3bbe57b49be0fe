r"""Record Cole et al.'s own training loop (linear and fine-tune) for the parity tests (issue 20).

Runs ``train.py``'s ``execute_training_run`` from a scratch copy of elijahcole/single-positive-multi-label
on the tiny data and initial weights of ``tests/parity.py`` and writes ``tests/fixtures/parity/cole_linear.json``
(``--mode linear``: ``train_mode linear_fixed_features`` on features spml's ResNet-50 extracted, Adam lr 1e-4,
batch 8, 25 epochs, loss ``an``: the settings of ``--config cole_linear``) or ``cole_finetune.json``
(``--mode finetune``: ``end_to_end``, lr 1e-4, batch 8, 3 epochs: ``--config coco --set epochs=3``).
Their files are not edited; the shims (``benchmarks/parity_common.py``) are listed in the header.

    mkdir -p /tmp/ref-cole && git --git-dir=/work/.mirror/elijahcole+single-positive-multi-label/repo archive HEAD \
        | tar -x -C /tmp/ref-cole
    python benchmarks/parity_cole.py /tmp/ref-cole --mode linear
    python benchmarks/parity_cole.py /tmp/ref-cole --mode finetune
    python benchmarks/parity_cole.py /tmp/ref-cole --mode linear --loss role     # also an_ls, wan, epr
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

REPO = "elijahcole/single-positive-multi-label"
SEED = 1200  # their P['seed'] and coco.yaml's seed: spml's order and flips use it on both sides
# (spml config, overrides) per mode: what the parity test trains.
SPML = {"linear": ("cole_linear", []), "finetune": ("coco", ["epochs=3"])}


def spml_features(data: Path, work: Path) -> dict[str, np.ndarray]:
    """The float16 ResNet-50 features spml's linear regime trains on (shared init weights), per split, as float32."""
    from spml.api import load_config
    from spml.data.layout import PreparedData
    from spml.training.engine import Trainer

    config = load_config(SPML["linear"][0], [*parity.SPML_COMMON, *SPML["linear"][1]])
    trainer = Trainer(config, PreparedData.open(data), work / "features-run", callbacks=[parity.Recorder(finetune=False)])
    out = {}
    for split in ("train", "val", "test"):
        rows = trainer.rm.features(split)
        out[split] = np.asarray(rows.take(np.arange(len(trainer.rm.split(split)))), dtype=np.float32)
    return out


def params(mode: str, val_frac: float, feats: dict[str, Path], loss: str = "an") -> dict[str, Any]:
    """Their ``P`` for ``coco`` (train.py ``__main__``), ``train_mode`` per ``mode``, our lr / batch / epochs."""
    linear = mode == "linear"
    return {
        "dataset": "coco", "loss": loss, "train_mode": "linear_fixed_features" if linear else "end_to_end",
        "val_set_variant": "clean", "experiment_name": "parity", "load_path": "./data", "save_path": "./results/parity",
        "lr_mult": 10.0, "stop_metric": "map", "ls_coef": 0.1, "seed": SEED, "use_pretrained": False,
        "num_workers": 0, "split_seed": 1200, "val_frac": val_frac, "ss_seed": 999, "ss_frac_train": 1.0,
        "ss_frac_val": 1.0, "train_set_variant": "observed", "num_epochs": 25 if linear else 3,
        "freeze_feature_extractor": linear, "use_feats": linear, "arch": "linear" if linear else "resnet50",
        "feature_extractor_arch": "resnet50", "feat_dim": parity.FEAT_DIM, "expected_num_pos": 2.9,
        "train_feats_file": str(feats["train"]), "val_feats_file": str(feats["test"]), "bsize": 8, "lr": 1e-4,
    }


def main() -> None:
    """Record the reference run of ``--mode`` into its fixture."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference", type=Path, help="scratch copy of elijahcole/single-positive-multi-label")
    ap.add_argument("--mode", choices=("linear", "finetune"), required=True)
    ap.add_argument("--loss", default="an", choices=("an", "an_ls", "wan", "epr", "role"), help="linear mode: the loss (spml --set loss=)")
    ap.add_argument("--commit", default=None, help="the reference's commit (default: the stored snapshot's HEAD)")
    args = ap.parse_args()
    code = args.reference.resolve()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="parity-cole-"))
    data = parity.tiny_data(work / "data")
    feats_np = spml_features(data, work) if args.mode == "linear" else None

    ref_train, datasets = pc.import_reference(code, "train", "datasets")
    val_frac = pc.write_formatted(data, code / "data" / "coco", datasets.generate_split, 1200)
    feats = {"train": work / "train_feats.npy", "test": work / "test_feats.npy"}
    if feats_np is not None:
        # Their train pool's rows in the order write_formatted gave them.
        idx_train, idx_val = datasets.generate_split(len(feats_np["train"]) + len(feats_np["val"]), val_frac, np.random.RandomState(1200))
        pool = np.zeros((len(idx_train) + len(idx_val), parity.FEAT_DIM), dtype=np.float32)
        pool[idx_train], pool[idx_val] = feats_np["train"], feats_np["val"]
        np.save(feats["train"], pool)
        np.save(feats["test"], feats_np["test"])
    shims = [pc.install_num_classes(datasets), pc.install_transforms(datasets)]
    clock = pc.EpochClock(auto=True)
    if args.mode == "finetune":  # the linear regime trains on fixed features, unflipped
        shims.append(pc.flip_train_items(datasets, clock, SEED, {}))
    shims.append("DataLoader(shuffle=True) -> spml's batches of (seed 1200, epoch) " + ("sorted within each batch (spml's linear regime)" if args.mode == "linear" else ""))

    body, head = pc.backbone_state(drop=1)
    initialize = ref_train.initialize_training_run

    def initialize_training_run(P: dict[str, Any], *rest: Any) -> Any:  # noqa: N803
        P, Z, model = initialize(P, *rest)  # noqa: N806
        fc = model.f.linear_classifier.fc if P["arch"] == "linear" else model.f.linear_classifier
        with torch.no_grad():  # in place: the optimizer already holds these parameters
            fc.load_state_dict(head)
            if model.f.feature_extractor is not None:
                model.f.feature_extractor.load_state_dict(body)
        loss_init["estimator_logits"] = model.g.logits.detach().tolist()
        return P, Z, model

    loss_init: dict[str, Any] = {}
    ref_train.initialize_training_run = initialize_training_run
    shims.append("train.initialize_training_run wrapped: tests/parity.py init_state loaded into the model it built (use_pretrained False)")

    losses: list[float] = []
    weights: list[dict[str, Any]] = []
    estimates: list[dict[str, Any]] = []
    pc.wrap(ref_train, "compute_batch_loss", lambda out, *a, **k: losses.append(float(out["loss_tensor"].detach())))
    run_train_phase = ref_train.run_train_phase

    def train_phase(model: Any, P: Any, Z: Any, logger: Any, epoch: int, phase: str) -> Any:  # noqa: N803
        out = run_train_phase(model, P, Z, logger, epoch, phase)
        fc = model.f.linear_classifier.fc if P["arch"] == "linear" else model.f.linear_classifier
        weights.append(parity.weights_summary(model.f.feature_extractor if P["arch"] != "linear" else None, fc))
        estimates.append(parity.tensor_summary(torch.from_numpy(model.g.get_estimated_labels())))
        return out

    ref_train.run_train_phase = train_phase
    if args.mode == "finetune" and args.loss != "an":
        raise SystemExit("--loss applies to --mode linear")
    P = params(args.mode, val_frac, feats, args.loss)  # noqa: N806
    with pc.install_loader(clock, SEED, sort=args.mode == "linear"):
        *_, logs = ref_train.execute_training_run(P, feature_extractor=None, linear_classifier=None)
    val = [logs["metrics"]["val"][e]["map_clean"] / 100.0 for e in range(P["num_epochs"])]
    test = [logs["metrics"]["test"][e]["map_clean"] / 100.0 for e in range(P["num_epochs"])]
    best = int(np.argmax(val))  # their update_best_results: the first strict maximum
    config, overrides = SPML[args.mode]
    name = f"cole_{args.mode}" if args.loss == "an" else f"cole_{args.mode}_{args.loss}"
    if args.loss != "an":
        overrides = [*overrides, f"loss={args.loss}"]
    command = f"python benchmarks/parity_cole.py REF --mode {args.mode}" + (f" --loss {args.loss}" if args.loss != "an" else "")
    header = pc.common_header(REPO, args.commit or pc.mirror_commit(REPO), command, shims)
    header["spml"] = {"config": config, "overrides": overrides, "seed": SEED}
    header["params"] = {k: v for k, v in P.items() if not k.endswith("_file")}
    record = {"losses": losses, "weights": weights, "val_map": val, "test_map_per_epoch": test,
              "best_epoch": best + 1, "test_map": test[best]}
    if args.loss == "role":  # the estimator's random start (their torch.rand), given to spml too
        record["loss_init"], record["estimates"] = loss_init, estimates
    print(pc.write_fixture(name, header, record))


if __name__ == "__main__":
    main()
