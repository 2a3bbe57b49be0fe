"""Shared pytest fixtures."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Tests marked ``cuda`` need a CUDA device and are skipped without one. SPML_TEST_CUDA_ON_CPU=1 runs
# them on the CPU instead (bf16 autocast on the CPU, gloo instead of NCCL), to check the tests
# themselves where no GPU is at hand; tests that only mean something on a GPU skip there.
CUDA_ON_CPU = os.environ.get("SPML_TEST_CUDA_ON_CPU") == "1"


@pytest.fixture
def cuda_device() -> torch.device:
    """The device of a ``cuda`` test: the GPU, or the CPU under SPML_TEST_CUDA_ON_CPU=1."""
    return torch.device("cuda") if torch.cuda.is_available() and not CUDA_ON_CPU else torch.device("cpu")


@dataclass(frozen=True)
class MicroClip:
    """A trained micro CLIP and the synthetic DATA_DIR it was trained on.

    ``data_dir`` is shared by the whole session: treat it as read-only and put caches under your
    own ``tmp_path`` (or copy the layout files, whose image paths are absolute).
    """

    data_dir: Path
    checkpoint: Path
    config: Path

    @property
    def spec(self) -> str:
        """The VLM spec to pass with ``checkpoint`` and ``config`` (``open_clip:micro-clip``)."""
        return f"open_clip:{self.config.stem}"


@pytest.fixture(scope="session")
def micro_clip(tmp_path_factory: pytest.TempPathFactory) -> MicroClip:
    """Train the micro CLIP once per session: 1,200 synthetic 32-px images of 8 classes, 100 steps.

    About 25-45 s on the 2-core development machine; train-split zero-shot mAP about 0.6 (chance 0.31).
    """
    from spml.data.synth import make_synthetic
    from spml.vlm.micro_clip import train_micro_clip

    root = tmp_path_factory.mktemp("micro_clip")
    data_dir = make_synthetic(root / "data", num_images=1200, image_size=32, num_classes=8, seed=0)
    checkpoint, config = train_micro_clip(
        data_dir, root / "model", steps=100, batch_size=128, seed=0, lr=3e-3, threads=1
    )
    return MicroClip(data_dir=Path(data_dir), checkpoint=checkpoint, config=config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that needs the micro CLIP, and skip ``cuda`` tests without a CUDA device.

    The session trains the micro CLIP first (25-45 s), so ``pytest -m "not slow"`` (the README's
    quick command) never trains one; the full suite runs them all.
    """
    skip_cuda = not (torch.cuda.is_available() or CUDA_ON_CPU)
    skip = pytest.mark.skip(reason="needs a CUDA device (SPML_TEST_CUDA_ON_CPU=1 runs it on the CPU)")
    for item in items:
        if "micro_clip" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        if skip_cuda and item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
