"""Ingest speed: a cold ingest (read, verify, parse, validate, cache) and a cached re-run.

Cold: the four IDX files from a local folder into a fresh, empty ``file://`` store: read and
decompress each file, check its payload SHA-256 against the pinned MNIST values, parse it,
build the validation report (class counts, blanks, duplicates, train/test leakage) and write
the cache entry. Cached: the same call again on that store (key from the pinned checksums:
no download, no parse). Each is repeated ``--repeats`` times in this process (imports are
done first and not timed). Goals: cold <= 2 s, cached <= 0.5 s. Prints a Markdown table.

    .venv/bin/python bench/ingest.py --source ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mnist_tasks.config import IngestConfig
from mnist_tasks.ingest import ingest
from mnist_tasks.storage import LocalStore

REPO = Path(__file__).resolve().parents[1]
GOALS = {"cold": 2.0, "cached": 0.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared/datasets/mnist")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = IngestConfig(source=str(args.source.resolve()))  # pinned checksums

    times: dict[str, list[float]] = {"cold": [], "cached": []}
    counts = {}
    for _ in range(args.repeats):
        root = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
        try:
            store = LocalStore(root / "store")
            for phase, want_cached in (("cold", False), ("cached", True)):
                start = time.perf_counter()
                result = ingest(cfg, store)
                times[phase].append(time.perf_counter() - start)
                if result.cached is not want_cached:
                    raise SystemExit(f"{phase} run: expected cached={want_cached}, got {result}")
                counts = result.counts
        finally:
            shutil.rmtree(root, ignore_errors=True)

    print(f"Ingest of {counts['train']:,} + {counts['test']:,} images from {cfg.source} "
          f"into a fresh file:// store, {args.repeats} repeats\n")
    print("| run | median s | min s | goal | met |")
    print("| --- | ---: | ---: | ---: | --- |")
    for phase, values in times.items():
        median = statistics.median(values)
        met = "yes" if median <= GOALS[phase] else "NO"
        print(f"| {phase} | {median:.3f} | {min(values):.3f} | <= {GOALS[phase]} s | {met} |")


if __name__ == "__main__":
    main()
