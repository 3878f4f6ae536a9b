"""The cost of a run that has nothing new to train on, against Airflow's own floor.

A retraining run whose inputs (dataset version, preprocessing, training config, code) are the
ones the champion was made from stops at the ``check`` task with decision UNCHANGED: no
training, no version, no asset event. This measures what such a run costs through
``airflow dags test``, and compares it, repeat by repeat, with an empty two-task DAG run the
same way right after it (Airflow's fixed cost per run: CLI start, DAG parse, the in-process
execution API).

1. Once, not timed: migrate a SQLite metadata DB and run the DAG once on the real MNIST
   (fast_mlp) so that a champion exists.
2. Each repeat: ``airflow dags test mnist_training`` with the same conf (UNCHANGED), then
   ``airflow dags test`` of the empty two-task DAG.

Goal (issue 11): the unchanged run costs at most 1.5x the empty two-task DAG. Prints a
Markdown table and the per-repeat ratios.

    .venv/bin/python bench/unchanged.py --source ../shared/datasets/mnist --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from pipeline import AIRFLOW, PY, _last_json, _run, airflow_envs  # noqa: E402


def _summary(store: str, env: dict[str, str]) -> dict[str, object]:
    _, out = _run([PY, "-m", "mnist_tasks", "report", "--store", store, "--latest"], env)
    return _last_json(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared/datasets/mnist")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-unchanged-"))
    env, empty_env = airflow_envs(work)

    store = (work / "store").as_uri()
    conf = json.dumps({"source": str(args.source.resolve()), "store": store,
                       "preset": "fast_mlp"})
    wall, _ = _run([AIRFLOW, "dags", "test", "mnist_training", "--conf", conf], env)
    first = _summary(store, env)
    print(f"first run (not timed in the table): {wall:.1f} s, decision {first.get('decision')}, "
          f"version {first.get('version')}", file=sys.stderr)

    unchanged: list[float] = []
    empty: list[float] = []
    for i in range(args.repeats):
        start = time.perf_counter()
        _run([AIRFLOW, "dags", "test", "mnist_training", "--conf", conf], env)
        unchanged.append(time.perf_counter() - start)
        summary = _summary(store, env)
        if summary.get("decision") != "UNCHANGED":
            sys.exit(f"repeat {i + 1}: expected decision UNCHANGED, got {summary}")
        wall, _ = _run([AIRFLOW, "dags", "test", "empty"], empty_env)
        empty.append(wall)
        print(f"  repeat {i + 1}: unchanged {unchanged[-1]:.2f} s, empty {wall:.2f} s",
              file=sys.stderr)

    ratios = [u / e for u, e in zip(unchanged, empty, strict=True)]
    print(f"\nunchanged run vs empty DAG, {args.repeats} repeat(s), {os.cpu_count()} CPUs, "
          "medians\n")
    print("| what | wall s |")
    print("|---|---:|")
    print(f"| unchanged run (`airflow dags test mnist_training`, stops at check) "
          f"| {statistics.median(unchanged):.2f} |")
    print(f"| empty 2-task DAG (`airflow dags test`) | {statistics.median(empty):.2f} |")
    print(f"\nunchanged / empty, per repeat: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f} (goal <= 1.50)")


if __name__ == "__main__":
    main()
