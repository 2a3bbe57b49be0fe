"""``spml`` entry point: one module per sub-command, each exposing ``register(subparsers)``.

A sub-command module adds its parser and sets ``func`` to a callable taking the parsed namespace
and returning an exit code. :class:`spml.errors.SpmlError` becomes one line on stderr and exit 2.
Library errors name parameters (``method_params.tau``); a sub-command whose flags set parameters
declares ``flags`` (parameter -> flag) in its defaults, and :func:`main` writes those names as the
flags, here and nowhere else.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
from collections.abc import Mapping

from spml import __version__
from spml.data.atomic import disk_error
from spml.errors import SpmlError
from spml.progress import set_quiet
from spml.training.config import TrainConfig

COMMANDS = ("prepare", "observe", "synth", "demo", "train", "evaluate", "grid", "score", "micro_clip",
            "predict", "export", "report", "compare", "reproduce",
            "annotate")


def in_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with every parameter name of ``flags`` replaced by its command-line flag.

    An advised setting ``name=VALUE`` becomes ``--flag VALUE``.
    """
    for name in sorted(flags, key=len, reverse=True):
        message = re.sub(rf"(?<![\w.]){re.escape(name)}={_VALUE}", lambda m, f=flags[name]: f"{f} {m.group(1)}", message)
        message = re.sub(rf"(?<![\w.]){re.escape(name)}(?![\w.])", flags[name], message)
    return message


# A setting's value in a message: up to a space or the punctuation around it (no quoted repr).
_VALUE = r"([^\s,;)'\"][^\s,;)]*)"


def as_set_options(message: str) -> str:
    """``message`` with every advised config setting ``KEY=VALUE`` written as ``--set KEY=VALUE``.

    Library errors advise settings in the ``key=value`` form of :func:`spml.load_config`'s
    overrides; a command that takes ``--set`` prints them as its users type them. KEY is a
    :class:`~spml.training.TrainConfig` field, dotted into its sections and parameter maps (the
    keys ``--set`` accepts); a leading "set " is absorbed, one already after ``--set`` is kept.
    """
    keys = "|".join(sorted((f.name for f in dataclasses.fields(TrainConfig)), key=len, reverse=True))
    pattern = rf"(?:\bset )?(?<![\w.=-])(?<!--set )((?:{keys})(?:\.\w+)*={_VALUE})"
    return re.sub(pattern, r"--set \1", message)


def build_parser() -> argparse.ArgumentParser:
    """The ``spml`` parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="spml", description="Multi-label classifiers from weak labels.")
    parser.add_argument("--version", action="version", version=f"spml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"spml.cli.{name}").register(sub)
    for command in sub.choices.values():
        command.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines (errors still print)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``spml`` with ``argv``; return the exit code (2 for an :class:`SpmlError`)."""
    args = build_parser().parse_args(argv)
    set_quiet(args.quiet)
    try:
        return int(args.func(args) or 0)
    except SpmlError as err:
        message = in_flags(err.message, getattr(args, "flags", None) or {})
        if hasattr(args, "overrides"):  # the command takes --set KEY=VALUE
            message = as_set_options(message)
        print(f"spml {args.command}: error: {SpmlError(message, err.path)}", file=sys.stderr)
        return 2
    except OSError as err:
        # A full disk outside spml's own atomic writes (a library saving a file): still one line.
        converted = disk_error(err, err.filename or "disk")
        if converted is None:
            raise
        print(f"spml {args.command}: error: {converted}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spml {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
