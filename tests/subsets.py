"""Small prepared folders cut from bigger ones, shared by the method tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spml.api import load_config, train
from spml.data.layout import PreparedData, write_prepared
from spml.data.observe import observe
from spml.losses import Epoch
from spml.training import TrainingHooks
from spml.vlm import load_vlm, score_split
from tiny import SINGLE_POSITIVES, overrides, synthetic_set, tiny


def small_copy(data_dir: Path, out: Path, n_train: int, n_eval: int) -> Path:
    """A prepared folder over the first images of each split (paths are absolute: nothing copied).

    Caches and observed labels written into the copy leave the source (e.g. a session fixture) alone.
    """
    data = PreparedData.open(data_dir)
    splits = {}
    for name, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        split = data.split(name)
        splits[name] = (split.images[:n], split.labels[:n])
    out.mkdir(parents=True)
    write_prepared(out, data.classes, splits, {"source": "subset for tests"})
    return out


def scored_single_positive_copy(micro_clip, out: Path, n_train: int, n_eval: int) -> Path:
    """The inputs of ``--method vlpl``: a small copy with single positives and a score cache.

    :func:`small_copy` of the micro CLIP fixture's set with single positives (seed 0) and the micro
    CLIP's train-split score cache in ``DATA/cache``.
    """
    out = small_copy(micro_clip.data_dir, out, n_train, n_eval)
    data = PreparedData.open(out)
    vlm = load_vlm(micro_clip.spec, micro_clip.checkpoint, micro_clip.config)
    score_split(vlm, data.split("train"), data.classes, ["a photo of a {}"], data.cache_dir, num_workers=0)
    observe(data, "single-positive", seed=0)
    return out


def micro_clip_params(micro_clip) -> list[str]:  # type: ignore[no-untyped-def]
    """``--set`` overrides naming the micro CLIP as VLPL's VLM (its cache is then the one above)."""
    return [f"method_params.vlm={micro_clip.spec}", f"method_params.vlm_checkpoint={micro_clip.checkpoint}",
            f"method_params.vlm_model_config={micro_clip.config}"]


class StopAt(TrainingHooks):
    """Interrupts the run (as Ctrl-C would) when epoch ``number`` starts (before it trains)."""

    def __init__(self, number: int) -> None:
        self.number = number

    def on_epoch_start(self, epoch: Epoch) -> None:
        if epoch.number == self.number:
            raise KeyboardInterrupt


def train_interrupted_at(stop_epoch: int, *args: Any, **kwargs: Any) -> None:
    """``spml.train(*args, **kwargs)`` stopped by a Ctrl-C when epoch ``stop_epoch`` starts."""
    with pytest.raises(KeyboardInterrupt):
        train(*args, hooks=[StopAt(stop_epoch)], **kwargs)


class CtrlCAtRecord(TrainingHooks):
    """A Ctrl-C while epoch ``number``'s record is written: before its checkpoint, so the run resumes from the epoch before."""

    def __init__(self, number: int) -> None:
        self.number = number

    def on_epoch_record(self, run_dir: Path, record: dict[str, Any]) -> None:
        if record["epoch"] == self.number:
            raise KeyboardInterrupt


@contextlib.contextmanager
def interrupted_at(stop_epoch: int) -> Iterator[tuple[TrainingHooks, ...]]:
    """The callbacks of a Ctrl-C while epoch ``stop_epoch`` of a run is recorded: the block must end with it.

    For calls that train several runs (grids, reproduce): pass the yielded callbacks to them; the
    interrupted run keeps the checkpoint of the epoch before and resumes from there.
    """
    with pytest.raises(KeyboardInterrupt):
        yield (CtrlCAtRecord(stop_epoch),)


def tiny_single_positive_set(out: Path, seed: int) -> Path:
    """A 40-image, 3-class synthetic set at 32 px with single positives (``single-positive-seed0.npy``)."""
    return synthetic_set(out, num_images=40, num_classes=3, seed=seed, single_positive=True)


# A linear probe on timm's tiny random test_resnet: a run takes about a second. An `an` model's
# probabilities sit far below 0.5 (single positives: every unobserved label is trained as negative).
TINY_PROBE = overrides(tiny(lr=0.01, eval_batch_size=64, epochs=4, batch_size=16, observed=SINGLE_POSITIVES, loss="an"))


def tiny_probe_run(root: Path, num_images: int, num_classes: int, seed: int, *settings: str) -> Path:
    """``root/run``: a :data:`TINY_PROBE` run (with ``settings`` on top) on a synthetic set with single positives in ``root/data``."""
    data = synthetic_set(root / "data", num_images=num_images, num_classes=num_classes, seed=seed, single_positive=True)
    train(data, load_config(None, [*TINY_PROBE, *settings]), root / "run")
    return root / "run"
