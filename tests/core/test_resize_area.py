"""LiteMedSAM's resize is OpenCV's INTER_AREA on uint8, bit for bit, at any size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sammed2d.preprocess import model_input, resize_area, resized_shape

cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless) is a test dependency")

FIXED_SIZES = [
    (512, 512),  # 2 x 2 blocks
    (512, 300),
    (768, 768),  # 3 x 3 blocks
    (1024, 600),
    (300, 420),  # the fixture's crop
    (155, 225),  # enlarging
    (39, 95),
    (12, 90),
    (256, 256),
    (2, 512),
    (1, 1),
]


def _image(rng, h, w, n):
    if n % 2:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:  # smooth content with flat areas, as a windowed CT slice
        yy, xx = np.mgrid[:h, :w]
        grey = np.clip(np.sin(xx / 7.0) * np.cos(yy / 5.0) * 300 + 128, 0, 255).astype(np.uint8)
        image = np.repeat(grey[..., None], 3, axis=2)
    return image[..., 0].copy() if n % 3 == 0 else image


def _cases():
    rng = np.random.default_rng(7)
    sizes = FIXED_SIZES + [tuple(int(v) for v in rng.integers(1, 800, 2)) for _ in range(60)]
    return [(_image(rng, h, w, n), resized_shape(h, w, 256)) for n, (h, w) in enumerate(sizes)]


@pytest.mark.parametrize(("image", "size"), _cases(), ids=lambda v: str(getattr(v, "shape", v)))
def test_matches_opencv_inter_area(image, size):
    expected = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    assert np.array_equal(resize_area(image, size), expected)


def test_any_target_size_shrinking_and_enlarging():
    rng = np.random.default_rng(3)
    tried = 0
    while tried < 40:
        h, w, dh, dw = (int(v) for v in rng.integers(1, 400, 4))
        if (dh > h) != (dw > w):
            continue  # one axis up and one down: never a longest-side resize
        tried += 1
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = cv2.resize(image, (dw, dh), interpolation=cv2.INTER_AREA)
        assert np.array_equal(resize_area(image, (dh, dw)), expected), (h, w, dh, dw)


def test_litemedsam_input_is_the_official_pipelines():
    """The official pipeline: cv2 INTER_AREA, min-max over the resized image, zero pad."""
    rng = np.random.default_rng(1)
    for h, w in [(512, 512), (155, 225), (300, 420), (97, 611)]:
        rgb = np.repeat(rng.integers(0, 256, (h, w, 1), dtype=np.uint8), 3, axis=2)
        rh, rw = resized_shape(h, w, 256)
        small = cv2.resize(rgb, (rw, rh), interpolation=cv2.INTER_AREA).astype(np.float32)
        small = (small - small.min()) / np.clip(small.max() - small.min(), 1e-8, None)
        expected = np.zeros((256, 256, 3), np.float32)
        expected[:rh, :rw] = small
        x, _ = model_input(rgb, "litemedsam", 256)
        assert torch.equal(x[0], torch.from_numpy(expected.transpose(2, 0, 1)))


def test_refuses_non_uint8():
    with pytest.raises(ValueError, match="expected uint8"):
        resize_area(np.zeros((4, 4), np.float32), (2, 2))
