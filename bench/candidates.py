"""Candidates on the Celery deployment: K candidates on 1 and on 2 workers.

For each worker count (``--workers``, default 1 and 2), a Celery/PostgreSQL/Redis deployment as
the integration tests start it (tests/integration/airflow_services.py: api-server, scheduler,
dag-processor, N Celery workers of concurrency 1 serving ``default`` and ``gpu``, a ``gpu`` pool
of N slots), a file:// store, and for each K (``--k``, default 1 2 4) one run of the training
DAG with K candidates (the preset with ``--epochs``, seeds 1..K), triggered through the REST
API. Per run: the run's wall time (its start to end in Airflow), the train stage's span (first
train start to last train end), the sum of the train tasks' durations, and the chosen
candidate's validation accuracy. Prints a Markdown table (docs/benchmarks.md).

Needs PostgreSQL and Redis on 127.0.0.1 (as the integration tests: started if installed).

    .venv/bin/python bench/candidates.py --source ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.airflow_services import (  # noqa: E402
    ApiClient,
    Services,
    airflow_env,
    free_port,
    run_path,
    service_missing,
    wait_for_run,
)

DAG_ID = "mnist_training"
PG_PORT, REDIS_PORT, REDIS_DB = 5432, 6379, 12


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _deployment(workers: int, work: Path, db_url: str, source: str, prefix: str
                ) -> tuple[Services, ApiClient]:
    home = work / f"airflow-{workers}"
    home.mkdir()
    port = free_port()
    env = airflow_env(
        home, port,
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=db_url,
        AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{REDIS_PORT}/{REDIS_DB}",
        AIRFLOW__CELERY__RESULT_BACKEND="db+" + db_url,
        # Broker keys of its own: another Celery deployment on this Redis never sees them.
        AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX=prefix,
        AIRFLOW__CELERY__WORKER_CONCURRENCY="1",
        AIRFLOW__OPERATORS__DEFAULT_QUEUE="default",
        AIRFLOW__CORE__PARALLELISM="8",
        AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG="8",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        MNIST_TRAINING_SCHEDULE="off",
        MNIST_SOURCE=source,
        MNIST_TRAIN_POOL="gpu",
        MNIST_TRAIN_QUEUE="gpu",
    )
    services = Services(env, home / "logs")
    for args in (["db", "migrate"], ["pools", "set", "gpu", str(workers), "train slots"]):
        out = services.run(*args)
        if out.returncode != 0:
            sys.exit(f"airflow {' '.join(args)} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    services.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
    services.start("scheduler", "scheduler")
    services.start("dag-processor", "dag-processor")
    for n in range(1, workers + 1):
        services.start(f"worker{n}", "celery", "worker", "--queues", "default,gpu",
                       "--concurrency", "1", "--celery-hostname", f"worker{n}@%h",
                       "--pid", str(home / f"worker{n}.pid"),
                       *(["--skip-serve-logs"] if n > 1 else []))
    base = f"http://127.0.0.1:{port}"
    services.wait_http(f"{base}/api/v2/version")
    api = ApiClient(base)
    deadline = time.monotonic() + 180
    while api.request("GET", f"/api/v2/dags/{DAG_ID}").status_code != 200:
        services.check_alive()
        if time.monotonic() > deadline:
            sys.exit(f"the DAG never appeared\n{services.all_logs()}")
        time.sleep(1)
    api.json("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
    return services, api


def _one_run(api: ApiClient, services: Services, k: int, args: argparse.Namespace,
             store: str) -> dict[str, Any]:
    conf = {"source": args.source, "store": store, "preset": args.preset, "epochs": args.epochs,
            "min_accuracy": 0.0, "candidates": [{"seed": list(range(1, k + 1))}]}
    run = api.json("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                   json={"logical_date": None, "conf": conf})
    run = wait_for_run(api, services, DAG_ID, run["dag_run_id"], 60 * 60)
    body = api.json("GET", f"{run_path(DAG_ID, run['dag_run_id'])}/taskInstances",
                    params={"task_id": "train", "limit": 100})
    trains = [t for t in body["task_instances"] if t["task_id"] == "train"]
    starts = [_time(t["start_date"]) for t in trains]
    ends = [_time(t["end_date"]) for t in trains]
    from mnist_tasks.pipeline import run_summary
    from mnist_tasks.storage import open_store

    summary = run_summary(open_store(store), run["dag_run_id"])
    chosen = summary["candidates"][summary["chosen_candidate"]]
    return {
        "wall": (_time(run["end_date"]) - _time(run["start_date"])).total_seconds(),
        "span": (max(ends) - min(starts)).total_seconds(),
        "sum": sum((e - s).total_seconds() for s, e in zip(starts, ends, strict=True)),
        "val": chosen["val_accuracy"],
        "trained": sum(1 for c in summary["candidates"] if c["status"] == "trained"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared/datasets/mnist"))
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--preset", default="fast_mlp")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    args.source = str(Path(args.source).resolve())
    import psycopg2
    import redis

    for why in (service_missing("PostgreSQL", PG_PORT), service_missing("Redis", REDIS_PORT)):
        if why:
            sys.exit(why)
    work = Path(tempfile.mkdtemp(prefix="bench-candidates-"))
    prefix = f"mnist-bench-{uuid.uuid4().hex[:8]}:"
    rows: list[tuple[int, int, dict[str, Any]]] = []
    try:
        for workers in args.workers:
            name = f"airflow_bench_{uuid.uuid4().hex[:8]}"
            admin = psycopg2.connect(host="127.0.0.1", port=PG_PORT, user="postgres",
                                     dbname="postgres")
            admin.autocommit = True
            admin.cursor().execute(f'CREATE DATABASE "{name}"')
            services, api = _deployment(
                workers, work, f"postgresql+psycopg2://postgres@127.0.0.1:{PG_PORT}/{name}",
                args.source, prefix)
            try:
                for k in args.k:
                    store = (work / f"store-w{workers}-k{k}").as_uri()
                    res = _one_run(api, services, k, args, store)
                    print(f"  {workers} worker(s), K={k}: {res}", file=sys.stderr)
                    rows.append((workers, k, res))
            finally:
                services.stop()
                cur = admin.cursor()
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
                cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
                admin.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, db=REDIS_DB)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)

    one = {k: res["wall"] for w, k, res in rows if w == min(args.workers)}
    print(f"\n{args.preset}, {args.epochs} epochs per candidate (seeds 1..K); times in seconds\n")
    print("| workers | K | run wall | train span | sum of trains | wall vs "
          f"{min(args.workers)} worker | best val acc |")
    print("|---|---|---|---|---|---|---|")
    for workers, k, res in rows:
        print(f"| {workers} | {k} | {res['wall']:.0f} | {res['span']:.0f} | {res['sum']:.0f} | "
              f"{res['wall'] / one[k]:.2f}x | {res['val']:.4f} |")


if __name__ == "__main__":
    main()
