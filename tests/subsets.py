"""Small prepared folders cut from bigger ones, shared by the method tests."""

from __future__ import annotations

from pathlib import Path

from spml.data.layout import PreparedData, write_prepared


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
