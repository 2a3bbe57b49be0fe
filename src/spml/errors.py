"""The one exception type that the CLI turns into a single clear line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path


class SpmlError(Exception):
    """A problem with the user's input: a file, a config value, a name.

    Args:
        message: What is wrong, in one line.
        path: The file or folder at fault, named at the start of the line when given.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)
