"""The layering of docs/ARCHITECTURE.md: a package never imports a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

import spml

LAYERS = [
    "errors", "coerce", "metrics", "data", "models", "losses", "pseudolabels", "vlm", "training", "deploy",
    "methods", "reports", "annotate", "api", "papers", "cli",
]  # fmt: skip
RANK = {name: i for i, name in enumerate(LAYERS)}
RANK["metrics"] = RANK["coerce"]  # coerce and metrics share the layer above errors
RANK["readers"] = RANK["coerce"]  # bounded file readers: every layer reads its files through them
RANK["progress"] = RANK["coerce"]  # imports no spml module: every layer may report progress
RANK["__main__"] = RANK["cli"]  # ``python -m spml``: the command line


def imported_spml_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found |= {n.split(".")[1] for n in names if n.startswith("spml.") and n.count(".") >= 1}
    return found


def test_no_package_imports_a_higher_layer():
    root = Path(spml.__file__).parent
    violations = []
    for path in sorted(root.rglob("*.py")):
        layer = path.relative_to(root).parts[0].removesuffix(".py")
        if layer not in RANK:
            continue
        for target in imported_spml_packages(path):
            if target in RANK and RANK[target] > RANK[layer]:
                violations.append(f"{path.relative_to(root)} imports spml.{target}")
    assert violations == []


def test_every_package_is_placed_in_a_layer():
    root = Path(spml.__file__).parent
    packages = {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    assert packages | modules <= set(RANK), (packages | modules) - set(RANK)
