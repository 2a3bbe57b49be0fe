"""The layering of docs/ARCHITECTURE.md: a package never imports a higher one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import spml

LAYERS = [
    "errors", "coerce", "metrics", "data", "models", "losses", "pseudolabels", "vlm", "training", "deploy",
    "methods", "reports", "annotate", "api", "papers", "cli",
]  # fmt: skip
RANK = {name: i for i, name in enumerate(LAYERS)}
RANK["_version"] = RANK["errors"]  # the version string: imports nothing
RANK["_lazy"] = RANK["errors"]  # lazy package exports: imports nothing of spml
RANK["metrics"] = RANK["coerce"]  # coerce and metrics share the layer above errors
RANK["readers"] = RANK["coerce"]  # bounded file readers: every layer reads its files through them
RANK["progress"] = RANK["coerce"]  # imports no spml module: every layer may report progress
RANK["__main__"] = RANK["cli"]  # ``python -m spml``: the command line
# ``import spml`` or ``from spml import train``: the package root re-exports the api (and deploy.load),
# so reaching a name through it is an arrow to the api layer.
ROOT = "api"


def imported_spml_packages(path: Path) -> set[str]:
    """Every top-level spml module or package ``path`` imports, the package root counted as ``ROOT``.

    ``from spml import readers`` is an import of ``spml.readers``; ``from spml import __version__``
    (or ``train``) and ``import spml`` go through the root, which is the api layer.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "spml":
                    found.add(ROOT)
                elif alias.name.startswith("spml."):
                    found.add(alias.name.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "spml":
                found |= {a.name if a.name in RANK else ROOT for a in node.names}
            elif node.module.startswith("spml."):
                found.add(node.module.split(".")[1])
    return found


def test_the_import_parser_sees_every_form(tmp_path):
    """The checker must see an arrow through the root, or the layering test could pass on a violation."""
    source = tmp_path / "m.py"
    source.write_text(
        "import spml\nimport spml.data.cache\nfrom spml import readers, __version__\n"
        "from spml.losses import registry\ndef f():\n    from spml import train\n"
    )
    assert imported_spml_packages(source) == {ROOT, "data", "readers", "losses"}


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


# A command-line flag in a message: ``--word`` not inside a longer token.
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def error_texts(source: str) -> list[tuple[int, str]]:
    """The literal text of every ``SpmlError(...)`` call in ``source`` (f-string fields dropped)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "SpmlError":
            for part in ast.walk(node):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    found.append((part.lineno, part.value))
    return found


def test_library_errors_name_parameters_not_flags():
    """Below ``spml.cli`` an error names the parameter; ``cli.main`` writes the flag a command declares."""
    root = Path(spml.__file__).parent
    flagged = [
        f"{path.relative_to(root)}:{line}: {text!r}"
        for path in sorted(root.rglob("*.py"))
        if path.relative_to(root).parts[0] not in ("cli", "__main__.py")
        for line, text in error_texts(path.read_text())
        if FLAG.search(text)
    ]
    assert flagged == []
    # The check sees a flag in an f-string's literal part, and not a parameter name.
    assert [t for _, t in error_texts('raise SpmlError(f"bad {x}; pass --allow-outside-raw")') if FLAG.search(t)]
    assert not [t for _, t in error_texts('raise SpmlError("bad; allow_outside accepts it")') if FLAG.search(t)]


def test_the_command_line_writes_the_flag_for_a_parameter():
    from spml.cli.main import build_parser, in_flags

    args = build_parser().parse_args(["prepare", "csv", "--raw", "r", "--out", "o"])
    message = in_flags("image path 'x' lies outside the raw folder r; allow_outside accepts it", args.flags)
    assert message.endswith("; --allow-outside-raw accepts it")
