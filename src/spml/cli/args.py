"""Argument helpers shared by the sub-commands: flags left out defer to the library's defaults."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any


def given(args: argparse.Namespace, params: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments of the library call: ``params`` maps argparse dest -> parameter name, and
    only flags the user gave (not None) are passed, so the library's own defaults apply otherwise."""
    return {param: getattr(args, dest) for dest, param in params.items() if getattr(args, dest) is not None}


def flag_names(params: Mapping[str, str]) -> dict[str, str]:
    """Parameter name -> ``--flag`` for :func:`spml.cli.main.in_flags` (errors name the flags)."""
    return {param: "--" + dest.replace("_", "-") for dest, param in params.items()}
