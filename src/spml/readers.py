"""Bounded readers of the files and settings a user hands spml: one place for each kind of text.

Every YAML, JSON and line-list file spml reads goes through these functions, so that each is
checked the same way before it is parsed: it must be a regular file (a FIFO or a device would
block or never end), no larger than a limit for its kind, and UTF-8 text. YAML is parsed into its
node graph first and refused when its aliases would expand past :data:`MAX_YAML_NODES` nodes: a
773-byte "billion laughs" document is one error instead of gigabytes of memory. Environment
variables are read when a command needs them, never at import, so a bad value is one error for the
command that uses it. Every problem is one :class:`~spml.errors.SpmlError` line naming the file.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from spml.errors import SpmlError

# Settings and small documents (configs, model.json, results, manifests): far above any real one.
MAX_SMALL_BYTES = 64 << 20
# Annotation files: COCO's instances_train2017.json alone is 448 MB.
MAX_ANNOTATION_BYTES = 4 << 30
# Nodes a YAML document may hold once its aliases are expanded (a config has a few hundred).
MAX_YAML_NODES = 1_000_000


class NotYaml(SpmlError):
    """Text that does not parse as YAML (a subclass, so that callers may take such text as given)."""


class NotJson(SpmlError):
    """Text that does not parse as JSON (a subclass, so that callers may word it their own way)."""


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float, as YAML 1.2 does (PyYAML's 1.1 rules need ``1.0e-4``)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def regular_file(path: str | Path, what: str = "file") -> Path:
    """``path`` if it is a regular file (symlinks followed); SpmlError naming it otherwise.

    A FIFO, socket or device is refused without opening it: opening a FIFO blocks until a writer
    comes, and a device may never end.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SpmlError(f"{what} does not exist", path) from None
    except OSError as err:
        raise SpmlError(f"cannot read the {what} ({err.strerror or err})", path) from None
    if not stat.S_ISREG(mode):
        kind = _kind(mode)
        raise SpmlError(f"{what} is {kind}, not a regular file" if kind.startswith("a ") else f"{what} is {kind}", path)
    return path


def read_bytes(path: str | Path, what: str = "file", max_bytes: int = MAX_SMALL_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; SpmlError naming it otherwise."""
    path = regular_file(path, what)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise SpmlError(f"cannot read the {what} ({err.strerror or err})", path) from None
    if len(data) > max_bytes:
        raise SpmlError(f"{what} is larger than {max_bytes:,} bytes; is it the right file?", path)
    return data


def read_text(path: str | Path, what: str = "file", max_bytes: int = MAX_SMALL_BYTES) -> str:
    """The UTF-8 text of a regular file (a leading byte-order mark dropped), bounded by ``max_bytes``."""
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SpmlError(f"{what} is not UTF-8 text (byte {err.start})", path) from None


def read_lines(path: str | Path, what: str = "list file", max_bytes: int = MAX_SMALL_BYTES) -> list[str]:
    """Non-empty stripped lines of a text file (bounded, UTF-8, regular); SpmlError naming it otherwise."""
    return [line.strip() for line in read_text(path, what, max_bytes).splitlines() if line.strip()]


def parse_json(text: str, source: str | Path | None = None, what: str = "file") -> Any:
    """JSON of ``text``; SpmlError naming ``source`` when it does not parse (or nests too deeply)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise NotJson(f"{what} does not parse as JSON ({err.msg}: line {err.lineno} column {err.colno})", source) from None
    except ValueError as err:  # a number of thousands of digits (Python's int-conversion limit)
        raise NotJson(f"{what} does not parse as JSON ({(str(err).splitlines() or ['bad value'])[0]})", source) from None
    except RecursionError:
        raise NotJson(f"{what} does not parse as JSON (nested too deeply)", source) from None


def read_json(path: str | Path, what: str = "file", max_bytes: int = MAX_SMALL_BYTES) -> Any:
    """A JSON file's value, read through :func:`read_text`'s checks."""
    return parse_json(read_text(path, what, max_bytes), path, what)


def read_json_object(path: str | Path, what: str = "file", max_bytes: int = MAX_SMALL_BYTES) -> dict[str, Any]:
    """A JSON file that must hold an object (``{...}``)."""
    value = read_json(path, what, max_bytes)
    if not isinstance(value, dict):
        raise SpmlError(f"{what} must hold a JSON object, not {_json_kind(value)}", path)
    return value


def _json_kind(value: Any) -> str:
    names = {list: "a list", str: "a string", bool: "true/false", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int], limit: int) -> int:
    """Nodes under ``node`` with every alias expanded, memoised per node so a bomb costs its own size."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise ValueError("an alias refers to a node that contains it (a recursive document)")
    open_nodes.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            total += _expanded_size(child, sizes, open_nodes, limit)
            if total > limit:
                break
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded_size(k, sizes, open_nodes, limit) + _expanded_size(v, sizes, open_nodes, limit)
            if total > limit:
                break
    open_nodes.discard(key)
    sizes[key] = total
    return total


def parse_yaml(text: str, source: str | Path | None = None, what: str = "value", max_nodes: int = MAX_YAML_NODES) -> Any:
    """The value of one YAML document, safe tags only, refused past ``max_nodes`` expanded nodes.

    Args:
        text: The YAML text.
        source: The file named at the start of a message.
        what: What the text is, named instead when there is no ``source`` (``override lr``).
        max_nodes: Most nodes the document may hold with its aliases expanded.

    Raises:
        NotYaml: The text does not parse (the message gives the line).
        SpmlError: Nested too deeply, a recursive alias, or aliases that expand past the limit.
    """
    prefix = "" if source is not None else f"{what}: "
    try:
        loader = YamlLoader(text)  # the reader refuses control characters right here
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            if _expanded_size(node, {}, set(), max_nodes) > max_nodes:
                raise SpmlError(f"{prefix}aliases expand to over {max_nodes:,} YAML nodes (an alias bomb); refused", source)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(err, "problem", None) or (str(err).splitlines() or [type(err).__name__])[0]).split())
        raise NotYaml(f"{prefix}not valid YAML{where} ({problem})", source) from None
    except ValueError as err:  # a constructor's own check (a timestamp like 2001-13-45) or a recursive alias
        raise SpmlError(f"{prefix}not valid YAML ({' '.join(str(err).split())})", source) from None
    except RecursionError:
        raise SpmlError(f"{prefix}nested too deeply", source) from None


def read_yaml(path: str | Path, what: str = "file", max_bytes: int = MAX_SMALL_BYTES) -> Any:
    """A YAML file's value, read through :func:`read_text`'s checks and :func:`parse_yaml`'s bounds."""
    return parse_yaml(read_text(path, what, max_bytes), path)


def env_int(name: str, default: int, minimum: int = 0) -> int:
    """The whole number in environment variable ``name`` (``default`` when unset or empty).

    ``1e9`` and ``1_000_000`` are accepted when they denote a whole number.

    Raises:
        SpmlError: Naming the variable, when its value is not a whole number >= ``minimum``.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number != int(number):
            raise SpmlError(f"environment variable {name} must be a whole number, got {text!r}") from None
        value = int(number)
    if value < minimum:
        raise SpmlError(f"environment variable {name} must be at least {minimum}, got {text!r}")
    return value
