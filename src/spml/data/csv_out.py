"""CSV that a spreadsheet opens as data: every CSV spml writes (predict, compare, grid) goes through here.

OWASP's CSV-injection rule: Excel, LibreOffice and Google Sheets evaluate a cell that begins with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return (``=HYPERLINK(...)`` runs when clicked,
``=cmd|...`` through DDE). Such a cell gets a leading ``'``, which spreadsheets show as text. A plain
number (``-0.5``, ``+1e-3``) is left alone: a spreadsheet reads it as the same number either way.
Cells holding the separator, quotes or line breaks are quoted (RFC 4180), so no cell spills into
the next.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def neutralise(cell: object) -> str:
    """``cell`` as text, with a leading ``'`` if a spreadsheet would evaluate it as a formula.

    Text that is not valid Unicode (a file name's undecodable bytes, a lone surrogate from JSON) is
    written as backslash escapes, so the file is always UTF-8.
    """
    text = str(cell).encode("utf-8", "backslashreplace").decode("utf-8")
    if text.startswith(FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_text(rows: Iterable[Sequence[object]]) -> str:
    """The rows (header first) as CSV text, every cell neutralised, one line per row."""
    lines = []
    for row in rows:
        # The writer quotes cells holding a character of its line terminator: "\r\n" makes it quote
        # a lone CR as well as LF; rows still end in "\n".
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerow([neutralise(cell) for cell in row])
        lines.append(buf.getvalue().removesuffix("\r\n") + "\n")
    return "".join(lines)
