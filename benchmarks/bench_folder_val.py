"""A folder of photos without labels: what selecting on held-out answers costs against a labelled val split.

``spml prepare folder`` has no true labels, so a run on its annotation holds out about a fifth of
the answered photos as val (their single answers the only labels) and trains on the rest
(docs/annotate.md, "From a folder of photos"). This measures what that costs on the synthetic set,
whose true labels are known but never shown to the folder runs:

* ``folder``: the synthetic train images as a folder of photos (links), N of them answered with
  one true label each (drawn uniformly, as ``spml observe``), a linear AN probe autotuned on the
  held-out answers; its test mAP is measured afterwards against the synthetic test split;
* ``labelled``: the same N answers on the prepared synthetic folder, trained on all N and selected
  on its fully labelled val split (120 images nobody would have labelled in the folder case).
* ``labelled, folder's train rows``: the same, trained only on the answers the folder run trains on
  (its held-out photos left out): the difference to ``folder`` is the cost of selecting on the
  held-out answers alone; the difference to ``labelled`` that of the answers held out.

Both use the offline Lite0 features; three annotation draws per N. The table (markdown) is printed
and written to WORK/results.md.

    python benchmarks/bench_folder_val.py --work /tmp/spml_bench_folder
"""

from __future__ import annotations

import statistics
import sys

import numpy as np

import spml
from spml.api import load_config, train
from spml.data.annotated import AnnotationStore, HeldOutData, held_out_view
from spml.data.layout import PreparedData
from spml.data.prepare import prepare
from spml.data.synth import make_synthetic
from spml.metrics import mean_average_precision
from spml.training.runfolder import read_result

from harness import Report, parser, write_text


def common(image_size: int) -> list[str]:
    """A linear AN probe on the offline Lite0 features, lr and weight decay selected on val (autotune)."""
    return ["regime=linear", "loss=an", f"image_size={image_size}", "device=cpu", "seed=0"]


def main(argv: list[str] | None = None) -> int:
    """Prepare both folders, annotate, train both rows per draw and N; print the table."""
    p = parser(__doc__, work="/tmp/spml_bench_folder")
    p.add_argument("--images", type=int, default=600, help="synthetic train pool (default 600: 480 train, 120 val)")
    p.add_argument("--classes", type=int, default=12)
    p.add_argument("--n", type=int, nargs="+", default=[150, 300], help="answered photos (default 150 300)")
    p.add_argument("--image-size", type=int, default=128)
    args = p.parse_args(argv)
    report = Report(args.work / "results.md")
    labelled_root = args.work / "labelled"
    if not (labelled_root / "classes.txt").is_file():
        make_synthetic(labelled_root, num_images=args.images, image_size=64, num_classes=args.classes, seed=0)
    labelled = PreparedData.open(labelled_root)
    train_split, test = labelled.split("train"), labelled.split("test")
    photos = args.work / "photos"
    if not photos.is_dir():
        photos.mkdir(parents=True)
        for image in train_split.images:
            (photos / image.name).symlink_to(image)
    folder_root = args.work / "folder"
    if not (folder_root / "classes.txt").is_file():
        (args.work / "tags.txt").write_text("\n".join(labelled.classes) + "\n")
        prepare("folder", photos, folder_root, classes_file=args.work / "tags.txt")
    folder = PreparedData.open(folder_root)
    # The folder's rows -> the labelled train rows (the links resolve to the same images).
    row_of = {str(image): i for i, image in enumerate(train_split.images)}
    folder_rows = np.array([row_of[str(image)] for image in folder.split("train").images])
    truth = train_split.labels

    rows = []
    for n in args.n:
        results: dict[str, list[float]] = {"folder": [], "folder_val": [], "labelled": [], "held": [], "same_rows": []}
        for draw in range(3):
            rng = np.random.default_rng([draw, n])
            answered = rng.permutation(len(folder_rows))[:n]  # folder rows a person answered
            answers = {int(r): int(rng.choice(np.flatnonzero(truth[folder_rows[r]]))) for r in answered}
            name = f"n{n}-d{draw}"
            store = AnnotationStore(folder, name, restart=True, order="random-seed0")
            same = AnnotationStore(labelled, name, restart=True, order="random-seed0")
            for r, k in answers.items():
                store.answer(r, k)
                same.answer(int(folder_rows[r]), k)
            view = held_out_view(folder, f"annotated-{name}.npy")
            held = set(view.val_rows.tolist()) if isinstance(view, HeldOutData) else set()
            results["held"].append(len(held))
            trained = AnnotationStore(labelled, f"{name}-trained", restart=True, order="random-seed0")
            for r, k in answers.items():
                if r not in held:
                    trained.answer(int(folder_rows[r]), k)
            run = args.work / f"run-folder-{name}"
            if not (run / "results.json").is_file():
                train(folder_root, load_config(None, [*common(args.image_size), f"observed=annotated-{name}.npy"]), run)
            scores = spml.load(run, device="cpu").predict([str(p) for p in test.images])
            results["folder"].append(mean_average_precision(scores, test.labels))
            results["folder_val"].append(read_result(run).val_map)
            run = args.work / f"run-labelled-{name}"
            result = train(labelled_root, load_config(None, [*common(args.image_size), f"observed=annotated-{name}.npy"]), run) \
                if not (run / "results.json").is_file() else read_result(run)
            results["labelled"].append(result.test_map)
            run = args.work / f"run-labelled-trained-{name}"
            result = train(labelled_root, load_config(None, [*common(args.image_size), f"observed=annotated-{name}-trained.npy"]),
                           run) if not (run / "results.json").is_file() else read_result(run)
            results["same_rows"].append(result.test_map)
        rows.append((n, results))

    def cell(values: list[float]) -> str:
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

    lines = ["| answered photos N | folder: held-out val (photos) | folder: val mAP (answers) | folder: test mAP | "
             "labelled val, folder's train rows: test mAP | labelled val, all N: test mAP |", "|---|---|---|---|---|---|"]
    for n, r in rows:
        lines.append(f"| {n} | {statistics.mean(r['held']):.0f} | {cell(r['folder_val'])} | {cell(r['folder'])} | "
                     f"{cell(r['same_rows'])} | {cell(r['labelled'])} |")
    table = "\n".join(lines) + f"\n\n{report.line()}"
    print(table)
    write_text(args.work / "results.md", table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
