"""`python -m mnist_tasks run-all` as a user runs it: a subprocess, tiny synthetic IDX files in a
folder, a file:// store in tmp; every stage in one process, no Airflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_tasks.registry import Registry
from mnist_tasks.storage import LocalStore
from tests.helpers import make_arrays, write_folder

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def _run_all(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MNIST_STORE", None)
    env.pop("MNIST_SOURCE", None)
    return subprocess.run([sys.executable, "-m", "mnist_tasks", "run-all", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=240,
                          check=False)


def test_run_all_on_tiny_data_registers_the_first_version(tmp_path: Path) -> None:
    source = write_folder(tmp_path / "idx", make_arrays(n_train=600, n_test=200, seed=3))
    store_uri = (tmp_path / "store").as_uri()
    proc = _run_all("--source", str(source), "--checksums", "off", "--store", store_uri,
                    "--run-id", "cli-run", "--preset", "seed_mlp", "--epochs", "2",
                    "--batch-size", "32", "--min-accuracy", "0.5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # the result line; the logs go to stderr
    result = json.loads(lines[0])
    assert result["run_id"] == "cli-run"
    assert result["decision"] == "PROMOTE"  # no champion yet: the accuracy floor decides
    assert 0.5 <= result["test_accuracy"] <= 1.0
    assert set(result["timings"]) == {"ingest", "check", "preprocess", "train", "evaluate", "gate",
                                      "register"}

    # The version it reports is in the registry of that store, with that accuracy and run.
    [version] = Registry(LocalStore(tmp_path / "store")).list_versions()
    assert version.version == int(result["version"]) == 1
    assert version.model_uri == result["model_uri"]
    assert version.test_accuracy == pytest.approx(result["test_accuracy"])
    assert (version.run_id, version.gate_decision) == ("cli-run", "PROMOTE")


def test_run_all_with_a_bad_argument_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = _run_all("--source", str(tmp_path / "idx"), "--checksums", "off",
                    "--store", (tmp_path / "store").as_uri(), "--epochs", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "epochs" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "store").exists()
