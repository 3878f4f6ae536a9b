"""The DAG on a real distributed Airflow: CeleryExecutor, PostgreSQL, Redis, no Docker.

What docker-compose.yaml deploys, as local processes: an api-server, a scheduler, a
dag-processor and a Celery worker serving the ``default`` and ``gpu`` queues, with the train task
routed to the ``gpu`` queue and pool (``MNIST_TRAIN_QUEUE`` / ``MNIST_TRAIN_POOL``). The run is
triggered through the REST API, the new version is read back from the S3 store (the moto server
over HTTP), and the train task's log is read through the API. A second run has its train task's
process SIGKILLed after epoch 2, as a crashed worker would: Airflow retries the task, and the
retry resumes from the checkpoint in S3 and from the note in the task state store.

PostgreSQL (127.0.0.1:5432, trust auth for ``postgres``) and Redis (127.0.0.1:6379) are started
if they are installed but stopped; the test skips, saying why, if either cannot be had. It uses a
fresh database and Redis DB 13, and drops / flushes them afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from mnist_tasks.config import run_key
from mnist_tasks.registry import Registry
from mnist_tasks.storage import S3Store
from tests.conftest import TEST_BUCKET
from tests.integration.airflow_services import (
    ApiClient,
    Services,
    airflow_env,
    free_port,
    port_open,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PG_PORT = 5432
REDIS_PORT = 6379
REDIS_DB = 13  # a Redis database of its own, flushed before and after
RUN_TIMEOUT_S = 15 * 60
DAG_ID = "mnist_training"


def _start_postgres() -> str | None:
    """None when PostgreSQL answers on 127.0.0.1:5432 (started if needed), else why not."""
    if port_open(PG_PORT):
        return None
    clusters = sorted(Path("/etc/postgresql").glob("*/main")) if Path("/etc/postgresql").is_dir() \
        else []
    if not shutil.which("pg_ctlcluster") or not clusters:
        return "PostgreSQL is not installed (no pg_ctlcluster or /etc/postgresql/*/main)"
    version = clusters[-1].parent.name
    result = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
        capture_output=True, text=True, timeout=60,
    )
    for _ in range(30):
        if port_open(PG_PORT):
            return None
        time.sleep(1)
    return f"PostgreSQL {version} did not start: {result.stderr.strip() or result.stdout.strip()}"


def _start_redis() -> str | None:
    """None when Redis accepts connections on 127.0.0.1:6379 (started if needed), else why not."""
    if port_open(REDIS_PORT):
        return None
    if not shutil.which("redis-server"):
        return "Redis is not installed (no redis-server)"
    result = subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port",
         str(REDIS_PORT), "--save", "", "--appendonly", "no"],
        capture_output=True, text=True, timeout=30,
    )
    for _ in range(20):
        if port_open(REDIS_PORT):
            return None
        time.sleep(0.5)
    return f"Redis did not start: {result.stderr.strip() or result.stdout.strip()}"


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[str]:
    """A fresh PostgreSQL database for this test; its SQLAlchemy URL. Dropped afterwards."""
    import psycopg2

    why = _start_postgres()
    if why:
        pytest.skip(f"needs PostgreSQL on 127.0.0.1:{PG_PORT}: {why}")
    name = f"airflow_it_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname="postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The Celery broker URL on a Redis database of our own, flushed before and after."""
    import redis

    why = _start_redis()
    if why:
        pytest.skip(f"needs Redis on 127.0.0.1:{REDIS_PORT}: {why}")
    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, db=REDIS_DB)
    client.flushdb()
    try:
        yield f"redis://127.0.0.1:{REDIS_PORT}/{REDIS_DB}"
    finally:
        client.flushdb()
        client.close()


def _task_instances(api: ApiClient, run_id: str) -> dict[str, dict[str, Any]]:
    body = api.json("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"
                           "/taskInstances")
    return {ti["task_id"]: ti for ti in body["task_instances"]}


def _task_log(api: ApiClient, run_id: str, task_id: str, try_number: int) -> str:
    body = api.json(
        "GET",
        f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
        f"/logs/{try_number}",
        params={"full_content": "true"}, headers={"Accept": "application/json"},
    )
    content = body.get("content")
    return content if isinstance(content, str) else json.dumps(content)


def _wait_for_run(api: ApiClient, services: Services, run_id: str) -> dict[str, Any]:
    """Poll the run until it finishes; fail with task states and logs if it does not succeed."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        services.check_alive()
        run = api.json("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}")
        if run["state"] in ("success", "failed"):
            break
        time.sleep(5)
    if run.get("state") == "success":
        return run
    states = {t: ti["state"] for t, ti in _task_instances(api, run_id).items()}
    logs = ""
    for task_id, ti in _task_instances(api, run_id).items():
        if ti["state"] not in ("success", None, "scheduled", "queued") and ti["try_number"]:
            logs += f"\n==== {task_id}\n{_task_log(api, run_id, task_id, ti['try_number'])[-3000:]}"
    pytest.fail(f"run {run_id} ended as {run.get('state')!r} (task states {states}){logs}\n"
                f"{services.all_logs(2000)}")


def _kill_train_after_epoch(api: ApiClient, services: Services, home: Path, run_id: str,
                            epoch: int, epochs: int) -> int:
    """SIGKILL the train task's process (try 1) once its log shows ``epoch``; the epochs done."""
    log_file = (home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / "task_id=train"
                / "attempt=1.log")
    done = re.compile(rf"epoch (\d+)/{epochs} ")
    deadline = time.monotonic() + 300
    while True:
        services.check_alive()
        assert time.monotonic() < deadline, f"no 'epoch {epoch}/{epochs}' in {log_file}"
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        epochs_done = [int(n) for n in done.findall(text)]
        if epochs_done and max(epochs_done) >= epoch:
            break
        time.sleep(0.1)
    assert max(epochs_done) < epochs, "training finished before it could be killed"
    pid = _task_instances(api, run_id)["train"]["pid"]
    assert isinstance(pid, int) and pid > 0
    os.kill(pid, signal.SIGKILL)
    return max(epochs_done)


