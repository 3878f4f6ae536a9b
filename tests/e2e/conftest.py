"""A throw-away Airflow (SQLite) that runs this repo's DAG with `airflow dags test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import seed_airflow_home

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


class AirflowCLI:
    """Runs the `airflow` CLI against one AIRFLOW_HOME."""

    def __init__(self, home: Path, extra_env: dict[str, str | None] | None = None) -> None:
        """``extra_env`` values of None remove the variable."""
        self.home = home
        env: dict[str, str | None] = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            # `airflow dags test` on 3.3.2 cannot run DAGs with deadline alerts (see Makefile).
            "MNIST_DEADLINE_MARGIN_MINUTES": "off",
            **(extra_env or {}),
        }
        self.env = {k: v for k, v in env.items() if v is not None}

    def __call__(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AIRFLOW, *args], env=self.env, cwd=REPO, capture_output=True, text=True,
            timeout=timeout,
        )

    def dags_test(self, conf: dict[str, object]) -> subprocess.CompletedProcess[str]:
        return self("dags", "test", "mnist_training", "--conf", json.dumps(conf))


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory,
                 airflow_db_template: Path) -> Iterator[Path]:
    """A throw-away AIRFLOW_HOME with a migrated database (a copy of the session's)."""
    yield seed_airflow_home(tmp_path_factory.mktemp("airflow-home"), airflow_db_template)
