"""The shared Airflow deployment of the integration tests that need a scheduler and workers.

``celery_deployment`` (session scope) is what docker-compose.yaml deploys, as local processes:
an api-server, a scheduler, a dag-processor and two Celery workers (concurrency 1 each), both
serving the ``default`` and ``gpu`` queues (the train task goes to the ``gpu`` queue and pool,
two slots: ``MNIST_TRAIN_QUEUE`` / ``MNIST_TRAIN_POOL``; two candidates train at once), on
PostgreSQL and Redis, with the artifact store in S3 (the session's
moto server over HTTP). It is the scheduler's deployment, not a test harness: the job schedule
is on, both DAGs (``mnist_training`` and ``mnist_increments_watch``) are unpaused, and the
training DAG is data-triggered only (``MNIST_TRAINING_SCHEDULE=off``, so the weekly cron never
fires during a test). Nothing polls: a triggerer runs the landing asset's watcher on an SQS
queue of the moto server, which the bucket notifies of each ``_SUCCESS`` marker
(``MNIST_LANDING_EVENTS``), so a marker's PUT starts the watch, and the watch starts training
or scoring (docs/deployment.md, "Landing events from S3").

Each scenario keeps out of the others' way: one S3 bucket made once (the function-scoped
``s3_env`` resets the moto server, so no test using this fixture may ask for it), a store
prefix per scenario (:meth:`CeleryDeployment.store_uri`), and two demo sources made with
``mnist_tasks data make-demo`` (base of 50,000 images, no increment): ``watched_source``,
uploaded to the bucket as the deployment's ``MNIST_SOURCE`` (``source_uri``; only the
data-triggered scenarios land increments there, and
only it uses the deployment's ``MNIST_STORE``, which the watch and the Models page read), and
``static_source``, a copy that never changes, for the scenarios that trigger runs themselves.
``MNIST_CHECKSUMS`` pins the demo's payload hashes, which both sources share.

The services are stopped after the last test that uses the deployment (not at the end of the
session), so they use no CPU during later tests and the watch never sees another test's reset
of the S3 server. Under ``make test`` (pytest-xdist workers) a session is one worker's: the
scenarios are split into two halves (tests.helpers.xdist_scope), each worker runs one half on a
deployment of its own, and the two deployments share nothing (database, broker key prefix,
moto server, ports); the training DAG runs one run at a time (``max_active_runs=1``), so on a
single deployment the halves' runs would wait for each other.

PostgreSQL (127.0.0.1:5432, trust auth for ``postgres``) and Redis (127.0.0.1:6379) are what
``make test-deps`` (scripts/setup-test-services.sh, run by ``make test``) installs and starts;
without either, the tests fail, naming it and that command (they never skip). A fresh
database is used and dropped afterwards; in Redis (DB 13, or ``MNIST_IT_REDIS_DB``), every key of
the deployment's broker has a prefix of its own (kombu's ``global_keyprefix``), so two test
sessions on one machine never take each other's tasks; those keys are deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import xdist_scope
from tests.integration.airflow_services import (
    DAG_ID,
    DEPLOYMENT_BUCKET,
    DEPLOYMENT_FIXTURE,
    LANDING_EVENTS_ASSET,
    LANDING_QUEUE,
    PG_PORT,
    REDIS_DB,
    REDIS_PORT,
    SCORING_DAG_ID,
    SCORING_PREFIX,
    SOURCE_PREFIX,
    WATCH_DAG_ID,
    WATCHED_PREFIX,
    WORKERS,
    ApiClient,
    Broker,
    CeleryDeployment,
    Services,
    airflow_env,
    free_port,
    make_demo_source,
    service_missing,
    upload_tree,
    wait_for_dag,
    wait_for_watcher,
    worker_name,
)

_running: list[CeleryDeployment] = []


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[str]:
    """A fresh PostgreSQL database; its SQLAlchemy URL. Dropped afterwards."""
    import psycopg2

    why = service_missing("PostgreSQL", PG_PORT)
    if why:
        pytest.fail(why, pytrace=False)
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


@pytest.fixture(scope="session")
def redis_url() -> Iterator[Broker]:
    """The Celery broker: Redis with a key prefix of this session's own (another session's
    workers on the same Redis never see its queues); its keys are deleted afterwards."""
    import redis

    why = service_missing("Redis", REDIS_PORT)
    if why:
        pytest.fail(why, pytrace=False)
    prefix = f"mnist-it-{uuid.uuid4().hex[:10]}:"
    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, db=REDIS_DB)
    try:
        yield Broker(f"redis://127.0.0.1:{REDIS_PORT}/{REDIS_DB}", prefix)
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


@pytest.fixture(scope="session")
def celery_deployment(
    postgres_db: str, redis_url: Broker, s3_server: str, mnist_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CeleryDeployment]:
    """The Celery/PostgreSQL/Redis deployment, both DAGs unpaused (see the module's doc)."""
    import boto3

    started = time.monotonic()
    data = tmp_path_factory.mktemp("celery-sources")
    watched, static = data / "watched", data / "static"
    make_demo_source(mnist_dir, watched)
    shutil.copytree(watched, static)
    aws = {"endpoint_url": s3_server, "aws_access_key_id": "testing",
           "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    s3 = boto3.client("s3", **aws)
    s3.create_bucket(Bucket=DEPLOYMENT_BUCKET)
    # Landing events: the bucket notifies an SQS queue (on the same moto server) of each
    # created _SUCCESS marker, as docs/deployment.md sets it up on AWS; the source is in the
    # bucket, so an increment's marker notifies.
    sqs = boto3.client("sqs", **aws)
    queue_url = sqs.create_queue(QueueName=LANDING_QUEUE)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=DEPLOYMENT_BUCKET, NotificationConfiguration={"QueueConfigurations": [{
            "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": "_SUCCESS"}]}}}]})
    upload_tree(s3, watched, DEPLOYMENT_BUCKET, SOURCE_PREFIX)
    sqs.purge_queue(QueueUrl=queue_url)  # the set-up's test event and the base's markers

    # The Airflow home and its logs hold the task logs the tests read: not under tmp_path's
    # retention, removed at the end.
    home = Path(tmp_path_factory.mktemp("airflow-celery"))
    port = free_port()
    env = airflow_env(
        home, port,
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgres_db,
        AIRFLOW__CELERY__BROKER_URL=redis_url.url,
        AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX=redis_url.prefix,
        AIRFLOW__CELERY__RESULT_BACKEND="db+" + postgres_db,
        AIRFLOW__CELERY__WORKER_CONCURRENCY="1",
        AIRFLOW__OPERATORS__DEFAULT_QUEUE="default",
        AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG="2",
        # The scheduler's own runs: the watch every minute and the asset-triggered training.
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="True",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
        # The DAG files never change during a session: parsed when the dag-processor starts,
        # not again every 30 s (each parse is a process of its own).
        AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="600",
        # As docker-compose.yaml's worker: Keras imported once in each worker's main process,
        # so the task processes (forks of it) do not import TensorFlow again.
        AIRFLOW__CELERY__EXTRA_CELERY_CONFIG=json.dumps({"imports": ["keras"]}),
        # The S3 server, explicitly: the services must not depend on the test process's env.
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_S3=s3_server,
        AWS_ENDPOINT_URL_SQS=s3_server,
        MNIST_STORE=f"s3://{DEPLOYMENT_BUCKET}/{WATCHED_PREFIX}",
        MNIST_SOURCE=f"s3://{DEPLOYMENT_BUCKET}/{SOURCE_PREFIX}",
        # Nothing polls: the watch and scoring wait for the queue's landing events.
        MNIST_LANDING_EVENTS=f"sqs:{queue_url}",
        MNIST_CHECKSUMS=f"@{watched / 'payload-sha256.json'}",
        # Data-triggered only: the weekly cron never fires during a test.
        MNIST_TRAINING_SCHEDULE="off",
        # Scheduled and data-triggered runs take the form's defaults: the fast preset here.
        MNIST_PRESET="fast_mlp",
        MNIST_RETRY_DELAY_SECONDS="2",
        MNIST_TRAIN_POOL="gpu",
        MNIST_TRAIN_QUEUE="gpu",
        # The scoring DAG's store (registry + landing + outputs): its scenario's own prefix;
        # registry events and landed batches' events start its runs (no interval).
        MNIST_SCORING_STORE=f"s3://{DEPLOYMENT_BUCKET}/{SCORING_PREFIX}",
        # Feedback under the scoring store (its default), looked for every minute once unpaused.
        MNIST_FEEDBACK_INTERVAL_MINUTES="1",
        # The training run's note: the DAG's callback (in the dag-processor) sets it through the
        # REST API as the admin that airflow_env gives the simple auth manager.
        MNIST_AIRFLOW_API_URL=f"http://127.0.0.1:{port}",
        MNIST_AIRFLOW_USERNAME="admin",
        MNIST_AIRFLOW_PASSWORD="admin-password",
    )
    services = Services(env, home / "logs")
    deployment: CeleryDeployment | None = None
    try:
        result = services.run("db", "migrate")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        result = services.run("pools", "set", "gpu", str(WORKERS), "GPU worker slots")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        services.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
        services.start("scheduler", "scheduler")
        services.start("dag-processor", "dag-processor")
        # The asset watcher's SQS trigger runs here; it imports its class from the DAGs folder.
        services.start("triggerer", "triggerer")
        # Two workers of one slot each, on both queues: two candidates train at the same time
        # (test_celery_deployment.py, the first run). Task logs are files in the shared
        # AIRFLOW_HOME, which the api-server reads itself: only the first serves logs.
        for n in range(1, WORKERS + 1):
            services.start(worker_name(n), "celery", "worker", "--queues", "default,gpu",
                           "--concurrency", "1", "--celery-hostname", f"{worker_name(n)}@%h",
                           "--pid", str(home / f"{worker_name(n)}.pid"),
                           *(["--skip-serve-logs"] if n > 1 else []))
        base_url = f"http://127.0.0.1:{port}"
        services.wait_http(f"{base_url}/api/v2/version")
        api = ApiClient(base_url)
        for dag_id in (DAG_ID, WATCH_DAG_ID, SCORING_DAG_ID):
            wait_for_dag(services, api, dag_id)
            api.json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        wait_for_watcher(services, api, WATCH_DAG_ID, LANDING_EVENTS_ASSET)
        deployment = CeleryDeployment(
            services=services, api=api, home=home, s3_endpoint=s3_server,
            watched_source=watched, static_source=static, mnist_dir=mnist_dir,
            started_s=time.monotonic() - started, queue_url=queue_url,
        )
        print(f"\ncelery deployment: set-up {deployment.started_s:.0f} s")
        _running.append(deployment)
        yield deployment
    finally:
        if deployment is not None:
            deployment.stop()
            _running.remove(deployment)
        else:
            services.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _deployment_not_stopped(request: pytest.FixtureRequest) -> None:
    """A clear failure, instead of refused connections, for a test that would get a deployment
    already stopped (both halves on one worker: the scheduling in tests/conftest.py failed)."""
    if DEPLOYMENT_FIXTURE in request.fixturenames:
        deployment = request.getfixturevalue(DEPLOYMENT_FIXTURE)
        if deployment.stopped:
            pytest.fail("the Celery deployment of this worker was already stopped: its two "
                        "halves ran on one pytest-xdist worker (see tests/helpers.py)")


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the deployment's services once no later test of this process needs them (the
    fixture's own teardown, at the end of the session, then only cleans up). Under
    pytest-xdist a worker runs only its own half of the scenarios (tests/helpers.py)."""
    if not _running:
        return
    items = item.session.items
    later = items[items.index(item) + 1:] if item in items else [nextitem] if nextitem else []
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        # Each worker runs one half (the first unit of work of each: tests/conftest.py).
        later = [i for i in later if xdist_scope(i.nodeid) == xdist_scope(item.nodeid)]
    if any(DEPLOYMENT_FIXTURE in getattr(i, "fixturenames", ()) for i in later):
        return
    for deployment in list(_running):
        deployment.stop()