def test_dag_runs_on_celery_with_postgres_and_redis(
    postgres_db: str, redis_url: str, s3_env: str, mnist_dir: Path
) -> None:
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="airflow-celery-"))
    port = free_port()
    store_uri = f"s3://{TEST_BUCKET}/celery"
    env = airflow_env(
        home, port,
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgres_db,
        AIRFLOW__CELERY__BROKER_URL=redis_url,
        AIRFLOW__CELERY__RESULT_BACKEND="db+" + postgres_db,
        AIRFLOW__CELERY__WORKER_CONCURRENCY="1",
        AIRFLOW__OPERATORS__DEFAULT_QUEUE="default",
        AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG="2",
        # Only the triggered run: no scheduled run of the @weekly DAG competes with it.
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
        MNIST_STORE=store_uri,
        MNIST_TRAIN_POOL="gpu",
        MNIST_TRAIN_QUEUE="gpu",
    )  # s3_env has put the AWS_* variables for the S3 server into os.environ
    services = Services(env, home / "logs")
    try:
        result = services.run("db", "migrate")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        result = services.run("pools", "set", "gpu", "1", "GPU worker slots")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        services.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
        services.start("scheduler", "scheduler")
        services.start("dag-processor", "dag-processor")
        services.start("worker", "celery", "worker", "--queues", "default,gpu",
                       "--concurrency", "1")
        base_url = f"http://127.0.0.1:{port}"
        services.wait_http(f"{base_url}/api/v2/version")
        api = ApiClient(base_url)

        deadline = time.monotonic() + 180
        while api.request("GET", f"/api/v2/dags/{DAG_ID}").status_code != 200:
            services.check_alive()
            assert time.monotonic() < deadline, "the DAG never appeared\n" + services.all_logs()
            time.sleep(2)
        api.json("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
        conf = {"preset": "fast_mlp", "epochs": 2, "min_accuracy": 0.9,
                "source": str(mnist_dir), "store": store_uri}
        run = api.json("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                       json={"logical_date": None, "conf": conf})
        run_id = run["dag_run_id"]
        triggered = time.monotonic()
        _wait_for_run(api, services, run_id)
        run_seconds = time.monotonic() - triggered

        # Routing: train went to the gpu queue and pool, everything else to default.
        tis = _task_instances(api, run_id)
        assert {t: ti["state"] for t, ti in tis.items()} == {
            t: "success" for t in ("ingest", "preprocess", "train", "evaluate", "gate", "register")
        }
        assert (tis["train"]["queue"], tis["train"]["pool"]) == ("gpu", "gpu")
        assert (tis["evaluate"]["queue"], tis["evaluate"]["pool"]) == ("default", "default_pool")
        assert all(ti["executor"] in (None, "CeleryExecutor") for ti in tis.values())

        # The registry in S3 holds the run's version, and it is the champion.
        registry = Registry(S3Store(TEST_BUCKET, "celery"))
        info = registry.version_for_run(run_key(run_id))
        assert info is not None and info.version == 1
        assert info.run_id == run_id and info.gate_decision == "PROMOTE"
        assert info.test_accuracy is not None and info.test_accuracy >= 0.9
        assert registry.get_alias("champion") == 1

        # Task logs come back through the API: the worker's per-epoch lines.
        train_log = _task_log(api, run_id, "train", tis["train"]["try_number"])
        assert "epoch 1/2" in train_log and "epoch 2/2" in train_log, train_log[-3000:]
        ingest_log = _task_log(api, run_id, "ingest", tis["ingest"]["try_number"])
        assert "ingest: validation" in ingest_log, ingest_log[-3000:]

        # The Models page of the same deployment shows the version.
        listing = api.json("GET", "/models/api/versions")
        assert [v["version"] for v in listing["versions"]] == [1] and listing["champion"] == 1

        # A worker dies mid-training: its process is SIGKILLed after epoch 2. Airflow retries
        # the task (after its retry delay), and the retry resumes instead of starting over.
        conf = {"preset": "seed_mlp", "epochs": 4, "batch_size": 32, "min_accuracy": 0.9,
                "source": str(mnist_dir), "store": store_uri}
        run_id = api.json("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                          json={"logical_date": None, "conf": conf})["dag_run_id"]
        killed_after = _kill_train_after_epoch(api, services, home, run_id, epoch=2, epochs=4)
        _wait_for_run(api, services, run_id)
        train = _task_instances(api, run_id)["train"]
        assert (train["state"], train["try_number"]) == ("success", 2)
        tries = api.json("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"
                                "/taskInstances/train/tries")["task_instances"]
        assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed"), (2, "success")]
        retry_log = _task_log(api, run_id, "train", 2)
        resumed = re.search(r"resuming from epoch (\d+) of 4", retry_log)
        assert resumed, retry_log[-3000:]
        epoch = int(resumed.group(1))
        assert killed_after <= epoch <= killed_after + 1  # at most the epoch in flight is lost
        assert "try 2: the previous try checkpointed epoch" in retry_log, retry_log[-3000:]
        assert "epoch 1/4" not in retry_log and "epoch 4/4" in retry_log
        print(f"killed after epoch {killed_after}, resumed from epoch {epoch}")
        print(f"\ncelery deployment: run {run_seconds:.0f} s, "
              f"total {time.monotonic() - started:.0f} s")
    finally:
        services.stop()
        shutil.rmtree(home, ignore_errors=True)
