"""The whole DAG through Airflow on the real MNIST, with the S3 store over HTTP.

Two runs: the first registers version 1 (threshold only, no champion yet); the second is gated
against version 1 (McNemar's test reported) and registers version 2. The S3 credentials come
from an Airflow connection whose secret must never reach the logs or XCom.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from mnist_tasks.storage import S3Store
from tests.conftest import TEST_BUCKET
from tests.e2e.conftest import AirflowCLI

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SECRET = "e2e-Secret-Value-7f3a9c"


def _conn_env(endpoint: str) -> dict[str, str | None]:
    conn = {
        "conn_type": "aws",
        "login": "e2e-access-key",
        "password": SECRET,
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    # Only the connection knows the endpoint and credentials: no AWS_* variables.
    return {
        "AIRFLOW_CONN_MNIST_S3": json.dumps(conn),
        "AWS_ENDPOINT_URL_S3": None,
        "AWS_ACCESS_KEY_ID": None,
        "AWS_SECRET_ACCESS_KEY": None,
    }


def test_two_dag_runs_register_versions_1_and_2_on_s3(
    airflow_home: Path, mnist_dir: Path, s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = AirflowCLI(airflow_home, _conn_env(s3_env))
    store_uri = f"s3://{TEST_BUCKET}/e2e"
    conf = {"source": str(mnist_dir), "store": store_uri, "preset": "seed_mlp"}

    first = cli.dags_test(conf)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-6000:]
    assert SECRET not in output
    # The operator sees the validation summary and the per-epoch lines in the task logs.
    assert "leakage" in output.lower()
    assert "epoch 10/10" in output

    second = cli.dags_test(conf)
    output2 = second.stdout + second.stderr
    assert second.returncode == 0, output2[-6000:]
    assert SECRET not in output2
    assert "mcnemar" in output2.lower()

    # XCom holds references and small dicts only, never the secret.
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        values = [str(v) for (v,) in db.execute("select value from xcom")]
    assert values and not any(SECRET in v for v in values)
    # Each run's train task noted its last checkpoint in Airflow's task state store.
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        notes = [json.loads(v) for (v,) in db.execute(
            "select value from task_state_store where task_id = 'train' and key = ? "
            "order by id", ("train_progress",))]
    assert [(n["epoch"], n["epochs"]) for n in notes] == [(10, 10), (10, 10)]
    assert all(n["checkpoint_uri"].startswith(f"{store_uri}/runs/") for n in notes)

    from mnist_tasks.artifacts import load_model_from_store, predict_classes
    from mnist_tasks.idx import decompress, parse_idx
    from mnist_tasks.registry import Registry

    store = S3Store(TEST_BUCKET, "e2e")
    registry = Registry(store)
    versions = registry.list_versions()
    assert [v.version for v in versions] == [1, 2]
    assert registry.get_alias("champion") == 2
    for info in versions:
        assert info.metadata["metrics"]["test_accuracy"] >= 0.975
    gate2 = versions[1].metadata["gate"]
    assert gate2["champion_version"] == 1
    assert 0.0 <= gate2["mcnemar"]["p_value"] <= 1.0

    # The model loaded back from S3 reproduces the recorded accuracy on the real test set.
    def read(name: str) -> np.ndarray:
        path = mnist_dir / name
        return parse_idx(decompress(path.read_bytes(), source=str(path)), source=str(path))

    x_test = read("t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y_test = read("t10k-labels-idx1-ubyte.gz")
    model = load_model_from_store(store, registry.model_uri(2))
    accuracy = float(np.mean(predict_classes(model, x_test) == y_test))
    assert accuracy == pytest.approx(versions[1].metadata["metrics"]["test_accuracy"], abs=1e-9)
