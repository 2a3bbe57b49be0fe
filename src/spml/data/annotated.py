"""Observed labels a person annotates, one answer per train image: the store behind ``spml annotate``.

An annotation is an ordinary observed-labels file, ``DATA_DIR/observed/annotated-<name>.npy``
(int8 N x L, the train split's rows), so ``spml train --set observed=annotated-<name>.npy`` reads it
as any other, with a JSON sidecar beside it. Each row holds one answer:

* all 0 (unknown): not answered yet;
* one +1, the rest 0: the single positive the annotator picked (the tag they saw first);
* all -1: "none of these" (no class is present: every label observed negative).

The sidecar records the train split it was made for (``train_fingerprint``, as ``spml observe``'s),
``mode: annotated``, who answered and when, how many answers of each kind, and each session's
order policy and suggestions.

Every answer is saved at once: under an exclusive lock (a ``flock`` the kernel releases when its
holder dies), the file is read back from disk, the one row changed and the whole file written
atomically, then its sidecar. Two tabs or two servers on the same file therefore never lose an
answer (for one image the last answer wins), a killed server loses at most the answer being
written, and a reader (``spml train``) sees the file before or after an answer, never half of it.

An existing annotation is continued (its answers kept), never restarted, unless asked
(``restart=True``), and then only if spml wrote it and nobody changed it since (the output rule).

A folder of photos (``spml prepare folder``) has no true labels, so its val split can only come
from the answers: :func:`held_out_view` is the folder as a run on an annotation sees it. Each train
row is drawn once into the held-out part (``default_rng(seed).random(N) < val_fraction``, the seed
and fraction recorded at prepare time), so a photo is a val photo or a train photo for good, however
many answers come later: val = the held-out photos answered so far, with their answers as the only
labels known (the picked class 1, every other class 0: unknown counted absent, as Cole et al.'s
single-positive val; "none of these" rows all 0, which is exact), and no run trains on them.
"""

from __future__ import annotations

import getpass
import json
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from spml import readers
from spml._version import __version__
from spml.data.labels import NEGATIVE, OBSERVED_DTYPE, POSITIVE, UNKNOWN
from spml.data.layout import PreparedData, Split, unknown_labels_error
from spml.data.labels import TRUE_DTYPE
from spml.data.atomic import file_lock, save_npy, write_text
from spml.data.observe import load_observed
from spml.data.output import STAGING_PREFIX, claim_file, record_file, save_array, write_file
from spml.errors import SpmlError

PREFIX = "annotated-"
MODE = "annotated"
KIND = "annotated"
NONE_OF_THESE = "none"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Row states of :meth:`AnnotationStore.answers`: a class index, or one of these.
UNANSWERED, NONE_ANSWER = -1, -2


def check_name(name: str) -> str:
    """``name`` if it can name an annotation file (letters, digits, ``.``, ``_``, ``-``; at most 64), else SpmlError."""
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise SpmlError(f"annotation name must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit), got {name!r}")
    return name


def annotated_path(data: PreparedData, name: str) -> Path:
    """``DATA_DIR/observed/annotated-<name>.npy``."""
    return data.observed_dir / f"{PREFIX}{check_name(name)}.npy"


def default_name() -> str:
    """The login name made fit for a file name (``me`` when it has no usable character)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "", user).lstrip("._-")[:64]
    return cleaned or "me"


def row_answers(labels: np.ndarray) -> np.ndarray:
    """Each row's answer (int64 N): its positive class, :data:`NONE_ANSWER` or :data:`UNANSWERED`."""
    labels = np.asarray(labels)
    positive = labels == POSITIVE
    out = np.where(positive.any(axis=1), positive.argmax(axis=1), UNANSWERED).astype(np.int64)
    out[(labels == NEGATIVE).all(axis=1) & (labels.shape[1] > 0)] = NONE_ANSWER
    return out


def read_record(path: Path) -> dict | None:
    """The sidecar of the observed-labels file ``path`` if it records an annotation (``mode: annotated``), else None."""
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        record = readers.read_json_object(sidecar, "annotation record")
    except SpmlError:
        return None
    return record if record.get("mode") == MODE else None


def rows_to_train(path: str | Path, labels: np.ndarray) -> np.ndarray | None:
    """The train rows an observed-labels file has labels for: for an annotation, the answered rows; else None (all).

    An annotation may be trained on while it is being made: its unanswered rows are all-unknown only
    because nobody has looked at them yet, and a loss that assumes unknown labels negative would
    learn them as images without any class.
    """
    if read_record(Path(path)) is None:
        return None
    return np.flatnonzero(np.asarray(labels != UNKNOWN).any(axis=1))


@dataclass(frozen=True)
class Summary:
    """How far an annotation is: answered rows, answers per class, "none of these" answers."""

    total: int
    answered: int
    per_class: list[int]
    none: int

    def to_dict(self) -> dict:
        """JSON-able fields."""
        return {"total": self.total, "answered": self.answered, "per_class": self.per_class, "none": self.none}


