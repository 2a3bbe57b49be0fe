"""Observed-label simulation: the rules of each mode, determinism, files, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spml.data.layout import PreparedData, write_prepared
from spml.data.observe import load_observed, observe, observed_name, parse_observed_name, simulate_observed
from spml.errors import SpmlError

TRUE = np.array(
    [[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1], [1, 0, 0, 1]],
    dtype=np.uint8,
)


@pytest.fixture
def data(tmp_path) -> PreparedData:
    rng = np.random.default_rng(5)
    train = (rng.random((60, 6)) < 0.4).astype(np.uint8)
    train[np.arange(60), rng.integers(0, 6, 60)] = 1  # every train image has a positive
    splits = {
        "train": ([tmp_path / f"{i}.jpg" for i in range(60)], train),
        "val": ([tmp_path / "v.jpg"], np.ones((1, 6), np.uint8)),
        "test": ([tmp_path / "t.jpg"], np.zeros((1, 6), np.uint8)),
    }
    root = tmp_path / "data"
    root.mkdir()
    write_prepared(root, [f"c{j}" for j in range(6)], splits, {"format": "test"})
    return PreparedData.open(root)


def test_single_positive_one_true_positive_per_row():
    obs = simulate_observed(TRUE, "single-positive", 0.1, np.random.default_rng(0))
    assert obs.dtype == np.int8 and obs.shape == TRUE.shape
    assert (obs == 1).sum(axis=1).tolist() == [1, 1, 1, 1, 1]
    assert set(np.unique(obs).tolist()) == {0, 1}
    assert (TRUE[obs == 1] == 1).all()
    assert obs[1].tolist() == [0, 1, 0, 0] and obs[3].tolist() == [0, 0, 0, 1]


def test_single_positive_is_uniform_over_positives():
    true = np.tile(np.array([[1, 1, 0, 1]], np.uint8), (30000, 1))
    obs = simulate_observed(true, "single-positive", 0.1, np.random.default_rng(1))
    freq = (obs == 1).mean(axis=0)
    assert freq[2] == 0.0
    np.testing.assert_allclose(freq[[0, 1, 3]], 1 / 3, atol=0.01)


def test_single_positive_rejects_rows_without_positive():
    with pytest.raises(SpmlError, match="image 1 has no true positive"):
        simulate_observed(np.array([[1, 0], [0, 0]], np.uint8), "single-positive", 0.1, np.random.default_rng(0))


def test_partial_keeps_signs_and_rate():
    true = (np.random.default_rng(2).random((2000, 10)) < 0.3).astype(np.uint8)
    obs = simulate_observed(true, "partial", 0.25, np.random.default_rng(3))
    seen = obs != 0
    assert (obs[seen] == np.where(true[seen] == 1, 1, -1)).all()
    assert abs(seen.mean() - 0.25) < 0.01
    assert (simulate_observed(true, "partial", 1.0, np.random.default_rng(0)) == np.where(true == 1, 1, -1)).all()
    assert (simulate_observed(true, "partial", 0.0, np.random.default_rng(0)) == 0).all()


def test_none_is_all_unknown():
    obs = simulate_observed(TRUE, "none", 0.1, np.random.default_rng(0))
    assert obs.dtype == np.int8 and not obs.any()


@pytest.mark.parametrize(
    ("mode", "keep", "message"),
    [("all", 0.1, "unknown observation mode 'all'"), ("partial", 1.5, r"keep must be in \[0, 1\], got 1.5")],
)
def test_bad_settings(mode, keep, message):
    with pytest.raises(SpmlError, match=message):
        simulate_observed(TRUE, mode, keep, np.random.default_rng(0))


def test_names_encode_settings():
    assert observed_name("single-positive", 0.3, 7) == "single-positive-seed7"
    assert observed_name("partial", 0.25, 1) == "partial-keep0.25-seed1"
    assert observed_name("none", 0.5, 9) == "none"


def test_observe_writes_deterministic_file_and_sidecar(data, tmp_path):
    path = observe(data, "single-positive", seed=4)
    assert path == data.root / "observed" / "single-positive-seed4.npy"
    first = path.read_bytes()
    labels = load_observed(data, path)
    expected = simulate_observed(data.split("train").labels, "single-positive", 0.1, np.random.default_rng(4))
    assert np.array_equal(labels, expected)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["mode"] == "single-positive" and sidecar["seed"] == 4 and sidecar["shape"] == [60, 6]
    assert sidecar["train_fingerprint"] == data.split("train").label_fingerprint
    # Same settings: reused, same bytes; a fresh draw elsewhere gives the same bytes too.
    assert observe(data, "single-positive", seed=4) == path and path.read_bytes() == first
    path.unlink()  # only the labels deleted: drawn again from the sidecar's settings
    assert observe(data, "single-positive", seed=4).read_bytes() == first
    path.unlink()
    path.with_suffix(".json").unlink()
    assert observe(data, "single-positive", seed=4).read_bytes() == first
    assert observe(data, "single-positive", seed=5).read_bytes() != first


def test_observe_partial_and_none_files(data):
    p = observe(data, "partial", keep=0.5, seed=1)
    assert p.name == "partial-keep0.5-seed1.npy"
    obs = load_observed(data, p)
    train = data.split("train").labels
    assert (obs[obs != 0] == np.where(train[obs != 0] == 1, 1, -1)).all()
    n = observe(data, "none")
    assert n.name == "none.npy" and not load_observed(data, n).any()
    assert json.loads(n.with_suffix(".json").read_text())["mode"] == "none"


def test_observe_never_overwrites_other_settings(data):
    path = observe(data, "single-positive", seed=0)
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["train_fingerprint"] = "0" * 16  # as if the folder was prepared again since
    sidecar.write_text(json.dumps(meta))
    before = path.read_bytes()
    with pytest.raises(SpmlError, match="made with other settings") as err:
        observe(data, "single-positive", seed=0)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before
    sidecar.unlink()  # labels without their settings are not trusted either
    with pytest.raises(SpmlError, match="made with other settings"):
        observe(data, "single-positive", seed=0)


def test_load_observed_validation(data):
    obs_dir = data.observed_dir
    obs_dir.mkdir()
    cases = {
        "wrong-dtype.npy": (np.zeros((60, 6), np.int64), "must be int8, got int64"),
        "wrong-values.npy": (np.full((60, 6), 2, np.int8), r"must be -1/0/1, found \[2\]"),
        "wrong-shape.npy": (np.zeros((59, 6), np.int8), r"shape \(59, 6\), train split has \(60, 6\)"),
    }
    for name, (array, message) in cases.items():
        np.save(obs_dir / name, array)
        with pytest.raises(SpmlError, match=message) as err:
            load_observed(data, obs_dir / name)
        assert str(err.value).startswith(str(obs_dir / name))
    (obs_dir / "garbage.npy").write_bytes(b"not numpy")
    with pytest.raises(SpmlError, match="not a readable .npy file"):
        load_observed(data, obs_dir / "garbage.npy")
    with pytest.raises(SpmlError, match="does not exist"):
        load_observed(data, obs_dir / "missing.npy")
    good = observe(data, "none")
    assert load_observed(data, "none.npy").shape == (60, 6)  # bare names resolve in observed/
    meta = json.loads(good.with_suffix(".json").read_text())
    good.with_suffix(".json").write_text(json.dumps({**meta, "train_fingerprint": "x"}))
    with pytest.raises(SpmlError, match="drawn for another train split"):
        load_observed(data, good)


def test_observed_names_parse_back_to_their_settings():
    assert parse_observed_name(observed_name("single-positive", seed=3)) == ("single-positive", None, 3)
    assert parse_observed_name(observed_name("partial", keep=0.25, seed=1)) == ("partial", "0.25", 1)
    assert parse_observed_name(observed_name("none")) == ("none", None, None)
    assert parse_observed_name("annotated-me") is None
