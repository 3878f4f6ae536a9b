"""Pipeline overhead: plain Keras vs the library's train stage vs run-all vs the DAG in Airflow.

Everything runs in fresh processes, one after another, on the same machine, with the first
notebook's recipe (seed_mlp, 10 epochs) and a fresh file:// store for each pipeline run:

1. ``bench/plain_keras.py``: the notebook in plain Keras (the baseline);
2. ``python -m mnist_tasks train`` on prepared data: the library's train stage, same recipe;
3. ``python -m mnist_tasks run-all``: every stage chained in one process;
4. ``airflow dags test mnist_training``: the DAG through Airflow (SQLite metadata DB, migrated
   beforehand and not timed);
5. ``airflow dags test`` of a two-task DAG that does nothing: Airflow's fixed cost per run.

Goals: the train stage's fit is not slower than plain Keras; the DAG's wall time is within
1.5x of run-all. Prints a Markdown table.

    .venv/bin/python bench/pipeline.py --source ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EMPTY_DAG = """
from datetime import datetime
from airflow.sdk import dag, task

@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def empty():
    @task
    def first() -> int:
        return 1

    @task
    def second(x: int) -> int:
        return x

    second(first())

empty()
"""
PY = sys.executable
AIRFLOW = str(Path(PY).with_name("airflow"))


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return wall, out.stdout


def _last_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise ValueError("no JSON line in output")


def airflow_envs(work: Path) -> tuple[dict[str, str], dict[str, str]]:
    """A migrated SQLite Airflow home in ``work``: the environment for this repo's DAGs, and the
    same for a folder holding only the empty two-task DAG (Airflow's fixed cost per run)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "AIRFLOW_HOME": str(work / "airflow"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "MNIST_DEADLINE_MARGIN_MINUTES": "off"}  # see the Makefile
    _run([AIRFLOW, "db", "migrate"], env)
    empty_dags = work / "empty-dags"
    empty_dags.mkdir()
    (empty_dags / "empty.py").write_text(EMPTY_DAG)
    return env, {**env, "AIRFLOW__CORE__DAGS_FOLDER": str(empty_dags)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared/datasets/mnist")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    source = str(args.source.resolve())

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    env, empty_env = airflow_envs(work)

    rows: dict[str, list[tuple[float, float | None, float | None]]] = {}

    def record(name: str, wall: float, fit: float | None, acc: float | None) -> None:
        rows.setdefault(name, []).append((wall, fit, acc))
        print(f"  {name}: wall {wall:.1f} s, fit {fit}, accuracy {acc}", file=sys.stderr)

    for i in range(args.repeats):
        wall, out = _run([PY, "bench/plain_keras.py", "--source", source], env)
        res = _last_json(out)
        record("plain Keras (notebook recipe)", wall, res["fit_seconds"], res["test_accuracy"])

        # The train stage alone, on data prepared once beforehand (not timed).
        store = (work / f"store-train-{i}").as_uri()
        _, out = _run([PY, "-m", "mnist_tasks", "ingest", "--source", source,
                       "--store", store], env)
        ingested = json.dumps(_last_json(out))
        _, out = _run([PY, "-m", "mnist_tasks", "check", "--ingested", ingested,
                       "--store", store, "--run-id", "bench"], env)
        checked = json.dumps(_last_json(out))
        _, out = _run([PY, "-m", "mnist_tasks", "preprocess", "--checked", checked,
                       "--store", store, "--run-id", "bench"], env)
        prepared = json.dumps(_last_json(out))
        wall, out = _run([PY, "-m", "mnist_tasks", "train", "--prepared", prepared,
                          "--store", store, "--run-id", "bench", "--preset", "seed_mlp"], env)
        res = _last_json(out)
        record("library train stage (seed_mlp)", wall, res["fit_seconds"], None)

        store = (work / f"store-runall-{i}").as_uri()
        wall, out = _run([PY, "-m", "mnist_tasks", "run-all", "--source", source,
                          "--store", store, "--preset", "seed_mlp"], env)
        res = _last_json(out)
        record("run-all (one process)", wall, None, res["test_accuracy"])

        store = (work / f"store-dag-{i}").as_uri()
        conf = json.dumps({"source": source, "store": store, "preset": "seed_mlp"})
        wall, _ = _run([AIRFLOW, "dags", "test", "mnist_training", "--conf", conf], env)
        _, out = _run([PY, "-m", "mnist_tasks", "report", "--store", store, "--latest"], env)
        record("DAG via airflow dags test", wall, None, _last_json(out)["test_accuracy"])

        wall, _ = _run([AIRFLOW, "dags", "test", "empty"], empty_env)
        record("empty 2-task DAG via airflow dags test", wall, None, None)

    def med(values: list[float | None], digits: int = 2) -> str:
        vals = [v for v in values if v is not None]
        return f"{statistics.median(vals):.{digits}f}" if vals else "-"

    walls = {name: statistics.median(r[0] for r in runs) for name, runs in rows.items()}
    print(f"\nseed_mlp recipe, {args.repeats} repeat(s), {os.cpu_count()} CPUs, medians\n")
    print("| what | wall s | fit s | test accuracy |")
    print("|---|---:|---:|---:|")
    for name, runs in rows.items():
        print(f"| {name} | {walls[name]:.2f} | {med([r[1] for r in runs])} "
              f"| {med([r[2] for r in runs], 4)} |")
    fit_plain = statistics.median(r[1] for r in rows["plain Keras (notebook recipe)"] if r[1])
    fit_lib = statistics.median(r[1] for r in rows["library train stage (seed_mlp)"] if r[1])
    # Ratios per repeat (both measured back to back), then their median: this machine's speed
    # drifts by 20-30 % over minutes, which a ratio of two medians would mix in.
    ratios = [d[0] / r[0] for d, r in zip(rows["DAG via airflow dags test"],
                                          rows["run-all (one process)"], strict=True)]
    ratio = statistics.median(ratios)
    print(f"\ntrain stage fit / plain Keras fit: {fit_lib / fit_plain:.2f} (goal <= 1.00)")
    print(f"DAG wall / run-all wall, per repeat: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {ratio:.2f} (goal <= 1.50)")
    fixed = walls["empty 2-task DAG via airflow dags test"]
    extra = walls["DAG via airflow dags test"] - walls["run-all (one process)"]
    print(f"DAG wall - run-all wall: {extra:.1f} s; an empty 2-task DAG takes {fixed:.1f} s")


if __name__ == "__main__":
    main()
