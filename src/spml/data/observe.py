"""Observed training labels simulated from the true ones (int8: 1 positive, 0 unknown, -1 negative).

Modes:

* ``single-positive`` (Cole et al.): exactly one positive per image, drawn uniformly from its true
  positives; every other label unknown.
* ``partial``: each label is observed with probability ``keep`` (present as +1, absent as -1) and
  unknown otherwise.
* ``none``: every label unknown (annotation-free methods such as CCD).

:func:`observe` writes ``DATA_DIR/observed/<name>.npy`` and a JSON sidecar with the settings and
the fingerprint of the train split they were drawn for; the name encodes the settings that matter
for the mode, so the same settings always give the same file and the same bytes.
"""

from __future__ import annotations

import re

from pathlib import Path

import numpy as np

from spml import readers
from spml._version import __version__
from spml.data.atomic import save_npy, write_json
from spml.data.labels import NEGATIVE, OBSERVED_DTYPE, POSITIVE, PRESENT, UNKNOWN
from spml.data.layout import PreparedData
from spml.data.output import claim_file
from spml.errors import SpmlError

MODES = ("single-positive", "partial", "none")


def _check_mode(mode: str, keep: float) -> None:
    if mode not in MODES:
        raise SpmlError(f"unknown observation mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "partial" and not 0.0 <= keep <= 1.0:
        raise SpmlError(f"keep must be in [0, 1], got {keep}")


def simulate_observed(true_labels: np.ndarray, mode: str, keep: float, rng: np.random.Generator) -> np.ndarray:
    """Observed labels (int8 N x L) drawn from uint8 true labels (N x L) with ``rng``.

    Args:
        true_labels: 0/1 true labels.
        mode: ``single-positive``, ``partial`` or ``none``.
        keep: Probability of observing a label in ``partial`` mode (ignored otherwise).
        rng: The generator; the result depends only on its state and the inputs.

    Raises:
        SpmlError: Unknown mode, ``keep`` outside [0, 1], or (single-positive) a row without positives.
    """
    _check_mode(mode, keep)
    true = np.asarray(true_labels) == PRESENT
    n, _ = true.shape
    if mode == "none":
        return np.full(true.shape, UNKNOWN, dtype=OBSERVED_DTYPE)
    if mode == "partial":
        seen = rng.random(true.shape) < keep
        return np.where(seen, np.where(true, POSITIVE, NEGATIVE), UNKNOWN).astype(OBSERVED_DTYPE)
    counts = true.sum(axis=1)
    if (counts == 0).any():
        row = int(np.flatnonzero(counts == 0)[0])
        raise SpmlError(f"image {row} has no true positive, so it cannot get a single positive label")
    # Rank r (0-based) among the row's positives, uniform; the chosen column is where the running
    # count of positives first reaches r + 1.
    rank = np.minimum((rng.random(n) * counts).astype(np.int64), counts - 1)
    chosen = np.argmax(true & (np.cumsum(true, axis=1) == (rank + 1)[:, None]), axis=1)
    out = np.full(true.shape, UNKNOWN, dtype=OBSERVED_DTYPE)
    out[np.arange(n), chosen] = POSITIVE
    return out


def observed_name(mode: str, keep: float = 0.1, seed: int = 0) -> str:
    """File stem for the settings: ``single-positive-seed0``, ``partial-keep0.1-seed0``, ``none``."""
    _check_mode(mode, keep)
    if mode == "none":
        return "none"
    if mode == "partial":
        return f"partial-keep{keep:g}-seed{seed}"
    return f"single-positive-seed{seed}"


def parse_observed_name(stem: str) -> tuple[str, str | None, int | None] | None:
    """The inverse of :func:`observed_name`: ``(mode, keep as written, seed)``, None for another stem."""
    if stem == "none":
        return "none", None, None
    match = re.fullmatch(r"single-positive-seed(\d+)", stem)
    if match:
        return "single-positive", None, int(match.group(1))
    match = re.fullmatch(r"partial-keep(.+)-seed(\d+)", stem)
    if match:
        return "partial", match.group(1), int(match.group(2))
    return None


def _settings(data: PreparedData, mode: str, keep: float, seed: int) -> dict:
    train = data.split("train")
    settings = {"mode": mode, "train_fingerprint": train.label_fingerprint, "shape": list(train.labels.shape)}
    if mode != "none":
        settings["seed"] = seed
    if mode == "partial":
        settings["keep"] = keep
    return settings


def observe(data: PreparedData, mode: str, keep: float = 0.1, seed: int = 0) -> Path:
    """Write (or reuse) observed train labels for ``data`` and return the ``.npy`` path.

    An existing file with the same settings for the same train split is reused; one whose sidecar
    records other settings (e.g. the data folder was prepared again) is never overwritten. A file
    deleted beside its sidecar is drawn again: the draw depends only on the settings, so the bytes
    are the same.

    Raises:
        SpmlError: Bad mode or keep, ``DATA_DIR/observed`` is not a folder, or an existing file made
            with other settings.
    """
    data.require_true_labels("simulated observed labels are drawn from the train split's true labels")
    path = data.observed_dir / f"{observed_name(mode, keep, seed)}.npy"
    if data.observed_dir.exists() and not data.observed_dir.is_dir():
        raise SpmlError("is not a folder (observed labels are written into it); move it away", data.observed_dir)
    sidecar = path.with_suffix(".json")
    settings = _settings(data, mode, keep, seed)
    if path.exists() or sidecar.exists():
        try:
            old = readers.read_json_object(sidecar, "observed labels' record")
        except SpmlError:
            old = None
        if not isinstance(old, dict) or {k: old.get(k) for k in settings} != settings:
            raise SpmlError(
                "exists but was made with other settings or for another train split (see its .json); "
                "delete it and its .json to draw again",
                path,
            )
        if path.is_file():
            return path
    claim_file(path, "observed", what="the observed labels")
    rng = np.random.default_rng(seed)
    labels = simulate_observed(data.split("train").labels, mode, keep, rng)
    # Sidecar first: labels are never on disk without their settings; a sidecar left without labels
    # (a crash, or the .npy deleted) has its labels drawn again from the same settings.
    write_json(sidecar, {**settings, "spml_version": __version__})
    try:
        save_npy(path, labels)
    except BaseException:
        sidecar.unlink(missing_ok=True)  # a failed write (full disk) leaves nothing behind
        raise
    return path


def load_observed(data: PreparedData, path: str | Path) -> np.ndarray:
    """Load observed train labels, checking dtype, values, shape and (if present) the sidecar.

    Args:
        data: The prepared data the labels belong to.
        path: The ``.npy`` file; a bare name is looked up in ``data.observed_dir``.

    Raises:
        SpmlError: naming the file, if it is missing, unreadable, not int8 -1/0/1, of another shape
            than the train split, or recorded (sidecar) for another train split.
    """
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (data.observed_dir / path).exists():
        path = data.observed_dir / path
    # A FIFO or device is refused without opening it (np.load would block or never end).
    readers.regular_file(path, "observed labels file")
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise SpmlError(f"not a readable .npy file ({err})", path) from None
    if labels.dtype != OBSERVED_DTYPE:
        raise SpmlError(f"observed labels must be int8, got {labels.dtype}", path)
    bad = ~np.isin(labels, (NEGATIVE, UNKNOWN, POSITIVE))
    if bad.any():
        raise SpmlError(f"observed labels must be -1/0/1, found {np.unique(labels[bad])[:5].tolist()}", path)
    train = data.split("train")
    if labels.shape != train.shape:  # not train.labels: a folder of photos has none
        raise SpmlError(f"observed labels have shape {labels.shape}, train split has {train.shape}", path)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        recorded = readers.read_json_object(sidecar, "observed labels' record").get("train_fingerprint")
        if recorded is not None and recorded != train.label_fingerprint:
            raise SpmlError("observed labels were drawn for another train split; run `spml observe` again", path)
    return labels