def summarize(answers: np.ndarray, num_classes: int) -> Summary:
    """The :class:`Summary` of :func:`row_answers`' output."""
    answers = np.asarray(answers)
    per_class = np.bincount(answers[answers >= 0], minlength=num_classes)
    return Summary(len(answers), int((answers != UNANSWERED).sum()), [int(c) for c in per_class], int((answers == NONE_ANSWER).sum()))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class AnnotationStore:
    """One annotation file of a prepared data folder, opened to continue (or, if asked, to restart) it.

    Args:
        data: The prepared data; its train split is annotated.
        name: The annotation's name (the file is ``observed/annotated-<name>.npy``).
        restart: Discard the file's answers and start over (only a file spml wrote, unchanged since).
        who: Who answers, recorded in the sidecar (default: the login name).
        order: This session's order policy, recorded (e.g. ``random-seed0``).
        suggest: What suggests classes this session (a model folder, a CLIP spec), recorded; None: nothing.

    Raises:
        SpmlError: The file exists and is not an annotation spml wrote for this train split (with
            the way out), or it cannot be written.
    """

    def __init__(
        self,
        data: PreparedData,
        name: str,
        *,
        restart: bool = False,
        who: str | None = None,
        order: str = "random",
        suggest: str | None = None,
    ) -> None:
        self.data = data
        self.path = annotated_path(data, name)
        self.sidecar = self.path.with_suffix(".json")
        self.name = name
        self.who = who or default_name()
        train = data.split("train")
        self.shape = (len(train), data.num_classes)
        self.fingerprint = train.label_fingerprint
        self.lock_file = data.observed_dir / f"{STAGING_PREFIX}{self.path.stem}.lock"
        if data.observed_dir.exists() and not data.observed_dir.is_dir():
            raise SpmlError("is not a folder (observed labels are written into it); move it away", data.observed_dir)
        session = {"started": _now(), "who": self.who, "order": order, "suggest": suggest}
        with self._locked():
            record = self._existing_record(restart)
            if record is None:
                claim_file(self.path, KIND, what="the annotation")
                labels = np.zeros(self.shape, dtype=OBSERVED_DTYPE)
                record = {"created": _now(), "sessions": [], "annotators": {}}
                # Sidecar first (as spml observe): the labels are never on disk without their record.
                self._write(labels, {**record, "sessions": [session]}, new=True)
            else:
                self._write(self._read(), {**record, "sessions": [*record.get("sessions", []), session]})

    def _locked(self) -> AbstractContextManager[None]:
        return file_lock(self.lock_file, None)

    def _existing_record(self, restart: bool) -> dict | None:
        """The record to continue, or None to start a new file (checked against the output rule)."""
        if not self.path.exists() and not self.path.is_symlink():
            return None
        record = read_record(self.path)
        if record is None:
            raise SpmlError(
                f"exists and is not an annotation spml annotate wrote (no {self.sidecar.name} with mode "
                "annotated); choose another annotation name or move it away", self.path)
        if restart:
            claim_file(self.path, KIND, what="the annotation")  # only a file spml wrote and nobody changed
            return None
        if record.get("train_fingerprint") != self.fingerprint:
            raise SpmlError(
                "was annotated for another train split (the data folder was prepared again); choose another "
                "annotation name, or restart to discard its answers", self.path)
        self._read()  # a damaged file is named now, not at the first answer
        return record

    def _read(self) -> np.ndarray:
        readers.regular_file(self.path, "annotation")
        try:
            labels = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise SpmlError(f"not a readable .npy file ({err}); move it away or restart", self.path) from None
        if labels.dtype != OBSERVED_DTYPE or labels.shape != self.shape or not np.isin(labels, (NEGATIVE, UNKNOWN, POSITIVE)).all():
            raise SpmlError(f"is not int8 -1/0/1 labels of shape {self.shape} (the train split's); move it away or restart", self.path)
        return labels

    def _write(self, labels: np.ndarray, record: dict, new: bool = False) -> None:
        """Write the labels and their sidecar: a ``new`` file under the output rule, sidecar first.

        An annotation being continued was accepted as one when it was opened (its sidecar says so,
        for this train split); it is rewritten in place, every row but the answered one as read
        from disk, and recorded again: a server killed between the two writes leaves nothing that
        stops the next one.
        """
        summary = summarize(row_answers(labels), self.shape[1])
        doc = {
            **record,
            "mode": MODE,
            "name": self.name,
            "train_fingerprint": self.fingerprint,
            "shape": list(self.shape),
            "classes": self.data.classes,
            "updated": _now(),
            "answered": summary.answered,
            "per_class": summary.per_class,
            "none": summary.none,
            "spml_version": __version__,
        }
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        if new:
            write_file(self.sidecar, text, KIND, what="the annotation record")
            save_array(self.path, labels, KIND, what="the annotation")
            return
        save_npy(self.path, labels)
        record_file(self.path, KIND)
        write_text(self.sidecar, text)
        record_file(self.sidecar, KIND)

    def answers(self) -> np.ndarray:
        """Each train row's answer as saved now (:func:`row_answers`)."""
        with self._locked():
            return row_answers(self._read())

    def answer(self, row: int, answer: int | str | None) -> np.ndarray:
        """Save one answer at once and return every row's answer after it.

        Args:
            row: The train row (0-based, as in ``train_images.txt``).
            answer: A class index (the single positive), :data:`NONE_OF_THESE`, or None to clear
                the row's answer (back to unknown).

        Raises:
            SpmlError: ``row`` or ``answer`` out of range.
        """
        n, num_classes = self.shape
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < n:
            raise SpmlError(f"image index must be an integer in [0, {n}), got {row!r}")
        if answer is not None and answer != NONE_OF_THESE and (
            isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < num_classes
        ):
            raise SpmlError(f"answer must be a class index in [0, {num_classes}), {NONE_OF_THESE!r} or null, got {answer!r}")
        with self._locked():
            labels = self._read()  # what every writer saved so far, not a copy from when this one started
            labels = np.array(labels)
            if answer is None:
                labels[row] = UNKNOWN
            elif answer == NONE_OF_THESE:
                labels[row] = NEGATIVE
            else:
                labels[row] = UNKNOWN
                labels[row, answer] = POSITIVE
            record = read_record(self.path)
            if record is None:
                raise SpmlError("is no longer an annotation (its sidecar was changed or removed); start spml annotate again", self.path)
            annotators = dict(record.get("annotators") or {})
            if answer is not None:
                annotators[self.who] = int(annotators.get(self.who, 0)) + 1
            self._write(labels, {**record, "annotators": annotators})
            return row_answers(labels)


