"""Argument helpers shared by the sub-commands: flags left out defer to the library's defaults."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any


def given(args: argparse.Namespace, params: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments of the library call, from the flags the user gave.

    ``params`` maps argparse dest -> parameter name; a flag left out (None) is not passed, so the
    library's own default applies.
    """
    return {param: getattr(args, dest) for dest, param in params.items() if getattr(args, dest) is not None}


def flag_names(params: Mapping[str, str]) -> dict[str, str]:
    """Parameter name -> ``--flag`` for :func:`spml.cli.main.in_flags` (errors name the flags)."""
    return {param: "--" + dest.replace("_", "-") for dest, param in params.items()}
