"""The NumPy distortions of the training pipeline: geometry, ranges, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_tasks.augment import Distortion


def _blob(rows: int = 28, cols: int = 28, at: tuple[int, int] = (10, 18)) -> np.ndarray:
    """One image, 0 except a 3x3 square of ones centred at ``at``."""
    image = np.zeros((rows, cols), np.float32)
    image[at[0] - 1:at[0] + 2, at[1] - 1:at[1] + 2] = 1
    return image


def _centroid(image: np.ndarray) -> np.ndarray:
    r, c = np.indices(image.shape)
    return np.array([(r * image).sum(), (c * image).sum()]) / image.sum()


def test_no_distortion_is_an_exact_float32_copy() -> None:
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    out = Distortion().apply(x, np.random.default_rng(1))
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out, x.astype(np.float32))


def test_a_whole_pixel_shift_moves_the_image_and_fills_the_border_with_zeros() -> None:
    x = np.random.default_rng(0).random((200, 12, 12), dtype=np.float32) + 1
    out = Distortion(shift_pixels=3).apply(x, np.random.default_rng(2))
    # Every output pixel is a bilinear mix of input pixels or 0: within [0, max].
    assert out.min() >= 0 and out.max() <= x.max() + 1e-6
    # Some images lost a column or row to the zero border: the shift is real.
    assert (out == 0).any(axis=(1, 2)).sum() > 100


def test_rotation_turns_about_the_centre_by_at_most_the_limit() -> None:
    image = _blob()
    centre = np.array([13.5, 13.5])
    start = _centroid(image) - centre
    x = np.repeat(image[None], 300, axis=0)
    out = Distortion(rotation_degrees=20).apply(x, np.random.default_rng(3))
    angles = []
    for turned in out:
        moved = _centroid(turned) - centre
        assert np.linalg.norm(moved) == pytest.approx(np.linalg.norm(start), abs=0.05)
        angles.append(np.degrees(np.arctan2(moved[0], moved[1]) - np.arctan2(start[0], start[1])))
    assert max(np.abs(angles)) <= 20.05
    assert max(angles) > 15 and min(angles) < -15  # both ways, up to the limit
    np.testing.assert_allclose(out.sum(axis=(1, 2)), image.sum(), rtol=0.02)  # no ink lost


def test_zoom_scales_distances_from_the_centre_within_the_limit() -> None:
    image = _blob(at=(5, 5))
    centre = np.array([13.5, 13.5])
    start = np.linalg.norm(_centroid(image) - centre)
    x = np.repeat(image[None], 200, axis=0)
    out = Distortion(zoom=0.2).apply(x, np.random.default_rng(4))
    ratios = np.array([np.linalg.norm(_centroid(o) - centre) / start for o in out])
    assert ratios.min() >= 0.8 - 0.01 and ratios.max() <= 1.2 + 0.01
    assert ratios.min() < 0.85 and ratios.max() > 1.15


def test_elastic_distortion_is_smooth_and_small() -> None:
    x = np.repeat(_blob()[None], 100, axis=0)
    out = Distortion(elastic_pixels=1.0).apply(x, np.random.default_rng(5))
    moves = np.array([np.linalg.norm(_centroid(o) - _centroid(x[0])) for o in out])
    assert moves.mean() > 0.2  # it moves the blob
    assert moves.max() < 4  # but a few pixels at most: the digit stays a digit
    assert not np.array_equal(out[0], out[1])  # each image its own field


def test_draws_are_reproducible_from_the_generator() -> None:
    x = np.random.default_rng(0).random((20, 28, 28), dtype=np.float32)
    warp = Distortion(rotation_degrees=10, zoom=0.1, shift_pixels=2, elastic_pixels=1)
    a = warp.apply(x, np.random.default_rng(7))
    b = warp.apply(x, np.random.default_rng(7))
    c = warp.apply(x, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(("field", "value"), [
    ("rotation_degrees", -1.0), ("zoom", 1.0), ("shift_pixels", float("nan")),
    ("elastic_pixels", "1"),
])
def test_bad_limits_are_rejected_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"Distortion\.{field} must be"):
        Distortion(**{field: value})  # type: ignore[arg-type]


def test_only_stacks_of_two_dimensional_images_are_accepted() -> None:
    with pytest.raises(ValueError, match=r"needs images of shape \(N, rows, cols\)"):
        Distortion(zoom=0.1).apply(np.zeros((4, 784), np.float32), np.random.default_rng(0))
