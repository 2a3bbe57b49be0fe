"""The one exception type that the CLI turns into a single clear line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

# torch's DataLoader re-raises an exception of a worker process as ``type(err)(text)``, where the
# text is "Caught SpmlError in DataLoader worker process N." followed by the worker's traceback,
# whose last line is "spml.errors.SpmlError: <the one line>".
_WORKER_PREFIX = "Caught SpmlError in DataLoader worker process"


class SpmlError(Exception):
    """A problem with the user's input: a file, a config value, a name.

    Args:
        message: What is wrong, in one line. When a DataLoader worker raised it, torch rebuilds it
            from the worker's whole traceback: the one line is taken back from its end.
        path: The file or folder at fault, named at the start of the line when given.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        if message.startswith(_WORKER_PREFIX):
            last = message.rstrip().rsplit("\n", 1)[-1]
            message = last.removeprefix(f"{__name__}.{SpmlError.__name__}: ")
        self.path = None if path is None else Path(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)
