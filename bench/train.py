"""Benchmark: plain Keras (the first notebook's recipe) against each training preset.

Trains on real MNIST in this one process and prints one markdown table: preset, epochs, fit
seconds (median of the repeats), the fit time as a multiple of plain Keras's in the same run
(median over median), test accuracy (mean; min-max when repeated), and the goal.

    .venv/bin/python bench/train.py --source ../shared/datasets/mnist
    .venv/bin/python bench/train.py --presets seed_mlp,fast_mlp --repeats 3
    .venv/bin/python bench/train.py --presets cnn --repeats 3 --verbose   # logs each epoch
    .venv/bin/python bench/train.py --epochs 1            # a quick smoke test

The plain-Keras row is written inline as a user would (keras.Sequential, model.fit on the raw
arrays with validation_split=0.1). It runs first: the library turns on TensorFlow's op
determinism for reproducible CPU runs, a process-wide switch that would also apply to it.
Presets go through ``mnist_tasks.train.fit_arrays``, the fit path of the train stage (without
the store and checkpoints), on the same data split the way the preprocess stage splits it.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mnist_tasks.config import MNIST_FILES, PRESET_NAMES, train_config  # noqa: E402

# What each row should reach: (mean test accuracy, lowest test accuracy of the repeats or
# None, median fit time as a multiple of plain Keras's median in the same run or None).
GOALS: dict[str, tuple[float, float | None, float | None]] = {
    "plain keras": (0.975, 0.975, None),
    "seed_mlp": (0.975, 0.975, 1.0),
    "seed_wide_mlp": (0.975, 0.975, None),
    "fast_mlp": (0.975, 0.975, 0.5),
    "cnn": (0.9955, 0.9955, 6.0),
    "cnn_best": (0.9965, 0.996, 15.0),
    "mlp_plus": (0.985, None, 2.0),
}


def load_mnist(source: Path) -> dict[str, np.ndarray]:
    """The four MNIST arrays (uint8) from a folder of IDX .gz files."""
    from mnist_tasks.idx import decompress, parse_idx

    arrays = {}
    for name, role in (("x_train", "train_images"), ("y_train", "train_labels"),
                       ("x_test", "test_images"), ("y_test", "test_labels")):
        path = source / MNIST_FILES[role]
        if not path.is_file():
            sys.exit(f"bench: {path} not found (give --source, the MNIST folder)")
        arrays[name] = parse_idx(decompress(path.read_bytes(), source=str(path)),
                                 source=str(path))
    return arrays


def plain_keras(raw: dict[str, np.ndarray], epochs: int, seed: int) -> tuple[float, float]:
    """The first notebook, as a user writes it. Returns (fit seconds, test accuracy)."""
    import keras

    keras.utils.set_random_seed(seed)
    x_train = raw["x_train"].astype("float32") / 255.0
    x_test = raw["x_test"].astype("float32") / 255.0
    y_train = keras.utils.to_categorical(raw["y_train"], 10)
    model = keras.Sequential([
        keras.Input(shape=(28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=128, validation_split=0.1, verbose=0)
    seconds = time.perf_counter() - start
    accuracy = float(np.mean(model.predict(x_test, verbose=0).argmax(1) == raw["y_test"]))
    return seconds, accuracy


def library_preset(raw: dict[str, np.ndarray], preset: str, epochs: int | None,
                   seed: int) -> tuple[int, float, float]:
    """One preset through the library's fit path. Returns (epochs run, seconds, accuracy)."""
    from mnist_tasks.artifacts import predict_classes
    from mnist_tasks.preprocess import split_indices
    from mnist_tasks.train import fit_arrays

    cfg = train_config(preset, epochs=epochs, seed=seed)
    x = raw["x_train"].astype(np.float32) * np.float32(1 / 255)
    train_idx, val_idx = split_indices(len(x), cfg.val_fraction, seed)
    fit = fit_arrays(cfg, x[train_idx], raw["y_train"][train_idx], x[val_idx],
                     raw["y_train"][val_idx])
    x_test = raw["x_test"].astype(np.float32) * np.float32(1 / 255)
    accuracy = float(np.mean(predict_classes(fit.model, x_test) == raw["y_test"]))
    return fit.epochs_run, fit.fit_seconds, accuracy


