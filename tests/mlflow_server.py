"""A real ``mlflow server`` for the tests, from its own environment (.venv-mlflow).

``make mlflow-venv`` builds the environment from requirements-mlflow-lock.txt (seconds with
uv's cache); :func:`running_server` starts the server on a free loopback port with a SQLite
backend store and a local artifact root served through its artifact proxy, and stops it::

    with running_server(tmp_path) as location:   # "mlflow+http://127.0.0.1:PORT"
        MlflowRegistry(location, "mnist-classifier").list_versions()
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import REPO

MLFLOW_VENV = REPO / ".venv-mlflow"
START_TIMEOUT_S = 180.0


def mlflow_python() -> Path:
    """The MLflow environment's python, built by ``make mlflow-venv`` when missing or stale."""
    result = subprocess.run(["make", "-s", "mlflow-venv"], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"make mlflow-venv failed: {result.stdout[-2000:]}"
                           f"{result.stderr[-2000:]}")
    return MLFLOW_VENV / "bin" / "python"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(folder: Path) -> Iterator[str]:
    """An MLflow server whose database and artifacts are in ``folder``; yields its
    ``mlflow+http://`` location, and stops it (its whole process group) on exit."""
    python = mlflow_python()
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # No job runner (huey consumers, each importing mlflow again): the registry needs none,
    # and the start takes a third of the CPU.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(python), "-m", "mlflow", "server",
             "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}: "
                                   f"{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server not healthy after {START_TIMEOUT_S} s: "
                                       f"{log_path.read_text()[-3000:]}") from None
                time.sleep(0.25)
        yield f"mlflow+http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
