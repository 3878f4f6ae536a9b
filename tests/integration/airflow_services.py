"""Start real Airflow service processes (api-server, scheduler, ...) for integration tests.

Each service runs as its own process group with its output in a log file, so a test can stop
everything it started (children included) and show the logs when something fails. Used by
``test_models_page.py`` and by the Celery deployment (``conftest.py``, ``celery_deployment``;
its constants and :class:`CeleryDeployment` are at the end, for the test_celery_* files), which
needs PostgreSQL and Redis: scripts/setup-test-services.sh (``make test-deps``, run by
``make test``) installs and starts them; here they are only looked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
SETUP_SCRIPT = REPO / "scripts" / "setup-test-services.sh"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def service_missing(name: str, port: int) -> str | None:
    """None when something accepts connections on 127.0.0.1:``port``, else a one-line failure
    message naming the set-up that provides ``name`` (installs it, or starts it when stopped)."""
    if port_open(port):
        return None
    return (f"{name} does not answer on 127.0.0.1:{port}: `make test-deps` "
            f"({SETUP_SCRIPT.relative_to(REPO)}) installs and starts it")


def airflow_env(home: Path, api_port: int, **settings: str) -> dict[str, str]:
    """The environment for every Airflow process of one test deployment.

    A known admin user (``admin`` / ``admin-password``) for the simple auth manager, this repo's
    dags/ and plugins/, no examples, and the secrets that the processes must share.
    ``settings`` are extra environment variables (e.g. ``AIRFLOW__CORE__EXECUTOR``).
    """
    passwords = home / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps({"admin": "admin-password"}))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__API__WORKERS": "1",
        # Shared by every process: task tokens are signed by one and checked by another.
        "AIRFLOW__API_AUTH__JWT_SECRET": "integration-test-jwt-secret-" + "0123456789abcdef" * 3,
        "AIRFLOW__API__SECRET_KEY": "integration-test-secret-key",
        "AIRFLOW__CORE__FERNET_KEY": "5R0-0Ke3hDDk2NqWdkKFRtCj7GeyNfNB6xl4dGBFGZc=",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        **settings,
    }
    return env


class Services:
    """Airflow processes started for one test, each in its own process group.

    Args:
        env: the environment for every process (see :func:`airflow_env`).
        log_dir: where each service's output goes (``<name>.log``).
    """

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run one ``airflow`` CLI command to completion; fails the caller's assert on error."""
        return subprocess.run(
            [AIRFLOW, *args], env=self.env, cwd=REPO, capture_output=True, text=True,
            timeout=timeout,
        )

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """Start ``airflow <args>`` in the background as service ``name`` (``env``: variables
        of this service's own, over the deployment's)."""
        return self.start_command(name, [AIRFLOW, *args], env=env)

    def start_command(self, name: str, argv: list[str], env: Mapping[str, str] | None = None
                      ) -> subprocess.Popen[bytes]:
        """Start ``argv`` (in the repository, in a process group of its own) in the background
        as service ``name``."""
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv, env={**self.env, **(env or {})}, cwd=REPO, stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        """Raise if any service has exited, with the end of its log."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"airflow {name} exited with {proc.returncode}:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, chars: int = 4000) -> str:
        """The last ``chars`` characters of a service's log."""
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def all_logs(self, chars: int = 3000) -> str:
        """The end of every service's log, for a failure message."""
        return "\n".join(f"==== {name}\n{self.log_tail(name, chars)}" for name in self.procs)

    def wait_http(self, url: str, timeout: float = 180) -> None:
        """Wait until ``url`` answers (any status below 500) while the services stay up.

        Raises:
            RuntimeError: if a service dies first.
            TimeoutError: if ``url`` does not answer in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if requests.get(url, timeout=5).status_code < 500:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise TimeoutError(f"{url} did not answer within {timeout:.0f} s\n{self.all_logs()}")

    def stop(self, timeout: float = 30) -> None:
        """Stop every service and its children: SIGTERM to each group, then SIGKILL."""
        for proc in self.procs.values():
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            # The group may outlive its leader (task processes); kill whatever is left.
            _signal_group(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(timeout=10)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


class ApiClient:
    """The Airflow REST API (/api/v2) with a JWT from /auth/token."""

    def __init__(self, base_url: str, username: str = "admin",
                 password: str = "admin-password") -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only; never through a proxy
        self.token = self.get_token(username, password)
        self.session.headers["Authorization"] = f"Bearer {self.token}"

    def get_token(self, username: str, password: str) -> str:
        """A JWT for the user (simple auth manager: POST /auth/token)."""
        response = self.session.post(
            f"{self.base_url}/auth/token", json={"username": username, "password": password},
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A request to ``path`` (relative to the server root)."""
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, f"{self.base_url}{path}", **kwargs)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON body of a successful request; raises with the body on an error status."""
        response = self.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text[:2000]}")
        return response.json()


def run_path(dag_id: str, run_id: str) -> str:
    """The REST API path of one DAG run."""
    return f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"


def task_instances(api: ApiClient, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's task instances by task id."""
    body = api.json("GET", f"{run_path(dag_id, run_id)}/taskInstances")
    return {ti["task_id"]: ti for ti in body["task_instances"]}