def _goal(name: str, ratio: float | None, accuracies: list[float],
          epochs_override: bool) -> str:
    mean_target, min_target, max_ratio = GOALS[name]
    if min_target == mean_target:
        text = f"every run ≥ {mean_target:.2%}" if len(accuracies) > 1 else f"≥ {mean_target:.2%}"
    else:
        text = f"mean ≥ {mean_target:.2%}"
        if min_target is not None:
            text += f", none < {min_target:.2%}"
    if max_ratio is not None:
        text += f" at ≤ {max_ratio:g}× plain"
    if epochs_override:
        return text + " (shortened run: not judged)"
    met = statistics.mean(accuracies) >= mean_target and (
        min_target is None or min(accuracies) >= min_target)
    if max_ratio is not None:
        met = met and ratio is not None and ratio <= max_ratio
    return f"{text} {'✓' if met else '✗'}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/datasets/mnist"),
                        help="folder with the four MNIST IDX .gz files")
    parser.add_argument("--presets", default=",".join(PRESET_NAMES),
                        help=f"comma-separated presets (default: {','.join(PRESET_NAMES)})")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row (default 1)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override every row's epochs (for smoke tests)")
    parser.add_argument("--limit", type=int, default=None,
                        help="train on the first N training images only (for smoke tests)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-Keras row")
    parser.add_argument("--verbose", action="store_true", help="log each epoch")
    args = parser.parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = sorted(set(presets) - set(PRESET_NAMES))
    if unknown or args.repeats < 1:
        parser.error(f"unknown presets {unknown}" if unknown else "--repeats must be >= 1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")

    raw = load_mnist(args.source)
    if args.limit:
        raw["x_train"], raw["y_train"] = raw["x_train"][:args.limit], raw["y_train"][:args.limit]
    rows: list[tuple[str, int, list[float], list[float]]] = []
    if not args.no_plain:
        epochs = args.epochs or 10
        runs = [plain_keras(raw, epochs, args.seed + r) for r in range(args.repeats)]
        rows.append(("plain keras", epochs, [s for s, _ in runs], [a for _, a in runs]))
        print(f"plain keras: {runs}", file=sys.stderr)
    for preset in presets:
        results = [library_preset(raw, preset, args.epochs, args.seed + r)
                   for r in range(args.repeats)]
        rows.append((preset, results[0][0], [s for _, s, _ in results],
                     [a for _, _, a in results]))
        print(f"{preset}: {results}", file=sys.stderr)

    import keras

    from mnist_tasks.runtime import describe_devices

    print(f"\nMNIST training on {describe_devices().describe()}, Keras {keras.__version__} "
          f"({keras.backend.backend()}), {args.repeats} run(s) per row\n")
    shortened = args.epochs is not None or args.limit is not None
    plain = statistics.median(rows[0][2]) if not args.no_plain else None
    print("| preset | epochs | fit seconds | × plain | test accuracy | goal |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, epochs, seconds, accs in rows:
        median = statistics.median(seconds)
        ratio = median / plain if plain else None
        # A mean of several runs on 10,000 images each needs a third decimal: 99.647 % rounds
        # to 99.65 % but misses a goal of 99.65 %.
        acc = (f"{accs[0]:.2%}" if len(accs) == 1 else
               f"{statistics.mean(accs):.3%} ({min(accs):.2%}–{max(accs):.2%})")
        print(f"| {name} | {epochs} | {median:.1f} | "
              f"{'-' if ratio is None else f'{ratio:.2f}'} | {acc} | "
              f"{_goal(name, ratio, accs, shortened)} |")
    seeds = [args.seed + r for r in range(args.repeats)]
    print(f"\nSeeds {', '.join(map(str, seeds))} (run r: seed {args.seed} + r): each sets the "
          "weights, the batch order, the distortions and, for a preset, the validation split "
          "(`split_indices(n, val_fraction, seed)`, 10 % of the training set; plain Keras: "
          "`validation_split=0.1`, the last 10 %). Every choice of the recipes was made on "
          "validation splits; here each trained model meets the 10,000 test images once.")
    for name, _, seconds, accs in rows:
        runs = ", ".join(f"seed {s}: {a:.2%} in {t:.1f} s"
                         for s, a, t in zip(seeds, accs, seconds, strict=True))
        print(f"- {name}: {runs}")


if __name__ == "__main__":
    main()
