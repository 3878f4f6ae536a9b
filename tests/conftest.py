"""Shared fixtures (the real MNIST folder, an S3 server over HTTP on loopback, stores, a small
trained model) and the layer markers.

Each test is marked by its folder: ``unit`` (no services, no network, no subprocess Airflow),
``dags`` (DAG integrity: imports the DAG, no services), ``integration`` (real services: S3
over HTTP, PostgreSQL, Redis, Airflow processes, Compose, Chromium) and ``e2e`` (the DAG end to
end through Airflow). ``make test-fast`` runs ``unit`` and ``dags``; a ``unit`` or ``dags``
test that asks for the S3 server is an error at collection. Helpers live in tests/helpers.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mnist_tasks.storage import LocalStore, S3Store, Store
from tests.helpers import (
    CELERY_FILE_PREFIX,
    REPO,
    TEST_BUCKET,
    train_model_file,
    xdist_scope,
)

MNIST_DIR = Path(os.environ.get("MNIST_DIR", REPO.parent / "shared" / "datasets" / "mnist"))
TESTS = Path(__file__).resolve().parent
LAYERS = ("unit", "dags", "integration", "e2e")
SERVICE_FIXTURES = {"s3_server", "s3_env", "s3_store", "mlflow_server"}
CELERY_FIXTURE = "celery_deployment"  # tests/integration/conftest.py


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its layer (its folder under tests/); run the longest work first."""
    for item in items:
        try:
            layer = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if layer not in LAYERS:
            continue
        item.add_marker(getattr(pytest.mark, layer))
        fixtures = set(getattr(item, "fixturenames", ()))
        if layer in ("unit", "dags"):
            services = SERVICE_FIXTURES.intersection(fixtures)
            if services:
                raise pytest.UsageError(
                    f"{item.nodeid}: a {layer} test uses {', '.join(sorted(services))}; "
                    "tests that talk to services belong in tests/integration")
        if CELERY_FIXTURE in fixtures and not item.path.name.startswith(CELERY_FILE_PREFIX):
            raise pytest.UsageError(
                f"{item.nodeid}: a test of the Celery deployment belongs in a file named "
                f"{CELERY_FILE_PREFIX}*.py (how make test shares the deployment: tests/helpers.py)")
    # `make test` runs on pytest-xdist workers (three), which take the units of work
    # (tests.helpers.xdist_scope) in collection order: the deployment's two halves (the longest
    # units by far) go first, one to each of the first two workers, then the end-to-end runs,
    # and the short tests fill in after them. A run without xdist keeps the same order, which
    # also stops the deployment's services early.
    items.sort(key=_run_order)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's load-by-scope scheduler, with our units of work (xdist's own ``loadgroup`` marks
    have no effect on pytest 9, which ignores the node-id suffix they rely on)."""
    from xdist.scheduler import LoadScopeScheduling

    # Keep our order (pytest_collection_modifyitems): by default xdist sorts the units by their
    # number of tests, and the deployment's two halves could then both go to one worker, one
    # after the other, instead of the first unit to each worker.
    config.option.loadscopereorder = False

    class SharedSetUpScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return SharedSetUpScheduling(config, log)


def _run_order(item: pytest.Item) -> int:
    if item.path.name.startswith(CELERY_FILE_PREFIX):
        return 0
    return 1 if item.get_closest_marker("e2e") else 2


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST IDX files (../shared/datasets/mnist, or $MNIST_DIR)."""
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"real MNIST not found in {MNIST_DIR}: set MNIST_DIR to the folder")
    return MNIST_DIR


@pytest.fixture(scope="session")
def airflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty Airflow metadata database (SQLite), migrated once per session (per pytest-xdist
    worker). Each throw-away Airflow home of the tests starts from a copy of it
    (``tests.helpers.seed_airflow_home``) instead of running ``airflow db migrate`` again
    (about 7 s of CPU each on this machine)."""
    home = tmp_path_factory.mktemp("airflow-db-template")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__UNIT_TEST_MODE": "False"}
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    result = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return home / "airflow.db"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server over real HTTP on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow server (its own environment, .venv-mlflow; SQLite, local artifacts) on a
    free loopback port, once per session; yields its ``mlflow+http://`` location. Each test
    that writes to it uses a model name of its own."""
    from tests.mlflow_server import running_server

    with running_server(tmp_path_factory.mktemp("mlflow-server")) as location:
        yield location


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Reset the S3 server, create the test bucket, and point boto3 at it the standard way."""
    import boto3
    import requests

    requests.post(f"{s3_server}/moto-api/reset", timeout=10).raise_for_status()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    boto3.client("s3").create_bucket(Bucket=TEST_BUCKET)
    return s3_server


@pytest.fixture
def s3_store(s3_env: str) -> S3Store:
    return S3Store(TEST_BUCKET, "store")


@pytest.fixture
def file_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest) -> Store:
    """The same test against file:// and against S3 over HTTP."""
    name = "file_store" if request.param == "file" else "s3_store"
    return request.getfixturevalue(name)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small seed_mlp trained for two epochs on synthetic digits, saved as .keras."""
    return train_model_file(tmp_path_factory.mktemp("model"))