def task_log(api: ApiClient, dag_id: str, run_id: str, task_id: str, try_number: int,
             map_index: int = -1) -> str:
    """One try's log, read through the API (the worker's log server); ``map_index`` for one
    instance of a mapped task (train: one per candidate)."""
    body = api.json(
        "GET", f"{run_path(dag_id, run_id)}/taskInstances/{task_id}/logs/{try_number}",
        params={"full_content": "true", "map_index": map_index},
        headers={"Accept": "application/json"},
    )
    content = body.get("content")
    return content if isinstance(content, str) else json.dumps(content)


def _ti_name(ti: dict[str, Any]) -> str:
    return ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")


def run_failure_report(api: ApiClient, services: Services, dag_id: str, run_id: str) -> str:
    """Task states, the failed tasks' logs and the services' logs, for a failure message."""
    body = api.json("GET", f"{run_path(dag_id, run_id)}/taskInstances", params={"limit": 100})
    states = {_ti_name(ti): ti["state"] for ti in body["task_instances"]}
    logs = ""
    for ti in body["task_instances"]:  # mapped instances (train) each on their own
        if ti["state"] not in ("success", None, "scheduled", "queued") and ti["try_number"]:
            text = task_log(api, dag_id, run_id, ti["task_id"], ti["try_number"],
                            ti["map_index"])
            logs += f"\n==== {_ti_name(ti)}\n{text[-3000:]}"
    return f"task states {states}{logs}\n{services.all_logs(2000)}"


def wait_for_run(api: ApiClient, services: Services, dag_id: str, run_id: str,
                 timeout: float) -> dict[str, Any]:
    """Poll the run until it finishes; raise AssertionError with task states and logs unless it
    succeeded."""
    deadline = time.monotonic() + timeout
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        services.check_alive()
        run = api.json("GET", run_path(dag_id, run_id))
        if run["state"] in ("success", "failed"):
            break
        time.sleep(2)
    if run.get("state") == "success":
        return run
    raise AssertionError(f"run {run_id} ended as {run.get('state')!r} after at most "
                         f"{timeout:.0f} s: {run_failure_report(api, services, dag_id, run_id)}")


def wait_until(services: Services, what: str, timeout: float, probe: Callable[[], Any]) -> Any:
    """Poll ``probe()`` every 2 s until it returns something truthy, and return that; raise
    AssertionError naming ``what``, with the services' logs, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        services.check_alive()
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{services.all_logs(2500)}")
        time.sleep(2)


# -- the Celery deployment of tests/integration/conftest.py (``celery_deployment``) -------------

PG_PORT = 5432
REDIS_PORT = 6379
REDIS_DB = int(os.environ.get("MNIST_IT_REDIS_DB", "13"))
DEPLOYMENT_BUCKET = "celery-deployment"
WATCHED_PREFIX = "watched"  # the deployment's MNIST_STORE: the data-triggered scenario's
# The deployment's MNIST_SOURCE, in the bucket, so that a marker's PUT notifies the queue.
SOURCE_PREFIX = "source"
LANDING_QUEUE = "mnist-landing"  # the SQS queue of MNIST_LANDING_EVENTS on the moto server
LANDING_EVENTS_ASSET = "mnist_landing_events"  # the asset its watcher feeds
DAG_ID = "mnist_training"
WATCH_DAG_ID = "mnist_increments_watch"
DEPLOYMENT_FIXTURE = "celery_deployment"
SCORING_DAG_ID = "mnist_batch_scoring"  # scheduled on the registry asset (test_celery_scoring)
SCORING_PREFIX = "scoring"
# Paused until its test lands feedback (test_celery_scoring.py): an interval DAG, every minute.
FEEDBACK_DAG_ID = "mnist_feedback"
WORKERS = 2  # Celery workers, each of concurrency 1; the gpu pool has as many slots


def worker_name(n: int) -> str:
    """The n-th worker's service name (its log: ``<home>/logs/<name>.log``): worker, worker2."""
    return "worker" if n == 1 else f"worker{n}"


