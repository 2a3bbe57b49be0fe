"""``method_params.vlm_interpolation``: the CLIP inputs resampled as VLPL's and AEVLP's releases did.

Both releases resized the CLIP views with torchvision's ``transforms.Resize`` (bilinear on PIL
images); CLIP's own preprocessing is bicubic. With ``bilinear`` spml's squash gives the release's
pixels to within one grey level (exactly when enlarging, e.g. AEVLP's tiles); bicubic differs by
tens of levels on a noisy image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from spml.api import load_config
from spml.errors import SpmlError
from spml.methods.vlpl import VlplParams
from spml.training import build_dataclass
from spml.vlm.model import IMAGENET_MEAN, IMAGENET_STD, Preprocess, preprocessing_for

NATIVE = Preprocess((48, 48), (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), interpolation="bicubic", resize_mode="shortest")


def release_view(pixels: np.ndarray, size: int) -> torch.Tensor:
    """The view AEVLP's ``tx['pl']`` (and VLPL's PIL resize) makes of a uint8 H x W x 3 image."""
    tx = transforms.Compose([
        transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    ])
    return tx(Image.fromarray(pixels))


@pytest.mark.parametrize(("shape", "size", "levels"), [((12, 12), 48, 1e-3), ((37, 29), 48, 1e-3), ((300, 200), 64, 1.1)])
def test_bilinear_squash_gives_the_releases_pixels(shape: tuple[int, int], size: int, levels: float) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    ref = release_view(pixels, size)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255  # normalised units -> grey levels
    native = NATIVE.with_size(size)
    bilinear = preprocessing_for(native, "squash", interpolation="bilinear")(image)
    bicubic = preprocessing_for(native, "squash")(image)
    assert float(((bilinear - ref) * std).abs().max()) <= levels
    assert float(((bicubic - ref) * std).abs().max()) > 10


def test_interpolation_defaults_to_the_models_and_is_checked() -> None:
    assert preprocessing_for(NATIVE, "squash").interpolation == "bicubic"
    assert preprocessing_for(NATIVE, "native", interpolation="bilinear").interpolation == "bilinear"
    with pytest.raises(SpmlError, match="interpolation 'nearest'"):
        preprocessing_for(NATIVE, "squash", interpolation="nearest")
    with pytest.raises(SpmlError, match="method_params.vlm_interpolation"):
        build_dataclass(VlplParams, {"vlm_interpolation": "nearest"}, "method_params.")


@pytest.mark.parametrize("name", ["vlpl", "vlpl_voc", "vlpl_nuswide", "vlpl_cub", "gpr_voc", "gpr_coco", "gpr_nuswide", "gpr_cub"])
def test_release_configs_resample_bilinear(name: str) -> None:
    assert load_config(name).method_params["vlm_interpolation"] == "bilinear"
