"""``spml`` entry point: one module per sub-command, each exposing ``register(subparsers)``.

A sub-command module adds its parser and sets ``func`` to a callable taking the parsed namespace
and returning an exit code. :class:`spml.errors.SpmlError` becomes one line on stderr and exit 2.
Library errors name parameters (``method_params.tau``); a sub-command whose flags set parameters
declares ``flags`` (parameter -> flag) in its defaults, and :func:`main` writes those names as the
flags, here and nowhere else.

Start-up is cheap: a run imports only the module of its own sub-command (``spml --help`` lists the
others from :mod:`spml.cli.commands` without importing them), so ``spml --help`` and ``spml compare``
do not pay for torch (``benchmarks/bench_startup.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
from collections.abc import Mapping

from spml._version import __version__
from spml.cli.commands import COMMANDS, SUMMARIES
from spml.data.atomic import disk_error
from spml.errors import SpmlError
from spml.progress import set_quiet


def in_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with every parameter name of ``flags`` replaced by its command-line flag.

    An advised setting ``name=VALUE`` becomes ``--flag VALUE``.
    """
    for name in sorted(flags, key=len, reverse=True):
        message = re.sub(rf"(?<![\w.-]){re.escape(name)}={_VALUE}", lambda m, f=flags[name]: f"{f} {m.group(1)}", message)
        message = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w.])", flags[name], message)
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
    from spml.training.config import TrainConfig  # only when an error is printed

    keys = "|".join(sorted((f.name for f in dataclasses.fields(TrainConfig)), key=len, reverse=True))
    pattern = rf"(?:\bset )?(?<![\w.=-])(?<!--set )((?:{keys})(?:\.\w+)*={_VALUE})"
    return re.sub(pattern, r"--set \1", message)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``spml`` parser: every sub-command's, or with ``command`` only that one's (the others listed by name).

    Args:
        command: The sub-command about to run (``spml COMMAND ...``): only its module is imported;
            the other sub-commands appear in ``spml --help`` with their one-line help (``""``: none
            imported). None: every one (the full parser, for tests and documentation).
    """
    parser = argparse.ArgumentParser(prog="spml", description="Multi-label classifiers from weak labels.")
    parser.add_argument("--version", action="version", version=f"spml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, name in COMMANDS.items():
        if command is None or command == name:
            importlib.import_module(f"spml.cli.{module}").register(sub)
        else:
            sub.add_parser(name, help=SUMMARIES[module])
    for command in sub.choices.values():
        command.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines (errors still print)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``spml`` with ``argv``; return the exit code (2 for an :class:`SpmlError`)."""
    argv = sys.argv[1:] if argv is None else argv
    # The first word that is not an option names the sub-command (the top level has only --help and --version).
    command = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(command if command in COMMANDS.values() else "").parse_args(argv)  # "": none imported
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
    finally:
        # --quiet ends with its command: main also runs in-process (tests, a notebook's later calls).
        set_quiet(False)


if __name__ == "__main__":
    sys.exit(main())
