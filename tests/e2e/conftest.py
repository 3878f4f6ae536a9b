"""A throw-away Airflow home (SQLite) per test module, where ``tests.helpers.AirflowCLI`` runs
this repo's DAG with `airflow dags test`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import seed_airflow_home


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory,
                 airflow_db_template: Path) -> Iterator[Path]:
    """A throw-away AIRFLOW_HOME with a migrated database (a copy of the session's)."""
    yield seed_airflow_home(tmp_path_factory.mktemp("airflow-home"), airflow_db_template)
