"""The landing check through Airflow: `airflow dags test mnist_increments_watch`, twice, on a
source folder with one complete increment and a store in tmp. The first run's `land` succeeds
and emits one `mnist_increments` event (queued for mnist_training); the second is skipped and
emits none."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks.demo_data import write_increment
from tests.helpers import seed_airflow_home

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory,
               airflow_db_template: Path) -> tuple[Run, Path, Path]:
    """A throw-away Airflow (SQLite, migrated) whose MNIST_SOURCE and MNIST_STORE are in tmp."""
    home = seed_airflow_home(tmp_path_factory.mktemp("airflow-home"), airflow_db_template)
    data = tmp_path_factory.mktemp("watch-data")
    source = data / "source"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "MNIST_SOURCE": str(source),
        "MNIST_STORE": (data / "store").as_uri(),
        "MNIST_DEADLINE_MARGIN_MINUTES": "off",  # mnist_training is parsed too (see Makefile)
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([AIRFLOW, *args], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, f"airflow {' '.join(args)}:\n{out.stdout[-3000:]}\n" \
                                    f"{out.stderr[-3000:]}"
        return out

    run("dags", "reserialize")  # mnist_training's schedule on the asset is in the database
    run("dags", "unpause", "mnist_training")  # events are queued for unpaused DAGs only
    return run, home / "airflow.db", source


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _land_states(db: Path) -> list[str]:
    return [s for (s,) in _rows(db, "SELECT state FROM task_instance WHERE dag_id = "
                                    "'mnist_increments_watch' AND task_id = 'land' "
                                    "ORDER BY start_date")]


def _events(db: Path) -> list[dict[str, Any]]:
    rows = _rows(db, "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                     "WHERE a.name = 'mnist_increments' ORDER BY e.id")
    return [json.loads(extra) for (extra,) in rows]


def test_a_landed_increment_is_announced_once(deployment: tuple[Run, Path, Path]) -> None:
    run, db, source = deployment
    rng = np.random.default_rng(0)
    images = np.where(rng.random((30, 28, 28)) < 0.2, 255, 0).astype(np.uint8)
    write_increment(source, "2026-11-20", images, (np.arange(30) % 10).astype(np.uint8))

    first = run("dags", "test", "mnist_increments_watch")
    assert _land_states(db) == ["success"], first.stdout[-3000:]
    assert _events(db) == [{"increments": ["2026-11-20"], "source": str(source)}]
    assert "NEW INCREMENTS" in first.stdout + first.stderr
    # The scheduler would start mnist_training on it: the event is queued for that DAG.
    assert _rows(db, "SELECT target_dag_id FROM asset_dag_run_queue") == [("mnist_training",)]

    second = run("dags", "test", "mnist_increments_watch")
    assert _land_states(db) == ["success", "skipped"], second.stdout[-3000:]
    assert len(_events(db)) == 1  # a skipped task emits no asset event
