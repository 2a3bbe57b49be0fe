"""CCD label arithmetic and local views: exact values on constructed inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spml.errors import SpmlError
from spml.pseudolabels.ccd import (
    adaptive_view_threshold,
    clip_probabilities,
    debias,
    early_stop_epoch,
    entropy,
    estimate_clip_bias,
    mix_labels,
    threshold_for_mean_views,
)
from spml.methods.ccd.views import (
    boxes_array,
    cam_box,
    crop_resized,
    expand_box,
    frame_offset,
    grid_boxes,
    max_over_views,
)


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_clip_probabilities_is_scaled_softmax():
    sims = np.array([[0.30, 0.20, 0.10]], dtype=np.float16)
    p = clip_probabilities(sims, 100.0)
    expected = np.exp([30.0, 20.0, 10.0]) / np.exp([30.0, 20.0, 10.0]).sum()
    np.testing.assert_allclose(p[0], expected, rtol=1e-2)  # float16 input rounding
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)


def test_bias_exact_values_and_entropy_filter():
    # Three classes. Confident rows (entropy < 0.5 nats): class 0 top-1 twice (0.9, 0.95),
    # class 1 once (0.92). The flat row is above the entropy threshold and must be ignored.
    probs = np.array(
        [
            [0.90, 0.05, 0.05],
            [0.95, 0.03, 0.02],
            [0.04, 0.92, 0.04],
            [0.34, 0.33, 0.33],
        ]
    )
    assert entropy(probs[:3]).max() < 0.5 < entropy(probs[3:]).min()
    result = estimate_clip_bias(probs, entropy_threshold=0.5)
    mean_known = (0.925 + 0.92) / 2
    np.testing.assert_allclose(result.bias, [0.925, 0.92, mean_known])
    assert result.counts.tolist() == [2, 1, 0]
    assert result.fallback == [2]
    assert result.num_confident == 3 and result.num_images == 4
    report = result.to_dict(["a", "b", "c"])
    assert report["fallback_classes"] == ["c"] and report["top1_counts"]["a"] == 2


def test_no_confident_prediction_is_a_clear_error():
    with pytest.raises(SpmlError, match="entropy_threshold"):
        estimate_clip_bias(np.full((4, 3), 1 / 3), entropy_threshold=0.5)


def test_debias_floor_and_clipping_order():
    bias = np.array([0.5, 1.0])
    out = debias(np.array([[0.4, 0.001], [0.7, 0.9]]), bias, floor=0.0125)
    np.testing.assert_allclose(out, [[0.8, 0.0125], [1.4, 0.9]], rtol=1e-6)  # unclipped, floored
    mixed = mix_labels(np.clip(out, 0, 1), out, alpha=0.4)
    np.testing.assert_allclose(mixed, [[0.8, 0.0125], [1.0, 0.9]], rtol=1e-6)
    with pytest.raises(SpmlError):
        mix_labels(out, out, alpha=1.5)


def test_threshold_for_mean_views_is_exact():
    rng = np.random.default_rng(0)
    probs = rng.random((50, 7))
    for target in (1.0, 2.5, 4.0):
        t = threshold_for_mean_views(probs, target)
        assert (probs > t).sum() == round(target * 50)


def test_adaptive_threshold_reaches_its_target_mean_on_a_synthetic_set():
    # 3000 images x 40 classes: about 14 classes per image pass the code's start 0.05, and the count
    # falls smoothly as the threshold rises; the code's rule must land the mean in (4, 6).
    rng = np.random.default_rng(1)
    probs = rng.beta(0.4, 2.0, size=(3000, 40))
    assert (probs >= 0.05).sum(axis=1).mean() > 10
    found = adaptive_view_threshold(probs, bound=4, start=0.05, step=0.001, block=100, seed=0)
    assert found.reached and 4 < found.block_mean < 6
    assert 4 < (probs >= found.threshold).sum(axis=1).mean() < 6  # over the whole set, not only the block
    assert found.threshold == pytest.approx(0.05 + 0.001 * found.steps)
    # A wider target (figure 6a: bound 10) stops earlier, at a lower threshold.
    ten = adaptive_view_threshold(probs, bound=10, seed=0)
    assert ten.reached and 10 < (probs >= ten.threshold).sum(axis=1).mean() < 12 and ten.threshold < found.threshold


def test_adaptive_threshold_hand_computed_and_unreachable():
    # One block of 2 images, window (1, 3). At 0.1 both images count 3 classes: mean 3 is outside,
    # raise. At 0.2 the two 0.15s drop out: mean 2 is inside, stop after one step.
    probs = np.array([[0.15, 0.3, 0.5], [0.9, 0.15, 0.25]])
    found = adaptive_view_threshold(probs, bound=1, start=0.1, step=0.1, block=2)
    assert found.reached and found.steps == 1 and found.threshold == pytest.approx(0.2) and found.block_mean == 2
    # Already below the window at the start: raising cannot help, the rule stops and says so.
    low = adaptive_view_threshold(probs, bound=5, start=0.1, step=0.1, block=2)
    assert not low.reached and low.steps == 0 and low.threshold == pytest.approx(0.1)


def test_frame_offset_maps_the_codes_640_frame_to_original_pixels():
    # 80 px in the 640 x 640 squashed frame of a 480 x 1280 (H x W) image: 160 px across, 60 down.
    assert frame_offset(80, (480, 1280), 640) == (160, 60)
    assert frame_offset(80, (480, 1280), None) == 80
    assert expand_box((600, 200, 700, 300), (160, 60), (480, 1280)) == (440, 140, 860, 360)


def test_early_stop_at_first_gradient_minimum():
    # gradients: 10, 5, 2, 3 -> g rises at epoch 4 (0-based), after the minimum at epoch 3.
    assert early_stop_epoch([50, 60, 65, 67, 70, 71]) == 4
    assert early_stop_epoch([50, 60, 65]) is None
    assert early_stop_epoch([50, 60, 65, 69]) is None


def test_cam_box_finds_object():
    # A 14 x 14 CAM of a 448 x 336 (H x W) image whose object spans rows 8-11, cols 2-5 of the map.
    cam = torch.zeros(14, 14)
    cam[8:12, 2:6] = 1.0
    cam += 0.05 * torch.rand(14, 14, generator=torch.Generator().manual_seed(0))
    h, w = 448, 336
    obj = (2 * w // 14, 8 * h // 14, 6 * w // 14, 12 * h // 14)
    box = cam_box(cam, (h, w), threshold=0.5, offset=0)
    assert iou(box, obj) > 0.8
    # With the offset the box grows by 80 on each side unless clipped by the image border.
    big = cam_box(cam, (h, w), threshold=0.5, offset=80)
    assert big[0] == max(0, box[0] - 80) and big[3] == min(h, box[3] + 80)


def test_cam_box_flat_map_is_whole_image():
    assert cam_box(torch.ones(7, 7), (30, 40), threshold=0.95, offset=80) == (0, 0, 40, 30)


def test_cam_box_on_image_smaller_than_offset_is_clipped_to_it():
    # A CAM peaked near the bottom-right corner of a 24 x 32 (H x W) image.
    cam = torch.zeros(7, 7)
    cam[5, 6] = 1.0
    assert cam_box(cam, (24, 32), threshold=0.95, offset=0) == (29, 18, 32, 19)
    # The paper's 80-px offset exceeds the image on every side: the view is the whole image.
    assert cam_box(cam, (24, 32), threshold=0.95, offset=80) == (0, 0, 32, 24)
    # A smaller offset is clipped only on the sides it overruns (right, bottom).
    assert cam_box(cam, (24, 32), threshold=0.95, offset=8) == (21, 10, 32, 24)


def test_expand_box_clips_small_images():
    assert expand_box((10, 5, 20, 15), 80, (24, 32)) == (0, 0, 32, 24)
    assert expand_box((100, 100, 120, 130), 80, (480, 640)) == (20, 20, 200, 210)
    x0, y0, x1, y1 = expand_box((50, 50, 50, 50), 0, (10, 10))  # outside: still a valid pixel
    assert 0 <= x0 < x1 <= 10 and 0 <= y0 < y1 <= 10


def test_grid_boxes_tile_the_image():
    boxes = grid_boxes((100, 90), 3, 3)
    assert len(boxes) == 9
    assert boxes[0] == (0, 0, 30, 33) and boxes[-1] == (60, 67, 90, 100)
    area = sum((b[2] - b[0]) * (b[3] - b[1]) for b in boxes)
    assert area == 100 * 90
    tiny = grid_boxes((2, 2), 3, 3)  # fewer pixels than cells: no empty crop
    assert all(b[2] > b[0] and b[3] > b[1] for b in tiny)
    with pytest.raises(SpmlError):
        grid_boxes((10, 10), 0, 3)


def test_crop_resized_keeps_aspect():
    image = torch.randint(0, 256, (3, 120, 200), dtype=torch.uint8)
    crop = crop_resized(image, (20, 10, 120, 60), long_side=64)
    assert crop.dtype == torch.uint8 and tuple(crop.shape) == (3, 32, 64)


def test_max_over_views_and_boxes_array():
    scores = np.array([[0.1, 0.7], [0.6, 0.2], [0.3, 0.3]])
    local, has_view = max_over_views(scores, np.array([0, 0, 2]), num_images=3)
    np.testing.assert_allclose(local, [[0.6, 0.7], [0, 0], [0.3, 0.3]])
    assert has_view.tolist() == [True, False, True]
    arr = boxes_array([0, 2], [(1, 2, 3, 4), (5, 6, 7, 8)])
    assert arr.shape == (2, 5) and arr[1].tolist() == [2, 5, 6, 7, 8]
