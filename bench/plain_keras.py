"""The first notebook's recipe in plain Keras, in a fresh process: the baseline.

784-128-64-10 MLP, ReLU, dropout 0.3, Adam, categorical cross-entropy, 10 epochs, batch 128,
validation_split 0.1 (the code is ``plain_keras`` in bench/train.py). Prints one JSON line:
fit seconds, wall seconds (process start to end, TensorFlow import included), test accuracy.

    .venv/bin/python bench/plain_keras.py --source ../shared/datasets/mnist
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from train import load_mnist, plain_keras  # noqa: E402  (bench/ is on sys.path when run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/datasets/mnist"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    fit_seconds, accuracy = plain_keras(load_mnist(args.source), args.epochs, args.seed)
    print(json.dumps({
        "fit_seconds": round(fit_seconds, 2),
        "wall_seconds": round(time.perf_counter() - START, 2),
        "test_accuracy": round(accuracy, 4),
        "epochs": args.epochs,
    }))


if __name__ == "__main__":
    main()
