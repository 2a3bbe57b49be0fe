"""Commands that should answer at once import neither torch nor the methods (issue 21: under 1 s of CPU).

The CPU seconds themselves are measured in ``benchmarks/bench_startup.py``; this checks the cause
a regression would have: a module-level import that pulls the library in.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "spml.api", "spml.methods", "open_clip", "matplotlib")


def imported_by(argv: list[str]) -> list[str]:
    """The heavy modules a fresh interpreter has imported after ``spml ARGV`` (which exits through argparse)."""
    code = (
        "import json, sys\n"
        "from spml.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["compare", "--help"], ["--version"]])
def test_quick_commands_import_nothing_heavy(argv: list[str]) -> None:
    assert imported_by(argv) == []
