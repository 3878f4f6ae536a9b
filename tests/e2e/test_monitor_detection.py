"""The production monitor on real MNIST: it flags the batches the champion does worse on, and
leaves clean ones alone.

A fast_mlp is trained for a few epochs on the real training set, its reference built
from the preprocess stage's validation split, and batches of 2,000 real test images are checked
with the shipped ``MonitorPolicy()``: a few shifts of the benchmark's REPORT set (never used to
tune the thresholds; ``bench/monitor_detection.py`` has the full set), and 20 clean batches.
Every batch 5 or more accuracy points below the benchmark must be flagged (WARN or ALARM); at
most one clean batch may be.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks import monitor
from mnist_tasks.config import MNIST_FILES, train_config

pytestmark = pytest.mark.slow

BATCH = 2000
DROP_POINTS = 5.0


def _read(mnist_dir: Path, role: str) -> np.ndarray:
    from mnist_tasks.idx import decompress, parse_idx

    path = mnist_dir / MNIST_FILES[role]
    return np.asarray(parse_idx(decompress(path.read_bytes(), source=str(path)),
                                source=str(path)))


def _affine(images: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Every image resampled through one 2x2 matrix about its centre (bilinear, background 0)."""
    from scipy import ndimage

    full = np.eye(3)
    full[1:, 1:] = matrix
    centre = np.array([0.0, 13.5, 13.5])
    out = ndimage.affine_transform(images.astype(np.float32), full,
                                   offset=centre - full @ centre, order=1, cval=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _shear(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = images.copy()
    left = rng.random(len(images)) < 0.5
    out[left] = _affine(images[left], np.array([[1.0, 0.0], [0.5, 1.0]]))
    out[~left] = _affine(images[~left], np.array([[1.0, 0.0], [-0.5, 1.0]]))
    return out


def _salt_pepper(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = images.copy()
    hit = rng.random(images.shape) < 0.1
    out[hit] = rng.choice(np.array([0, 255], np.uint8), size=int(hit.sum()))
    return out


def _invert_some(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = images.copy()
    which = rng.random(len(images)) < 0.1
    out[which] = 255 - images[which]
    return out


SHIFTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "zoom x0.75": lambda x, rng: _affine(x, np.eye(2) / 0.75),
    "shear ±0.5": _shear,
    "brightness +40": lambda x, rng: np.clip(x.astype(np.int16) + 40, 0, 255).astype(np.uint8),
    "salt and pepper 10 %": _salt_pepper,
    "10 % inverted": _invert_some,
}


@pytest.fixture(scope="module")
def setup(mnist_dir: Path) -> dict[str, Any]:
    """The trained model's Forward, its reference and benchmark accuracy, and the test set."""
    from mnist_tasks.preprocess import split_indices
    from mnist_tasks.train import fit_arrays

    x, y = _read(mnist_dir, "train_images"), _read(mnist_dir, "train_labels")
    cfg = train_config("fast_mlp", epochs=3)  # about 97 % in a few seconds
    train_idx, val_idx = split_indices(len(y), cfg.val_fraction, cfg.seed)
    fit = fit_arrays(cfg, x[train_idx].astype(np.float32) / 255, y[train_idx])
    forward = monitor.Forward(fit.model)
    x_test, y_test = _read(mnist_dir, "test_images"), _read(mnist_dir, "test_labels")
    benchmark = float((forward(x_test)[0].argmax(axis=1) == y_test).mean())
    ref = monitor.Reference.build(*forward(x[val_idx]), x[val_idx], benchmark_accuracy=benchmark)
    return {"forward": forward, "ref": ref, "benchmark": benchmark, "x": x_test, "y": y_test}


def _check(setup: dict[str, Any], seed: int,
           shift: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None
           ) -> tuple[float, monitor.BatchHealth]:
    """(accuracy points below the benchmark, health) of one batch of test images."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(setup["y"]), size=BATCH, replace=False)
    images = setup["x"][pick] if shift is None else shift(setup["x"][pick], rng)
    probs, emb = setup["forward"](images)
    accuracy = float((probs.argmax(axis=1) == setup["y"][pick]).mean())
    health = monitor.check_batch(setup["ref"], probs, emb, images, monitor.MonitorPolicy())
    return 100 * (setup["benchmark"] - accuracy), health


def test_the_model_is_a_usable_champion(setup: dict[str, Any]) -> None:
    assert setup["benchmark"] >= 0.96


def test_batches_the_model_does_worse_on_are_flagged(setup: dict[str, Any]) -> None:
    results = {name: _check(setup, 5000 + i, shift)
               for i, (name, shift) in enumerate(SHIFTS.items())}
    summary = {name: f"drop {drop:.2f}: {health.summary_line()}"
               for name, (drop, health) in results.items()}
    must = {name for name, (drop, _) in results.items() if drop >= DROP_POINTS}
    assert len(must) >= 3, summary  # the shifts must hurt, or the test shows nothing
    missed = {name for name in must if results[name][1].status == monitor.OK}
    assert not missed, summary


def test_at_most_one_of_twenty_clean_batches_is_flagged(setup: dict[str, Any]) -> None:
    flagged = []
    for seed in range(6000, 6020):
        drop, health = _check(setup, seed)
        assert abs(drop) < DROP_POINTS  # clean really is clean
        if health.status != monitor.OK:
            flagged.append(f"seed {seed}: {health.summary_line()}")
    assert len(flagged) <= 1, flagged
