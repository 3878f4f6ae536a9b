"""Time to accuracy for training presets with Keras on JAX, on a GPU when there is one.

Needs only keras, jax and numpy (no TensorFlow, no Airflow): it sets ``KERAS_BACKEND=jax``
before Keras loads, and the library code it uses (``mnist_tasks.train.fit_arrays``,
``mnist_tasks.models``, ``mnist_tasks.idx``) imports nothing else. On a GPU the library turns
on XLA and bfloat16 mixed precision and uses a 4x larger batch (see ``runtime.resolve_runtime``).
After every epoch it measures the test accuracy and prints one line; at the end of each preset
it prints the seconds from the start of ``fit`` until the test accuracy first reached each of
``--targets``. This is a time-to-accuracy trace, not a judged figure: the test accuracy is read
after every epoch (bench/train.py reports the judged ones).

    pip install "jax[cuda12]" keras numpy
    PYTHONPATH=. python bench/gpu_train.py --source ../shared/datasets/mnist   # cnn, cnn_best
    PYTHONPATH=. python bench/gpu_train.py --presets cnn,cnn_best,mlp_plus --targets 0.985,0.995
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
    parser.add_argument("--presets", default="cnn,cnn_best",
                        help="comma-separated presets, trained one after the other")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the preset's (scaled up on a GPU)")
    parser.add_argument("--targets", default="0.995,0.9965",
                        help="comma-separated test accuracies to time (default 0.995,0.9965)")
    parser.add_argument("--limit", type=int, default=None,
                        help="train on the first N training images only (smoke tests)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    from mnist_tasks.config import PRESET_NAMES

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = sorted(set(presets) - set(PRESET_NAMES))
    if unknown or not presets:
        parser.error(f"--presets: unknown {unknown}; choose from {', '.join(PRESET_NAMES)}")
    try:
        targets = sorted(float(t) for t in args.targets.split(","))
    except ValueError:
        parser.error(f"--targets: not a comma-separated list of numbers: {args.targets!r}")

    import logging

    import keras

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if keras.backend.backend() != "jax":
        sys.exit(f"bench/gpu_train.py: Keras runs on {keras.backend.backend()!r}, not jax")

    raw = load_mnist(args.source)
    if args.limit:
        raw["x_train"], raw["y_train"] = raw["x_train"][:args.limit], raw["y_train"][:args.limit]
    for preset in presets:
        time_to_accuracy(raw, preset, args.epochs, args.batch_size, args.seed, targets)
    print(f"tensorflow imported: {'tensorflow' in sys.modules}")


def time_to_accuracy(raw: dict[str, np.ndarray], preset: str, epochs: int | None,
                     batch_size: int | None, seed: int, targets: list[float]) -> None:
    """Train ``preset``, printing the test accuracy after each epoch and the time to each target."""
    import keras

    from mnist_tasks.artifacts import predict_classes
    from mnist_tasks.config import train_config
    from mnist_tasks.preprocess import split_indices
    from mnist_tasks.runtime import resolve_runtime
    from mnist_tasks.train import fit_arrays

    cfg = train_config(preset, epochs=epochs, batch_size=batch_size, seed=seed)
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
            print(f"{preset} epoch {epoch + 1}: {elapsed:7.1f} s  test accuracy {acc:.4f}",
                  flush=True)

    fit = fit_arrays(cfg, x[train_idx], raw["y_train"][train_idx], x[val_idx],
                     raw["y_train"][val_idx], runtime=runtime, callbacks=[TestAccuracy()])
    final = timeline[-1][2] if timeline else float("nan")
    print(f"\n{preset} on {runtime.device.describe()} (Keras {keras.__version__}, jax; "
          f"batch {runtime.batch_size}, jit={runtime.jit_compile}, "
          f"bf16={runtime.mixed_precision}): {fit.epochs_run} epochs in {fit.fit_seconds:.1f} s, "
          f"final test accuracy {final:.4f}")
    for target in targets:
        reached = next(((e, t) for e, t, a in timeline if a >= target), None)
        print(f"{preset}: time to {target:.2%} test accuracy: "
              + (f"{reached[1]:.1f} s (epoch {reached[0]})" if reached else "not reached"))


if __name__ == "__main__":
    main()
