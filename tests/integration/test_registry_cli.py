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
from mnist_tasks.registry_api import CHAMPION, CorruptedVersion, RegistryError
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
    assert lines[0].split() == ["VERSION", "CREATED", "(UTC)", "TEST", "ACC", "GATE", "APPROVAL",
                                "RUN", "ID", "STATUS"]
    assert lines[1].split()[:2] == ["*", "1"] and "0.9712" in lines[1]
    assert "manual__run-1" in lines[1] and "PROMOTE" in lines[1]
    assert lines[2].split()[0] == "2" and "0.9803" in lines[2]

    out = cli("--store", store.uri, "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["version"], r["champion"], r["test_accuracy"], r["status"]) for r in rows] == [
        (1, True, 0.9712, "ok"), (2, False, 0.9803, "ok")]


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


# --- one broken object never breaks the listing ------------------------------------------------

V2 = "registry/mnist-classifier/versions/000002"


def one_line_error(out: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
    for fragment in fragments:
        assert fragment in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("metadata.json", b'{"metrics": {"test_accuracy": 1.0}}', "does not match its manifest"),
        ("metadata.json", b"not json", "does not match its manifest"),
        ("MANIFEST.json", b"[1, 2]", "expected a JSON object, found list"),
        ("MANIFEST.json", b'{"objects": 3, "run_key": "run-2", "created_at": "x"}',
         "'objects' must map"),
        ("MANIFEST.json", b"{not json", "not valid JSON"),
    ],
)
def test_a_corrupted_version_is_listed_as_such(
    store: Store, name: str, content: bytes, message: str
) -> None:
    registry = populate(store)
    registry.register("run-3", {"model.keras": b"weights 3"}, {"metrics": {}})
    store.write_bytes(f"{V2}/{name}", content)

    assert [v.version for v in registry.list_versions()] == [1, 3]  # the Models page's call
    entries = registry.scan()
    assert [(e.version, e.status) for e in entries] == [(1, "ok"), (2, "corrupted"), (3, "ok")]
    assert entries[1].reason and name in entries[1].reason and message in entries[1].reason
    with pytest.raises(CorruptedVersion, match=name):
        registry.get(2)

    out = cli("--store", store.uri, "list")
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    assert rows[1].split()[:2] == ["*", "1"] and rows[1].split()[-1] == "ok"
    assert rows[2].split()[0] == "2" and rows[2].split()[-1] == "corrupted"
    assert rows[3].split()[0] == "3" and rows[3].split()[-1] == "ok"
    assert any(line.startswith("v2 corrupted: ") and name in line for line in rows)
    out = cli("--store", store.uri, "list", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [(r["version"], r["status"]) for r in listed] == [(1, "ok"), (2, "corrupted"),
                                                            (3, "ok")]
    assert name in listed[1]["reason"]

    for args in (["show", "2"], ["download", "2", str(REPO_ROOT / "never-written")],
                 ["promote", "2"]):
        one_line_error(cli("--store", store.uri, *args), name)
    assert not (REPO_ROOT / "never-written").exists()
    assert registry.get_alias(CHAMPION) == 1


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ([{"seq": "x", "version": 1}], "history entry 0 has seq 'x'"),
        ([{"seq": 2, "version": 1}, {"seq": 1, "version": 2}], "history entry 1 has seq 1"),
        ([{"seq": True, "version": 1}], "history entry 0 has seq True"),
        ("nope", "'history' must be a list"),
    ],
)
def test_a_malformed_alias_is_a_clear_error(store: Store, history: Any, message: str) -> None:
    populate(store)
    key = "registry/mnist-classifier/aliases/champion.json"
    store.write_bytes(key, json.dumps({"alias": "champion", "version": 1, "previous": [],
                                       "history": history}).encode())
    registry = Registry(store)
    with pytest.raises(RegistryError, match=r"champion\.json: malformed alias object"):
        registry.promote(2)
    for args in (["promote", "2"], ["rollback"]):
        one_line_error(cli("--store", store.uri, *args), "aliases/champion.json", message)
    out = cli("--store", store.uri, "list")  # the versions are still listed
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()[1:3]] == ["1", "2"]
    assert "warning: champion unknown: " in out.stdout and message in out.stdout


def test_a_corrupted_run_record_is_a_clear_error(store: Store) -> None:
    registry = populate(store)
    store.write_bytes("registry/mnist-classifier/runs/run-2.json", b'{"version": "two"}')
    with pytest.raises(RegistryError, match=r"runs/run-2\.json: 'version' is 'two'"):
        registry.version_for_run("run-2")
    with pytest.raises(RegistryError, match=r"runs/run-2\.json"):
        registry.register("run-2", {"model.keras": b"weights 2"}, {})


# --- abandoned claims: gaps that stay, shown with their run -----------------------------------


class LosesTheRunRecordRace(Registry):
    """Right after this attempt claims a number, a concurrent attempt of the same run claims the
    next one and records it first; this attempt then loses the race for the run record."""

    def _claim_number(self, run_key: str) -> int:
        number = super()._claim_number(run_key)
        Registry(self.store).register(run_key, {"model.keras": b"the winner"}, {})
        return number


def test_list_all_shows_abandoned_claims_with_their_run(store: Store) -> None:
    info = LosesTheRunRecordRace(store).register("run-x", {"model.keras": b"the loser"}, {})
    assert info.version == 2  # the winner's version; claim 1 is left behind

    def failing_verify(pending: Any) -> None:
        raise RuntimeError("verification failed")

    registry = Registry(store)
    with pytest.raises(RuntimeError, match="verification failed"):
        registry.register("run-y", {"model.keras": b"y"}, {}, verify=failing_verify)
    assert registry.register("run-z", {"model.keras": b"z"}, {}).version == 4  # monotonic

    entries = registry.scan(include_incomplete=True)
    assert [(e.version, e.status, e.run_key) for e in entries] == [
        (1, "abandoned", "run-x"), (2, "ok", None), (3, "incomplete", "run-y"), (4, "ok", None)]
    assert entries[0].reason and "registered as v2 instead" in entries[0].reason

    out = cli("--store", store.uri, "list")
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()[1:3]] == ["2", "4"]
    out = cli("--store", store.uri, "list", "--all")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:5]]
    assert [(r[0], r[-2], r[-1]) for r in rows] == [
        ("1", "run-x", "abandoned"), ("2", "run-x", "ok"), ("3", "run-y", "incomplete"),
        ("4", "run-z", "ok")]
    assert "v1 abandoned: run run-x registered as v2 instead" in out.stdout
    out = cli("--store", store.uri, "list", "--all", "--json")
    listed = json.loads(out.stdout)
    assert [(r["version"], r["status"], r["run_key"]) for r in listed] == [
        (1, "abandoned", "run-x"), (2, "ok", "run-x"), (3, "incomplete", "run-y"),
        (4, "ok", "run-z")]
