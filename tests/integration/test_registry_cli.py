"""The registry command line, run as a real subprocess (``python -m mnist_tasks.registry``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mnist_tasks.registry import Registry
from mnist_tasks.storage import LocalStore, S3Store, Store

REPO_ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "MNIST_STORE"}
    return subprocess.run([sys.executable, "-m", "mnist_tasks.registry", *args], cwd=REPO_ROOT,
                          env={**base, **(env or {})}, capture_output=True, text=True, timeout=60)


def populate(store: Store) -> Registry:
    registry = Registry(store)
    for i, accuracy in ((1, 0.9712), (2, 0.9803)):
        registry.register(
            f"run-{i}",
            {"model.keras": f"weights {i}".encode(), "metrics.json": b"{}"},
            {"run": {"run_id": f"manual__run-{i}"}, "metrics": {"test_accuracy": accuracy},
             "gate": {"decision": "PROMOTE"}},
        )
    registry.promote(1)
    return registry


@pytest.fixture
def local(file_store: LocalStore) -> tuple[LocalStore, Registry]:
    return file_store, populate(file_store)


def test_list_table_and_json(local: tuple[LocalStore, Registry]) -> None:
    store, _ = local
    out = cli("--store", store.uri, "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "CREATED", "(UTC)", "TEST", "ACC", "GATE", "RUN", "ID"]
    assert lines[1].split()[:2] == ["*", "1"] and "0.9712" in lines[1]
    assert "manual__run-1" in lines[1] and "PROMOTE" in lines[1]
    assert lines[2].split()[0] == "2" and "0.9803" in lines[2]

    out = cli("--store", store.uri, "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["version"], r["champion"], r["test_accuracy"]) for r in rows] == [
        (1, True, 0.9712), (2, False, 0.9803)]


def test_show(local: tuple[LocalStore, Registry]) -> None:
    store, registry = local
    out = cli("--store", store.uri, "show", "2", "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["version"] == 2 and shown["run_key"] == "run-2" and shown["aliases"] == []
    assert shown["model_uri"] == registry.model_uri(2)
    out = cli("--store", store.uri, "show", "1")
    assert out.returncode == 0, out.stderr
    assert "mnist-classifier v1  [champion]" in out.stdout
    assert "test accuracy 0.9712" in out.stdout and "model.keras" in out.stdout


def test_promote_rollback_download(local: tuple[LocalStore, Registry], tmp_path: Path) -> None:
    store, registry = local
    out = cli("--store", store.uri, "promote", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "champion -> v2 (was v1)"
    assert registry.get_alias("champion") == 2

    out = cli("--store", store.uri, "rollback", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["version"] == 1 and registry.get_alias("champion") == 1

    out = cli("--store", store.uri, "download", "2", str(tmp_path / "v2"))
    assert out.returncode == 0, out.stderr
    assert "SHA-256 verified" in out.stdout
    data = (tmp_path / "v2" / "model.keras").read_bytes()
    assert data == b"weights 2"
    assert registry.get(2).files["model.keras"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_store_from_environment(local: tuple[LocalStore, Registry]) -> None:
    store, _ = local
    out = cli("list", "--json", env={"MNIST_STORE": store.uri})
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "../1"], "invalid version '../1'"),
        (["show", "99"], "has no version 99"),
        (["promote", "1/../2"], "invalid version '1/../2'"),
        (["--model-name", "../x", "list"], "invalid model name '../x'"),
        (["rollback"], "no previous version to roll back to"),
        (["download", "7", "somewhere"], "has no version 7"),
    ],
)
def test_errors_exit_2_with_one_line(
    local: tuple[LocalStore, Registry], args: list[str], message: str
) -> None:
    store, _ = local
    out = cli("--store", store.uri, *args)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ")
    assert message in out.stderr


def test_missing_store_is_an_error() -> None:
    out = cli("list")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: no store given: pass --store URI or set MNIST_STORE"


def test_list_on_s3(s3_store: S3Store) -> None:
    populate(s3_store)
    # the subprocess finds the S3 endpoint and credentials the standard way (AWS_* variables)
    out = cli("--store", s3_store.uri, "list", "--json")
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    assert [r["version"] for r in rows] == [1, 2]
    assert rows[0]["model_uri"].startswith("s3://mnist-test/store/registry/")