@dataclass
class CeleryDeployment:
    """The running deployment: its services, REST API client and data."""

    services: Services
    api: ApiClient
    home: Path
    s3_endpoint: str
    watched_source: Path  # a local copy of MNIST_SOURCE's base: add-increment writes here
    static_source: Path  # the same base, never changed: for runs triggered with a conf
    mnist_dir: Path
    started_s: float  # how long set-up took
    stopped: bool = field(default=False)

    queue_url: str = ""  # MNIST_LANDING_EVENTS's SQS queue

    @property
    def source_uri(self) -> str:
        """MNIST_SOURCE: in the deployment's bucket; its markers notify the queue."""
        return self.store_uri(SOURCE_PREFIX)

    @property
    def s3_client_kwargs(self) -> dict[str, Any]:
        """boto3 arguments for the test process (the services get the same as AWS_* env)."""
        return {"endpoint_url": self.s3_endpoint, "aws_access_key_id": "testing",
                "aws_secret_access_key": "testing", "region_name": "us-east-1"}

    def store_uri(self, prefix: str) -> str:
        """A scenario's own store in the deployment's bucket."""
        return f"s3://{DEPLOYMENT_BUCKET}/{prefix}"

    @property
    def watched_store_uri(self) -> str:
        """The deployment's MNIST_STORE (the watch's record, the Models page's registry)."""
        return self.store_uri(WATCHED_PREFIX)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.services.stop()


@dataclass(frozen=True)
class Broker:
    """The Celery broker of one deployment: a Redis URL and the prefix of all its keys."""

    url: str
    prefix: str


def make_demo_source(mnist_dir: Path, out: Path) -> None:
    """A demo source (base of 50,000 training images, no increment) with the project's CLI."""
    result = subprocess.run(
        [sys.executable, "-m", "mnist_tasks", "data", "make-demo", "--mnist", str(mnist_dir),
         "--out", str(out), "--increments", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def upload_tree(s3: Any, folder: Path, bucket: str, prefix: str) -> list[str]:
    """Upload every file under ``folder`` to ``s3://bucket/prefix/``, each ``_SUCCESS``
    marker after the other files (as a producer lands data); the keys, in upload order."""
    files = sorted((p for p in folder.rglob("*") if p.is_file()),
                   key=lambda p: (p.name == "_SUCCESS", str(p)))
    keys = []
    for path in files:
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        keys.append(key)
    return keys


def wait_for_watcher(services: Services, api: ApiClient, dag_id: str, asset: str,
                     timeout: float = 120) -> None:
    """Have the dag-processor parse ``dag_id``'s file again and wait until ``asset`` has its
    watcher: Airflow starts an asset's watchers when it parses the file of an unpaused DAG
    scheduled on it, and a DAG is paused when first parsed."""
    token = api.json("GET", f"/api/v2/dags/{dag_id}/details")["file_token"]
    response = api.request("PUT", f"/api/v2/parseDagFile/{token}")
    assert response.status_code < 300, response.text
    deadline = time.monotonic() + timeout
    while True:
        services.check_alive()
        found = api.json("GET", "/api/v2/assets", params={"name_pattern": asset})["assets"]
        if any(a["name"] == asset and a["watchers"] for a in found):
            return
        assert time.monotonic() < deadline, (
            f"asset {asset} has no watcher within {timeout:.0f} s\n{services.all_logs()}")
        time.sleep(1)


def wait_for_dag(services: Services, api: ApiClient, dag_id: str, timeout: float = 180) -> None:
    """Wait until the REST API knows ``dag_id`` (the dag-processor has parsed its file)."""
    deadline = time.monotonic() + timeout
    while api.request("GET", f"/api/v2/dags/{dag_id}").status_code != 200:
        services.check_alive()
        assert time.monotonic() < deadline, f"DAG {dag_id} never appeared\n{services.all_logs()}"
        time.sleep(1)
