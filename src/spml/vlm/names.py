"""Readable class names for prompts: shipped tables per dataset, or a user's names file.

Class names in ``classes.txt`` are the datasets' label keys (VOC ``pottedplant``, CUB
``has_bill_shape::curved_(up_or_down)``); a prompt reads better, and CLIP scores better, with words.
:func:`prompt_names` turns the label keys into the names that fill the prompt templates:

* ``auto``: the shipped table (``spml/vlm/prompt_names/*.json``) whose keys cover every class (VOC:
  "potted plant", "tv monitor", "dining table"; CUB: "bird with a curved (up or down) bill"), else
  the class names unchanged (COCO's and NUS-WIDE's names are words already);
* ``raw``: the class names unchanged (VLPL's and CCD's code prompted with the label keys);
* a file: one name per line, in ``classes.txt`` order.

The templates stay separate (``--template``); the names only replace the ``{}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from spml import readers
from spml.errors import SpmlError
from spml.vlm.text import check_classes

TABLES_DIR = Path(__file__).with_name("prompt_names")
AUTO, RAW = "auto", "raw"


def shipped_tables() -> dict[str, dict[str, str]]:
    """Read the shipped tables, by dataset (file stem): ``{label key: readable name}``."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(TABLES_DIR.glob("*.json"))}


def read_names_file(path: str | Path, num_classes: int) -> list[str]:
    """Names from a file: one per line, in class order.

    Raises:
        SpmlError: Missing file, a line count other than ``num_classes``, blank or duplicated names.
    """
    path = Path(path)
    lines = readers.read_text(path, "prompt names file").splitlines()
    while lines and not lines[-1].strip():  # a trailing newline is not a name
        lines.pop()
    if len(lines) != num_classes:
        raise SpmlError(f"prompt names file has {len(lines)} lines, expected one per class ({num_classes})", path)
    try:
        return check_classes([line.strip() for line in lines])
    except SpmlError as err:
        raise SpmlError(f"prompt names file: {err.message}", path) from None


def prompt_names(classes: Sequence[str], names: str | Path = AUTO) -> list[str]:
    """Return the names that fill the prompt templates for ``classes`` (see the module docstring).

    Args:
        classes: The class names of ``classes.txt``, in label order.
        names: ``auto``, ``raw`` or the path of a names file.

    Raises:
        SpmlError: A bad names file (see :func:`read_names_file`).
    """
    classes = check_classes(classes)
    if str(names) == RAW:
        return classes
    if str(names) != AUTO:
        return read_names_file(names, len(classes))
    for table in shipped_tables().values():
        if all(c in table for c in classes):
            return [table[c] for c in classes]
    return classes
