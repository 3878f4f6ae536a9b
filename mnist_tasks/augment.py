"""Random distortions of digit images in NumPy, for the training input pipeline.

Each image gets its own small rotation, zoom, shift and elastic distortion (a smooth random
displacement field, as in Simard et al. 2003), applied by sampling it bilinearly at the moved
pixel positions; what falls outside the image is 0, the background. A batch of 256 28x28
images takes a few milliseconds, so the model itself stays only the network.

Usage::

    rng = np.random.default_rng(0)
    warp = Distortion(rotation_degrees=10, zoom=0.1, shift_pixels=2, elastic_pixels=1.0)
    batch = warp.apply(images, rng)        # images: float32 (N, rows, cols)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# The elastic field is drawn on a coarse grid of ELASTIC_GRID x ELASTIC_GRID knots and
# interpolated bilinearly to every pixel: smooth like a Gaussian-filtered field, at the cost of
# one small matrix product per batch.
ELASTIC_GRID = 4


@dataclass(frozen=True)
class Distortion:
    """The largest distortion of each kind; 0 turns a kind off.

    Attributes:
        rotation_degrees: rotation drawn uniformly in [-r, r] degrees, about the centre.
        zoom: zoom factor drawn uniformly in [1 - s, 1 + s].
        shift_pixels: shift along each axis drawn uniformly in [-p, p] pixels (sub-pixel).
        elastic_pixels: standard deviation, in pixels, of the elastic displacement at each knot.
    """

    rotation_degrees: float = 0.0
    zoom: float = 0.0
    shift_pixels: float = 0.0
    elastic_pixels: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rotation_degrees", "zoom", "shift_pixels", "elastic_pixels"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Distortion.{name} must be a finite number >= 0, got {value!r}")
        if self.zoom >= 1:
            raise ValueError(f"Distortion.zoom must be < 1, got {self.zoom!r}")

    @property
    def active(self) -> bool:
        """Whether any distortion is on."""
        return any((self.rotation_degrees, self.zoom, self.shift_pixels, self.elastic_pixels))

    def apply(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A distorted float32 copy of ``images``, a fresh draw per image.

        Args:
            images: shape (N, rows, cols), any real dtype, background 0.
            rng: the generator the draws come from (so a run is reproducible).

        Returns:
            float32 images of the same shape.

        Raises:
            ValueError: if ``images`` is not a stack of 2-D images.
        """
        if images.ndim != 3:
            raise ValueError(f"Distortion.apply needs images of shape (N, rows, cols), "
                             f"got {images.shape}")
        n, rows, cols = images.shape
        if n == 0 or not self.active:
            return images.astype(np.float32, copy=True)
        grid = _pixel_grid(rows, cols)  # (2, P): row and column of each pixel, centred
        angle = np.deg2rad(rng.uniform(-self.rotation_degrees, self.rotation_degrees, n))
        factor = rng.uniform(1 - self.zoom, 1 + self.zoom, n)
        shift = rng.uniform(-self.shift_pixels, self.shift_pixels, (n, 2, 1))
        # Where each output pixel samples the input: the inverse of rotate-then-zoom.
        cos, sin = np.cos(angle) / factor, np.sin(angle) / factor
        inverse = np.stack([np.stack([cos, -sin], 1), np.stack([sin, cos], 1)], 1)  # (N, 2, 2)
        source = (inverse.astype(np.float32) @ grid) - shift.astype(np.float32)  # (N, 2, P)
        if self.elastic_pixels:
            knots = rng.normal(0, self.elastic_pixels, (n, 2, ELASTIC_GRID * ELASTIC_GRID))
            source += knots.astype(np.float32) @ _knot_weights(rows, cols)
        source[:, 0] += (rows - 1) / 2
        source[:, 1] += (cols - 1) / 2
        return _bilinear(np.asarray(images, np.float32), source).reshape(n, rows, cols)


@lru_cache(maxsize=8)
def _pixel_grid(rows: int, cols: int) -> np.ndarray:
    r, c = np.meshgrid(np.arange(rows) - (rows - 1) / 2, np.arange(cols) - (cols - 1) / 2,
                       indexing="ij")
    return np.stack([r.ravel(), c.ravel()]).astype(np.float32)


@lru_cache(maxsize=8)
def _knot_weights(rows: int, cols: int) -> np.ndarray:
    """(K*K, P): the bilinear weight of each coarse-grid knot at each pixel."""

    def axis(size: int) -> np.ndarray:  # (K, size): hat functions over the knots
        pos = np.linspace(0, ELASTIC_GRID - 1, size)
        return np.maximum(0, 1 - np.abs(pos[None, :] - np.arange(ELASTIC_GRID)[:, None]))

    w = axis(rows)[:, None, :, None] * axis(cols)[None, :, None, :]  # (K, K, rows, cols)
    return w.reshape(ELASTIC_GRID * ELASTIC_GRID, rows * cols).astype(np.float32)


def _bilinear(images: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Sample (N, rows, cols) ``images`` at (N, 2, P) positions; 0 outside. Returns (N, P)."""
    n, rows, cols = images.shape
    width = cols + 2
    padded = np.zeros((n, rows + 2, width), np.float32)  # a ring of zeros for "outside"
    padded[:, 1:-1, 1:-1] = images
    flat = padded.ravel()
    # In place where it can be: this runs once per training batch, beside the model's steps.
    r = np.clip(source[:, 0], -1, rows)
    r += 1  # in the padded images' coordinates
    c = np.clip(source[:, 1], -1, cols)
    c += 1
    r0 = np.minimum(np.floor(r), rows)
    c0 = np.minimum(np.floor(c), cols)
    r -= r0  # the fractions
    c -= c0
    r0 *= width
    r0 += c0
    # One flat index per output pixel into the whole padded batch: four plain gathers.
    at = r0.astype(np.int32)
    at += (np.arange(n, dtype=np.int32) * ((rows + 2) * width))[:, None]
    upper_left = flat[at]
    at += 1
    upper_right = flat[at]
    at += width
    lower_right = flat[at]
    at -= 1
    lower_left = flat[at]
    upper_right -= upper_left
    upper_right *= c
    upper_left += upper_right  # the upper row's mix
    lower_right -= lower_left
    lower_right *= c
    lower_left += lower_right  # the lower row's mix
    lower_left -= upper_left
    lower_left *= r
    upper_left += lower_left
    return upper_left
