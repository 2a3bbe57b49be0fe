"""Property-based fuzzing of the config loader.

Whatever a YAML file, a mapping or an override string holds, :func:`spml.load_config` returns a
config or raises one SpmlError, never another exception.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spml.api import load_config
from spml.errors import SpmlError
from spml.training import TrainConfig

FUZZ = settings(max_examples=75, deadline=None, database=None, suppress_health_check=list(HealthCheck))

# Real keys (top level and dotted sections) so that examples reach the value checks, plus near misses.
KEYS = [f.name for f in dataclasses.fields(TrainConfig)] + [
    "linear_init.epochs", "linear_init.lr", "early_stopping.patience", "early_stopping.min_delta",
    "loss_params.alpha", "loss_params.ls_coef", "method_params.tau", "method_params.teacher",
    "extends", "grid", "lrr", "", ".", "a..b", "seed.x",
]
NAMES = ["an", "an_ls", "role", "vlpl", "ccd", "standard", "coco", "linear", "finetune", "linear-init", "cpu", "full", "none"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NAMES),
    st.text(max_size=6),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.integers(-2, 2), st.text(max_size=3)), children, max_size=4),
    ),
    max_leaves=12,
)
mappings = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=4), st.integers(-2, 2)), values, max_size=5)

# YAML-ish text: key lines, flow collections, anchors, tags and the usual hostile characters.
yaml_atoms = st.one_of(
    st.sampled_from(
        [f"{k}: " for k in KEYS[:12]]
        + ["\n", "  ", "- ", ": ", "[", "]", "{", "}", ",", "'", '"', "&a ", "*a", "!!python/object ", "!!str ",
           "!!binary ", "<<: ", "---\n", "...\n", "%YAML 1.1\n", "\t", "\x00", "\ufeff", "1e10", "-1", ".inf", ".nan",
           "yes", "~", "0x10", "2001-12-14", "extends: coco\n", "extends: nope.yaml\n", "grid:\n",
           "[" * 1500, "{a: " * 700]
        + NAMES
    ),
    st.text(max_size=6),
)
yaml_texts = st.lists(yaml_atoms, max_size=30).map("".join)
# Files as bytes: UTF-8 text with stray bytes (a Latin-1 file, a binary named by mistake).
yaml_files = st.lists(
    st.one_of(yaml_atoms.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=4)), max_size=30
).map(b"".join)
override_strings = st.lists(
    st.one_of(
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.one_of(st.sampled_from(["1", "-1", "[1", "{a: 1}", ".inf", "1e10", "", "=", "!!python/name:os.system", "[" * 1500]), st.text(max_size=6))),
        st.text(max_size=10),
    ),
    max_size=4,
)


def load_or_refuse(*args: Any) -> None:
    """The property: a TrainConfig or one SpmlError of one line."""
    try:
        config = load_config(*args)
    except SpmlError as err:
        assert "\n" not in str(err), str(err)
        return
    assert isinstance(config, TrainConfig)


@FUZZ
@given(yaml_files)
def test_any_yaml_file_gives_a_config_or_one_error(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.yaml"
        path.write_bytes(content)
        load_or_refuse(path)


@FUZZ
@given(mappings)
def test_any_mapping_gives_a_config_or_one_error(mapping: dict[Any, Any]) -> None:
    load_or_refuse(mapping)


@FUZZ
@given(override_strings, st.sampled_from([None, "coco", "vlpl"]))
def test_any_overrides_give_a_config_or_one_error(overrides: list[str], source: str | None) -> None:
    load_or_refuse(source, overrides)


@FUZZ
@given(mappings)
def test_any_mapping_as_overrides_gives_a_config_or_one_error(mapping: dict[Any, Any]) -> None:
    load_or_refuse(None, mapping)


def test_the_fuzzing_reaches_valid_configs() -> None:
    """The strategies are not all refusals: a config the fuzzer can draw loads."""
    assert load_config({"seed": 3, "lr": 1e10}).seed == 3


def test_a_mapping_nested_thousands_deep_is_one_error() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    for args in (({"loss_params": deep},), (None, {"loss_params": deep})):
        try:
            load_config(*args)
        except SpmlError as err:
            assert "nested too deeply" in str(err)
        else:
            raise AssertionError("a 5000-deep mapping was accepted")
