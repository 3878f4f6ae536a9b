"""Scoring speed: the stage against a plain ``model.predict``, and 10,000 PNGs end to end.

A ``fast_mlp`` model is trained for one epoch on 12,000 real MNIST training images and
registered as the champion of a fresh ``file://`` store (not timed). Then, in this process,
on the 10,000 real test images:

* **plain**: ``model.predict(x / 255, batch_size=1024)`` on the uint8 array, the baseline;
* **stage**: :func:`mnist_tasks.score.score_shard` over the staged batch in 5,000-image
  shards (what the DAG's mapped tasks do: read the staged images from the store, scale,
  predict, top-2, write the shard), with the model already loaded;
* **end to end**: the same 10,000 images as PNG files in a landing folder with their
  ``_SUCCESS`` marker, :func:`mnist_tasks.score.score_batches` from nothing: plan, read and
  decode the PNGs, stage, load the model from the registry (SHA-256 verified), score, commit
  (predictions CSV, errors, manifest last).

* **monitoring**: the same 10,000 images as one IDX batch, :func:`mnist_tasks.score.score_batches`
  end to end with the model registered twice: v1 without a monitoring reference (the commit
  skips the drift check: scoring alone) and v2 with one built from 3,000 held-out training
  images (the commit runs the per-batch drift check: KS on confidence and ink, MMD on
  embeddings with its permutations), on the clean batch and on the batch rotated ±20° (where
  the MMD runs all its permutations). Both pay the same two-output forward pass.

Each is repeated ``--repeats`` times (median; plain and stage interleaved, and v1 and v2, so
machine load hits both alike). Goals: stage >= 0.8x plain; monitored <= 1.5x scoring alone.
Prints Markdown tables.

    .venv/bin/python bench/score.py --source ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mnist_tasks import score
from mnist_tasks.artifacts import save_npz
from mnist_tasks.config import train_config
from mnist_tasks.idx import decompress, encode_idx, parse_idx
from mnist_tasks.monitor import REFERENCE_FILE, Forward, Reference
from mnist_tasks.registry import Registry
from mnist_tasks.results import ScoreShard
from mnist_tasks.scoring_batches import write_batch
from mnist_tasks.scoring_outputs import read_manifest
from mnist_tasks.storage import LocalStore

REPO = Path(__file__).resolve().parents[1]
GOAL_RATIO = 0.8
GOAL_MONITOR_RATIO = 1.5


def _read(path: Path) -> np.ndarray:
    return np.asarray(parse_idx(decompress(path.read_bytes(), source=str(path)),
                                source=str(path)))


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    """Each image rotated by a seeded angle in [-degrees, degrees] (a shift the monitor sees)."""
    from PIL import Image

    rng = np.random.default_rng(7)
    return np.stack([np.asarray(Image.fromarray(img).rotate(float(a), resample=Image.BILINEAR))
                     for img, a in zip(images, rng.uniform(-degrees, degrees, len(images)),
                                       strict=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared/datasets/mnist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args()
    from mnist_tasks.train import fit_arrays

    x_all = _read(args.source / "train-images-idx3-ubyte.gz")
    x_train = x_all[:12000]
    y_train = _read(args.source / "train-labels-idx1-ubyte.gz")[:12000]
    x_val = x_all[50_000:53_000]
    x = _read(args.source / "t10k-images-idx3-ubyte.gz")[:args.images]
    y = _read(args.source / "t10k-labels-idx1-ubyte.gz")[:args.images]
    root = Path(tempfile.mkdtemp(prefix="bench-score-"))
    try:
        model_path = root / "model.keras"
        fit = fit_arrays(train_config("fast_mlp", epochs=1), x_train.astype(np.float32) / 255,
                         y_train)
        fit.model.save(model_path)
        store, landing = LocalStore(root / "store"), LocalStore(root / "landing")
        registry = Registry(store)
        registry.register("bench", {"model.keras": model_path}, {})
        registry.promote(1)
        cfg = score.ScoringConfig(landing=landing.uri)
        model = score.load_version(store, cfg, 1)

        # The staged batch the stage's shards read (as prepare leaves it).
        staging = "scoring/bench/staging"
        save_npz(store, f"{staging}/images.npz", {"images": x, "ids": np.arange(len(x))})
        shards = [ScoreShard(batch="bench", version=1, staging=staging, index=i,
                             start=i * cfg.shard_size,
                             stop=min(len(x), (i + 1) * cfg.shard_size), model_uri="")
                  for i in range((len(x) + cfg.shard_size - 1) // cfg.shard_size)]
        model.predict(x[:2048].astype(np.float32) / 255, batch_size=1024, verbose=0)  # warm-up
        plain, stage = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            probs = model.predict(x.astype(np.float32) / 255, batch_size=1024, verbose=0)
            plain.append(time.perf_counter() - start)
            for key in store.list(staging):
                if "/shard-" in key:
                    store.delete(key)
            start = time.perf_counter()
            for shard in shards:
                score.score_shard(cfg, store, shard, model)
            stage.append(time.perf_counter() - start)
        accuracy = float((probs.argmax(axis=1) == y).mean())

        files = {f"img-{i:05d}.png": _png(x[i]) for i in range(len(x))}
        end_to_end, parts = [], []
        for r in range(args.repeats):
            batch = f"pngs-{r}"
            write_batch(landing, batch, files)
            start = time.perf_counter()
            result = score.score_batches(cfg, store, landing, f"bench-e2e-{r}", batches=[batch])
            end_to_end.append(time.perf_counter() - start)
            manifest = read_manifest(store, cfg, batch, 1)  # the summaries keep no timing
            assert result.images == len(x) and manifest["batch"] == batch
            parts.append(manifest["timing"])

        # Monitoring: v2 is the same model with its reference; the champion alias picks which
        # version score_batches uses.
        reference = Reference.build(*Forward(model)(x_val), x_val, model_version=2,
                                    benchmark_accuracy=accuracy)
        registry.register("bench-monitored", {"model.keras": model_path,
                                              REFERENCE_FILE: reference.to_bytes()}, {})
        rotated = _rotate(x, 20)
        idx_batches = {"clean": encode_idx(x), "rotated ±20°": encode_idx(rotated)}
        monitored: dict[tuple[str, int], list[float]] = {}
        statuses: dict[str, str] = {}
        for r in range(args.repeats):
            for name, data in idx_batches.items():
                for version in (1, 2):
                    registry.promote(version)
                    batch = f"idx-{r}-{'rot' if name != 'clean' else 'clean'}-v{version}"
                    write_batch(landing, batch, {"a-idx3-ubyte": data})
                    start = time.perf_counter()
                    score.score_batches(cfg, store, landing, f"bench-mon-{batch}",
                                        batches=[batch])
                    monitored.setdefault((name, version), []).append(
                        time.perf_counter() - start)
                    status = read_manifest(store, cfg, batch, version).get("monitor") or {}
                    statuses[f"{name} v{version}"] = str(status.get("status", "none"))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    n = len(x)
    p, s, e = (statistics.median(v) for v in (plain, stage, end_to_end))
    ratio = p / s
    print(f"\nScoring {n:,} real MNIST test images, fast_mlp (1 epoch, accuracy {accuracy:.4f}); "
          f"median of {args.repeats}\n")
    print("| path | seconds | images/s | vs plain |")
    print("|---|---:|---:|---:|")
    print(f"| plain `model.predict` (uint8 → /255 → predict) | {p:.3f} | {n / p:,.0f} | 1.00x |")
    print(f"| stage `score_shard` ×{len(shards)} (read staged, predict, top-2, write) | {s:.3f} "
          f"| {n / s:,.0f} | {ratio:.2f}x (goal >= {GOAL_RATIO}x: "
          f"{'met' if ratio >= GOAL_RATIO else 'NOT met'}) |")
    print(f"| end to end, {n:,} PNGs: plan → decode → stage → load model → score → commit | "
          f"{e:.3f} | {n / e:,.0f} | – |")
    mid = parts[end_to_end.index(sorted(end_to_end)[len(end_to_end) // 2])]
    print(f"\nEnd to end (median run): decode {mid['decode_s']:.2f} s, score "
          f"{mid['score_s']:.2f} s, commit {mid['commit_s']:.2f} s; the rest is planning, "
          "staging and loading the model.")

    print(f"\nMonitoring: one {n:,}-image IDX batch end to end (`score_batches`), median of "
          f"{args.repeats}, v1 and v2 interleaved\n")
    print("| batch | scoring alone (v1, no reference) | monitored (v2) | monitor status | "
          "ratio |")
    print("|---|---:|---:|---|---:|")
    met = True
    for name in idx_batches:
        alone, with_monitor = (statistics.median(monitored[(name, v)]) for v in (1, 2))
        ratio = with_monitor / alone
        met = met and ratio <= GOAL_MONITOR_RATIO
        print(f"| {name} | {alone:.3f} s | {with_monitor:.3f} s | {statuses[f'{name} v2']} | "
              f"**{ratio:.2f}x** |")
    print(f"\nmonitoring goal (<= {GOAL_MONITOR_RATIO}x scoring alone): "
          f"{'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
