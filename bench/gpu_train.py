"""Time to accuracy for the cnn preset with Keras on JAX, on a GPU when there is one.

Needs only keras, jax and numpy (no TensorFlow, no Airflow): it sets ``KERAS_BACKEND=jax``
before Keras loads, and the library code it uses (``mnist_tasks.train.fit_arrays``,
``mnist_tasks.models``, ``mnist_tasks.idx``) imports nothing else. On a GPU the library turns
on XLA and bfloat16 mixed precision and uses a 4x larger batch (see ``runtime.resolve_runtime``).
After every epoch it measures the test accuracy and prints one line; at the end it prints the
seconds from the start of ``fit`` until the test accuracy first reached ``--target``.

    pip install "jax[cuda12]" keras numpy
    PYTHONPATH=. python bench/gpu_train.py --source ../shared/datasets/mnist
    PYTHONPATH=. python bench/gpu_train.py --epochs 1 --limit 2000     # a CPU smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ["KERAS_BACKEND"] = "jax"  # before Keras is imported, here or by the library
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def load_mnist(source: Path) -> dict[str, np.ndarray]:
    """The four MNIST arrays (uint8) from a folder of IDX .gz files."""
    from mnist_tasks.config import MNIST_FILES
    from mnist_tasks.idx import decompress, parse_idx

    out = {}
    for name, role in (("x_train", "train_images"), ("y_train", "train_labels"),
                       ("x_test", "test_images"), ("y_test", "test_labels")):
        path = source / MNIST_FILES[role]
        if not path.is_file():
            sys.exit(f"bench/gpu_train.py: {path} not found (give --source, the MNIST folder)")
        out[name] = np.array(parse_idx(decompress(path.read_bytes(), source=str(path)),
                                       source=str(path)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/datasets/mnist"))
    parser.add_argument("--preset", default="cnn")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the preset's (scaled up on a GPU)")
    parser.add_argument("--target", type=float, default=0.995, help="test accuracy to reach")
    parser.add_argument("--limit", type=int, default=None,
                        help="train on the first N training images only (smoke tests)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    import logging

    import keras

    from mnist_tasks.artifacts import predict_classes
    from mnist_tasks.config import train_config
    from mnist_tasks.preprocess import split_indices
    from mnist_tasks.runtime import resolve_runtime
    from mnist_tasks.train import fit_arrays

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if keras.backend.backend() != "jax":
        sys.exit(f"bench/gpu_train.py: Keras runs on {keras.backend.backend()!r}, not jax")

    raw = load_mnist(args.source)
    if args.limit:
        raw["x_train"], raw["y_train"] = raw["x_train"][:args.limit], raw["y_train"][:args.limit]
    cfg = train_config(args.preset, epochs=args.epochs, batch_size=args.batch_size,
                       seed=args.seed)
    x = raw["x_train"].astype(np.float32) / 255
    train_idx, val_idx = split_indices(len(x), cfg.val_fraction, cfg.seed)
    x_test = raw["x_test"].astype(np.float32) / 255
    y_test = raw["y_test"].astype(np.int64)

    runtime = resolve_runtime(cfg)
    timeline: list[tuple[int, float, float]] = []  # (epoch, seconds since fit began, accuracy)
    started: dict[str, float] = {}

    class TestAccuracy(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            started["t"] = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            elapsed = time.perf_counter() - started["t"]  # before the extra test pass
            acc = float(np.mean(predict_classes(self.model, x_test, 4096) == y_test))
            timeline.append((epoch + 1, elapsed, acc))
            print(f"epoch {epoch + 1}: {elapsed:7.1f} s  test accuracy {acc:.4f}", flush=True)

    fit = fit_arrays(cfg, x[train_idx], raw["y_train"][train_idx], x[val_idx],
                     raw["y_train"][val_idx], runtime=runtime, callbacks=[TestAccuracy()])
    reached = next(((e, t) for e, t, a in timeline if a >= args.target), None)
    final = timeline[-1][2] if timeline else float("nan")
    print(f"\n{args.preset} on {runtime.device.describe()} (Keras {keras.__version__}, jax; "
          f"batch {runtime.batch_size}, jit={runtime.jit_compile}, "
          f"bf16={runtime.mixed_precision}): {fit.epochs_run} epochs in {fit.fit_seconds:.1f} s, "
          f"final test accuracy {final:.4f}")
    if reached:
        print(f"time to {args.target:.2%} test accuracy: {reached[1]:.1f} s (epoch {reached[0]})")
    else:
        print(f"time to {args.target:.2%} test accuracy: not reached")
    print(f"tensorflow imported: {'tensorflow' in sys.modules}")


if __name__ == "__main__":
    main()
