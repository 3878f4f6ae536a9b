"""Landing events: the time from an increment's ``_SUCCESS`` PUT to the training run being queued.

A deployment as the integration tests start it (tests/integration/airflow_services.py), on
LocalExecutor and PostgreSQL: api-server, scheduler, dag-processor and a triggerer; the source
in a bucket of a moto server (over HTTP) that notifies an SQS queue on the same server of each
``_SUCCESS`` marker; ``MNIST_LANDING_EVENTS=sqs:<queue>``. Each repeat lands a small increment
(its files, then the marker) and measures from the marker's PUT to the asset-triggered
``mnist_training`` run's ``queued_at`` (the run is then marked failed: only the trigger is
measured). Prints a Markdown table, and polling's figure beside it: a marker waits for the
next ``MNIST_WATCH_INTERVAL_MINUTES`` tick, then for the watch run to start.

Needs PostgreSQL on 127.0.0.1 (as the integration tests).

    .venv/bin/python bench/landing_events.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
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
    wait_for_dag,
    wait_for_watcher,
)

DAG_ID, WATCH_DAG_ID = "mnist_training", "mnist_increments_watch"
PG_PORT = 5432
BUCKET = "landing-bench"
GOAL_S = 15.0
POLL_MINUTES = 5  # the default MNIST_WATCH_INTERVAL_MINUTES


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _asset_runs(api: ApiClient) -> list[dict[str, Any]]:
    body = api.json("GET", f"/api/v2/dags/{DAG_ID}/dagRuns",
                    params={"run_type": "asset_triggered", "order_by": "run_after",
                            "limit": 100})
    return list(body["dag_runs"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds to wait for each training run")
    args = parser.parse_args()
    why = service_missing("PostgreSQL", PG_PORT)
    if why:
        print(why, file=sys.stderr)
        return 2
    import boto3
    import psycopg2
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    aws = {"endpoint_url": endpoint, "aws_access_key_id": "testing",
           "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    s3, sqs = boto3.client("s3", **aws), boto3.client("sqs", **aws)
    s3.create_bucket(Bucket=BUCKET)
    queue = sqs.create_queue(QueueName="mnist-landing")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET, NotificationConfiguration={"QueueConfigurations": [{
            "QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": "_SUCCESS"}]}}}]})
    sqs.purge_queue(QueueUrl=queue)

    db = f"airflow_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    work = Path(tempfile.mkdtemp(prefix="landing-bench-"))
    api_port = free_port()
    env = airflow_env(
        work, api_port,
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"postgresql+psycopg2://postgres@127.0.0.1:{PG_PORT}/{db}",
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="True",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
        AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="600",
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL_S3=endpoint,
        AWS_ENDPOINT_URL_SQS=endpoint,
        MNIST_STORE=f"s3://{BUCKET}/store", MNIST_SOURCE=f"s3://{BUCKET}/source",
        MNIST_TRAINING_SCHEDULE="off", MNIST_LANDING_EVENTS=f"sqs:{queue}",
    )
    services = Services(env, work / "logs")
    latencies: list[float] = []
    try:
        result = services.run("db", "migrate")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        services.start("api-server", "api-server", "--host", "127.0.0.1", "--port",
                       str(api_port))
        services.start("scheduler", "scheduler")
        services.start("dag-processor", "dag-processor")
        services.start("triggerer", "triggerer")
        services.wait_http(f"http://127.0.0.1:{api_port}/api/v2/version")
        api = ApiClient(f"http://127.0.0.1:{api_port}")
        for dag_id in (DAG_ID, WATCH_DAG_ID):
            wait_for_dag(services, api, dag_id)
            api.json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        wait_for_watcher(services, api, WATCH_DAG_ID, "mnist_landing_events")
        for n in range(args.repeats):
            seen = {r["dag_run_id"] for r in _asset_runs(api)}
            prefix = f"source/increments/bench-{n:02d}"
            s3.put_object(Bucket=BUCKET, Key=f"{prefix}/images-idx3-ubyte.gz", Body=b"x")
            s3.put_object(Bucket=BUCKET, Key=f"{prefix}/labels-idx1-ubyte.gz", Body=b"x")
            put = datetime.now(UTC)
            s3.put_object(Bucket=BUCKET, Key=f"{prefix}/_SUCCESS", Body=b"")
            deadline = time.monotonic() + args.timeout
            while True:
                services.check_alive()
                new = [r for r in _asset_runs(api)
                       if r["dag_run_id"] not in seen and r.get("queued_at")]
                if new:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no training run within {args.timeout:.0f} s\n"
                                       f"{services.all_logs(3000)}")
                time.sleep(0.2)
            seconds = (_time(new[0]["queued_at"]) - put).total_seconds()
            latencies.append(seconds)
            print(f"repeat {n + 1}: marker PUT -> training run queued {seconds:.1f} s",
                  flush=True)
            api.json("PATCH", run_path(DAG_ID, new[0]["dag_run_id"]), json={"state": "failed"})
    finally:
        services.stop()
        moto.stop()
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (db,))
            cur.execute(f'DROP DATABASE IF EXISTS "{db}"')
        admin.close()
    median, worst = statistics.median(latencies), max(latencies)
    print()
    print("| trigger | repeats | median (s) | max (s) | goal (s) | met |")
    print("|---|---|---|---|---|---|")
    print(f"| landing events (SQS, triggerer) | {len(latencies)} | {median:.1f} | {worst:.1f} | "
          f"<= {GOAL_S:.0f} | {'yes' if worst <= GOAL_S else 'no'} |")
    print(f"| polling, every {POLL_MINUTES} min (the default) | - | about "
          f"{POLL_MINUTES * 30} + the watch run's start | up to {POLL_MINUTES * 60} + the "
          "watch run's start | | |")
    return 0 if worst <= GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
