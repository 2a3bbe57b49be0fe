"""The train batches of an epoch: cached feature rows (linear phase) or decoded, augmented images.

:class:`BatchSource` owns the train split's inputs: the seeded batch order, each rank's share of it,
the cached features read by sorted row blocks, the image pipeline (decoded-image cache, workers,
channels-last) and the true labels a loss may declare. Batches are dicts of tensors on the run's
device (:class:`~spml.training.callbacks.Batch`); true labels are never among them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from spml.data import annotated
from spml.data.dataset import SplitDataset
from spml.data.image_cache import CachedSplitDataset, decoded_images
from spml.errors import SpmlError
from spml.progress import log
from spml.training import distributed
from spml.training.config import FULL_OBSERVED, TrainConfig
from spml.training.callbacks import Batch
from spml.training.phases import LINEAR
from spml.training.runmodel import RunModel


def train_rows(config: TrainConfig, observed: np.ndarray, held_out: int = 0) -> np.ndarray:
    """The train rows a run learns from: every row, or an annotation's answered rows (said in one line).

    ``held_out`` answered rows are val (a folder of photos): blanked in ``observed``, named in the line.

    Raises:
        SpmlError: An annotation without any answer yet.
    """
    rows = None if config.observed == FULL_OBSERVED else annotated.rows_to_train(config.observed, observed)
    if rows is None:
        return np.arange(len(observed))
    if len(rows) == 0:
        raise SpmlError("is an annotation without any answer yet; annotate some images first (spml annotate)", config.observed)
    if len(rows) < len(observed):
        val = f" and {held_out} held out as val" if held_out else ""
        log(f"note: {Path(config.observed).name}: training on the {len(rows)} of {len(observed)} train images answered so far"
            f"{val} (the others have no label yet)")
    return rows


class BatchSource:
    """The train split's batches for every epoch of a run.

    Args:
        config: The run's resolved config (seed, image cache, workers, image size).
        rm: The run model (train split, its feature cache and transforms).
        observed: int8 N x L labels to train on (after the method rewrote them).
        rows: The train rows to learn from (:func:`train_rows`: all of them, or an annotation's answered ones).
        device: Where batches go.
        channels_last: Give images in the channels-last layout (the model's).
    """

    def __init__(self, config: TrainConfig, rm: RunModel, observed: np.ndarray, device: torch.device, channels_last: bool,
                 rows: np.ndarray) -> None:
        self.config = config
        self.rows = rows
        self.rm = rm
        self.split = rm.split("train")
        self.observed = observed
        self.device = device
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.rows)

    def order(self, epoch: int, batch_size: int) -> list[np.ndarray]:
        """The epoch's batches of train rows: a seeded permutation.

        The last partial batch is dropped (Cole et al.; it also spares BatchNorm a batch of one)
        unless it is the only one.
        """
        n = len(self.rows)
        perm = self.rows[np.random.default_rng([self.config.seed, epoch]).permutation(n)]
        n_batches = max(1, n // batch_size)
        return [perm[b * batch_size : (b + 1) * batch_size] for b in range(n_batches)]

    def batches(self, phase_name: str, batch_size: int, epoch: int) -> Iterator[Batch]:
        """The epoch's train batches on the device, this rank's share of each global batch."""
        order = distributed.shard(self.order(epoch, batch_size))
        if phase_name == LINEAR:
            yield from self._feature_batches(order)
        else:
            yield from self._image_batches(order, epoch)

    def _feature_batches(self, order: list[np.ndarray]) -> Iterator[Batch]:
        rows = self.rm.features("train")
        for idx in order:
            idx = np.sort(idx)  # sorted rows: sequential reads from the cache
            yield {
                "features": torch.from_numpy(rows.take(idx)).to(self.device),
                "observed": torch.from_numpy(self.observed[idx].astype(np.int64)).to(self.device),
                "index": torch.from_numpy(idx).to(self.device),
                "flipped": torch.zeros(len(idx), dtype=torch.bool, device=self.device),
            }

    def _image_batches(self, order: list[np.ndarray], epoch: int) -> Iterator[Batch]:
        config = self.config
        if config.image_cache:
            pixels = decoded_images(self.split, config.image_size, self.rm.data.cache_dir)
            dataset: SplitDataset = CachedSplitDataset(
                self.split, self.rm.train_transform, pixels, observed=self.observed, seed=config.seed
            )
        else:
            dataset = SplitDataset(self.split, self.rm.train_transform, observed=self.observed, seed=config.seed)
        dataset.set_epoch(epoch)
        workers = config.num_workers
        loader = DataLoader(
            dataset,
            batch_size=len(order[0]),
            sampler=np.concatenate(order).tolist(),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            # Workers decode ahead of the GPU; 4 batches each covers the jitter of JPEG decoding.
            prefetch_factor=4 if workers > 0 else None,
        )
        for batch in loader:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if k != "labels"}
            if self.channels_last:
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            yield batch

    def true_labels(self, batch: Batch) -> torch.Tensor:
        """int64 true labels of ``batch``'s rows, for a loss that declares ``labels`` (IUN)."""
        rows = batch["index"].cpu().numpy()
        return torch.from_numpy(self.split.labels[rows].astype(np.int64)).to(self.device)
