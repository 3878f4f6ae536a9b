"""``make airflow``, the README's way to the UI: ``airflow standalone`` with this repository's DAGs.

It runs as a user's shell would run it: from this checkout, with a PATH that does not hold
.venv/bin, an AIRFLOW_HOME of its own (a fresh one, which ``make airflow`` migrates first) and
free ports, so the checkout's .airflow and .store are never touched. Checked: every part that
standalone starts (scheduler, dag-processor, triggerer, api-server) reports healthy; the UI is
served; the REST API refuses a request without a login and, with a token for the admin password
that standalone generated into AIRFLOW_HOME, lists the three DAGs, paused, without import
errors. Then the command's process group is stopped and no process of it is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import requests

from tests.integration.airflow_services import REPO, ApiClient, Services, free_port

DAG_IDS = {"mnist_training", "mnist_increments_watch", "mnist_batch_scoring"}
PARTS = {"metadatabase", "scheduler", "triggerer", "dag_processor"}  # the health endpoint's
START_TIMEOUT_S = 240.0  # about 15 s on an idle machine; `make test` runs other work beside it
STOP_TIMEOUT_S = 30.0
NAME = "standalone"  # the service's name for Services (its log: <tmp>/logs/standalone.log)
# The simple auth manager's file of generated passwords (standalone makes it for `admin`).
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


def _user_env(home: Path, port: int) -> dict[str, str]:
    """A user's shell: no Airflow or pipeline settings, no make variables, .venv/bin not on PATH;
    then AIRFLOW_HOME and the ports of this test."""
    venv_bin = (REPO / ".venv" / "bin").resolve()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AIRFLOW", "MNIST_", "MAKE"))
           and key not in ("MFLAGS", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(
        entry for entry in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if entry and Path(entry).resolve() != venv_bin)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        # The LocalExecutor forks one idle worker per slot (32 by default); no task runs here.
        "AIRFLOW__CORE__PARALLELISM": "2",
    })
    return env


def _processes(pgid: int, home: Path) -> dict[int, str]:
    """Live processes (zombies aside) in the process group ``pgid``, or with ``home`` as their
    AIRFLOW_HOME (one that left the group): pid -> command line."""
    mark = f"AIRFLOW_HOME={home}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, pgrp = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            if state == "Z":
                continue
            if int(pgrp) != pgid and mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace").strip()
        except (OSError, ValueError):
            continue  # gone meanwhile, or another user's
    return found


def _wait_healthy(services: Services, session: requests.Session,
                  base_url: str) -> dict[str, dict[str, object]]:
    """The health endpoint's answer once every part is healthy; fails at once if the command
    exits or one of standalone's start-up threads dies (how a missing ``airflow`` on PATH
    shows), else at the deadline."""
    deadline = time.monotonic() + START_TIMEOUT_S
    health: dict[str, dict[str, object]] = {}
    while time.monotonic() < deadline:
        services.check_alive()
        log = services.log_tail(NAME, 1_000_000)
        assert "Exception in thread" not in log, f"a part did not start:\n{log[-6000:]}"
        with contextlib.suppress(requests.RequestException, ValueError):
            health = session.get(f"{base_url}/api/v2/monitor/health", timeout=5).json()
        if set(health) >= PARTS and all(health[part].get("status") == "healthy" for part in PARTS):
            return health
        time.sleep(0.5)
    raise AssertionError(f"not healthy within {START_TIMEOUT_S:.0f} s: {health}\n"
                         f"{services.all_logs(6000)}")


def _wait_for_dags(api: ApiClient) -> list[dict[str, Any]]:
    """The DAG list once it holds :data:`DAG_IDS` (the dag-processor's first parse)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        dags = api.json("GET", "/api/v2/dags", params={"limit": 100})["dags"]
        if {dag["dag_id"] for dag in dags} >= DAG_IDS or time.monotonic() > deadline:
            return dags
        time.sleep(0.5)


def _stop(services: Services, pgid: int, home: Path) -> dict[int, str]:
    """Stop the command's process group (SIGTERM, then SIGKILL); what is still alive after
    :data:`STOP_TIMEOUT_S` is killed and returned."""
    services.stop(timeout=STOP_TIMEOUT_S)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while (left := _processes(pgid, home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def test_make_airflow_serves_the_dags_behind_a_login(tmp_path: Path) -> None:
    home, port = tmp_path / "airflow-home", free_port()
    base_url = f"http://127.0.0.1:{port}"
    services = Services(_user_env(home, port), tmp_path / "logs")
    session = requests.Session()
    session.trust_env = False  # loopback only; never through a proxy
    # `-o .venv/bin/activate`: this test runs in that venv, which make must never rebuild under
    # it (it would, were pyproject.toml newer); `make test` has just brought it up to date.
    started = time.monotonic()
    proc = services.start_command(NAME, ["make", "--no-print-directory", "-o",
                                         ".venv/bin/activate", "airflow",
                                         f"STORE=file://{tmp_path / 'store'}"])
    try:
        health = _wait_healthy(services, session, base_url)
        print(f"\nmake airflow: healthy after {time.monotonic() - started:.1f} s: {health}")

        ui = session.get(f"{base_url}/", timeout=30)
        assert ui.status_code == 200 and "text/html" in ui.headers["content-type"]
        assert session.get(f"{base_url}/api/v2/dags", timeout=30).status_code == 401

        passwords = json.loads((home / PASSWORDS_FILE).read_text())
        api = ApiClient(base_url, "admin", passwords["admin"])
        dags = {dag["dag_id"]: dag for dag in _wait_for_dags(api)}
        assert set(dags) >= DAG_IDS, f"{sorted(dags)}\n{services.all_logs(6000)}"
        assert all(dags[dag_id]["is_paused"] for dag_id in DAG_IDS)  # the README: start paused
        errors = api.json("GET", "/api/v2/importErrors")
        assert errors["total_entries"] == 0, errors
    finally:
        left = _stop(services, proc.pid, home)
    assert not left, f"still running after make airflow was stopped: {left}"
