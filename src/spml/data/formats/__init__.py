"""Dataset formats: one reader per official layout, looked up by name.

Each reader is ``read(raw: Path, options: FormatOptions) -> RawDataset``; see
:mod:`spml.data.formats.base`. :data:`FORMATS` maps the names used by ``spml prepare``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spml.data.formats.base import FormatOptions, RawDataset, RawSplit
from spml.data.formats.coco import read_coco2014
from spml.data.formats.generic_csv import read_csv
from spml.data.formats.cub import read_cub
from spml.data.formats.folder import read_folder
from spml.data.formats.nuswide import read_nuswide
from spml.data.formats.voc import read_voc2007, read_voc2012
from spml.data.formats.yolo import read_yolo
from spml.errors import SpmlError

Reader = Callable[[Path, FormatOptions], RawDataset]


@dataclass(frozen=True)
class FormatInfo:
    """A registered format: its name, a one-line description and its reader.

    A reader whose pool has ``labels=None`` (``folder``) gives a data folder without true labels.
    """

    name: str
    description: str
    read: Reader


FORMATS: dict[str, FormatInfo] = {
    info.name: info
    for info in (
        FormatInfo("voc2007", "PASCAL VOC 2007 (VOCdevkit): trainval pool, test set", read_voc2007),
        FormatInfo("voc2012", "PASCAL VOC 2012 (VOCdevkit): train pool, val as test set", read_voc2012),
        FormatInfo("coco2014", "MS-COCO 2014 instances: train2014 pool, val2014 as test set", read_coco2014),
        FormatInfo("nuswide", "NUS-WIDE: Cole et al.'s 2020 re-crawl (formatted_*.npy) or the official release (ImageList/), + Flickr/", read_nuswide),
        FormatInfo("cub", "CUB-200-2011, 312 attributes, official train/test split", read_cub),
        FormatInfo("yolo", "YOLO detection layout (data.yaml, images/, labels/)", read_yolo),
        FormatInfo("csv", "train.csv / test.csv with 'path,labels' rows", read_csv),
        FormatInfo("folder", "a folder of photos without labels (any depth) + --classes-file or --classes: "
                   "every photo to annotate (spml annotate), no true labels, no test set", read_folder),
    )
}


def get_format(name: str) -> FormatInfo:
    """The registered format ``name``; SpmlError listing the valid names otherwise."""
    if name not in FORMATS:
        raise SpmlError(f"unknown format {name!r}; valid: {', '.join(FORMATS)}")
    return FORMATS[name]


__all__ = ["FORMATS", "FormatInfo", "FormatOptions", "RawDataset", "RawSplit", "Reader", "get_format"]
