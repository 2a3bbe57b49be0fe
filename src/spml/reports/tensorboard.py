"""Optional TensorBoard logging (``--log tensorboard``): each epoch's metrics as scalars.

TensorBoard is not a core dependency: install it with ``pip install 'spml[tensorboard]'``. Events
go to ``RUN_DIR/tensorboard/`` (``tensorboard --logdir RUN_DIR`` or a grid folder). mAP is a
fraction, as in ``metrics.jsonl``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spml.errors import SpmlError
from spml.training.callbacks import Callback

LOG_DIR = "tensorboard"
SCALARS = ("train_loss", "val_map", "train_label_map", "lr", "batch_size", "seconds")


class TensorBoardLogger(Callback):
    """A listener callback writing one TensorBoard event file per run folder (a grid's runs each their own)."""

    def __init__(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SpmlError("logging epochs to tensorboard needs TensorBoard: pip install 'spml[tensorboard]'") from None
        self._writer_class = SummaryWriter
        self._writers: dict[Path, Any] = {}

    def on_epoch_record(self, run_dir: Path, record: dict[str, Any]) -> None:
        """Write ``record``'s scalars at step ``record["epoch"]``."""
        writer = self._writers.get(run_dir)
        if writer is None:
            writer = self._writers[run_dir] = self._writer_class(log_dir=str(run_dir / LOG_DIR))
        for key in SCALARS:
            if record.get(key) is not None:
                writer.add_scalar(key, float(record[key]), int(record["epoch"]))
        writer.flush()

    def close(self) -> None:
        """Close every event file."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


@contextlib.contextmanager
def epoch_logging(kind: str | None) -> Iterator[tuple[Callback, ...]]:
    """The callbacks that log every epoch to ``kind`` (``tensorboard``; None: none), closed when the block ends.

    Pass them to the runs of the block (``spml.train(..., callbacks=...)``, ``spml.resume``, ``spml.grid``).
    """
    if kind is None:
        yield ()
        return
    if kind != "tensorboard":
        raise SpmlError(f"unknown epoch log {kind!r}; valid: tensorboard")
    logger = TensorBoardLogger()
    try:
        yield (logger,)
    finally:
        logger.close()