def held_out_mask(n: int, seed: int, fraction: float) -> np.ndarray:
    """A bool mask over N train rows: the rows of a folder of photos that are val rows once answered (a fixed draw per row)."""
    return np.random.default_rng(seed).random(n) < fraction


@dataclass
class HeldOutData(PreparedData):
    """A folder of photos as a run on its annotation sees it: val = the held-out answered photos.

    ``train`` and ``test`` are the folder's own (no true labels; test is empty); ``val`` is the
    :attr:`val_rows` of the train split, labelled by their answers (:func:`held_out_view`).
    """

    val_split: Split | None = None
    val_rows: np.ndarray | None = None
    note: str = ""

    def split(self, name: str) -> Split:
        """``val``: the held-out answered photos with their answers; else the folder's own split."""
        if name == "val" and self.val_split is not None:
            return self.val_split
        return super().split(name)


def held_out_view(data: PreparedData, observed: str | Path | None) -> PreparedData:
    """``data`` as a run on the observed labels ``observed`` sees it (None: the full labels).

    A folder with true labels is returned as it is. A folder of photos (no true labels) can be
    trained only on an annotation: its val split becomes the held-out photos answered so far (see
    the module), labelled by their answers; the run must leave those rows out of training
    (:attr:`HeldOutData.val_rows`, which :func:`rows_to_train` is given).

    Raises:
        SpmlError: naming the folder or the file: full labels or a file that is not an annotation
            on a folder without true labels, or no answered photo among the held-out ones yet.
    """
    if data.has_true_labels:
        return data
    if observed is None:
        raise unknown_labels_error(data.root, "training on full labels needs them")
    path = Path(observed)
    if not path.is_absolute() and not path.exists() and (data.observed_dir / path).exists():
        path = data.observed_dir / path
    if read_record(path) is None:
        raise unknown_labels_error(data.root, f"{path.name} is not an annotation, and a person's answers are its only labels")
    labels = load_observed(data, path)
    seed, fraction = data.manifest.get("seed"), data.manifest.get("val_fraction")
    if type(seed) is not int or not 0 <= seed < 2**32 or type(fraction) not in (int, float) or not 0 < fraction < 1:
        raise SpmlError("manifest: seed (an integer) or val_fraction (in (0, 1)) is missing or wrong; prepare the folder again", data.root / "manifest.json")
    answers = row_answers(labels)
    answered = answers != UNANSWERED
    rows = np.flatnonzero(held_out_mask(len(labels), seed, float(fraction)) & answered)
    if len(rows) == 0:
        raise SpmlError(
            f"has {int(answered.sum())} answers but none among the held-out photos (val_fraction {fraction:g} of the photos, "
            "drawn at prepare time) that val is made of; annotate more photos", path)
    val_labels = (labels[rows] == POSITIVE).astype(TRUE_DTYPE)
    if not val_labels.any():
        raise SpmlError(f"the {len(rows)} held-out answered photos are all 'none of these': val has no positive to rank; annotate more photos", path)
    val_labels.setflags(write=False)
    train = data.split("train")
    val = Split(name="val", images=[train.images[i] for i in rows], labels=val_labels)
    note = (f"{data.root} has no true labels: val is the {len(rows)} held-out photos of the {int(answered.sum())} answered in "
            f"{path.name} (never trained on), their answers the only labels known (every other class counted absent); "
            "val mAP ranks the picked classes, not full label sets; no test set (test_map null)")
    return HeldOutData(root=data.root, classes=data.classes, manifest=data.manifest, val_split=val, val_rows=rows, note=note)
