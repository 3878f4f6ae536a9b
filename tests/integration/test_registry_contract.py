"""The registry contract, run unchanged against every backend: the store-backed registry on
file:// and on S3 over HTTP (moto server), and the MLflow-backed one on a real MLflow server.

A test reaches what a backend keeps under the registry (to read its manifest, tamper with a
file, or check that nothing was written) only through :class:`Backend`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from mnist_tasks.mlflow_rest import MlflowRest
from mnist_tasks.registry import Registry
from mnist_tasks.registry_api import (
    CHAMPION,
    AliasConflict,
    ImmutableVersionError,
    InvalidName,
    ModelRegistry,
    PendingVersion,
    RegistryError,
    VersionNotFound,
)
from mnist_tasks.registry_mlflow import MODEL_PATH, TAG_ARTIFACTS, MlflowRegistry
from mnist_tasks.storage import Store

MODEL = "mnist-classifier"


class Backend:
    """One registry backend under test: opens its registries and reaches behind them."""

    def __init__(self, store: Store | None = None, mlflow: str | None = None) -> None:
        self.store, self.mlflow = store, mlflow
        if mlflow is not None:  # the server is shared by the session: start from no model
            self.rest = MlflowRest(mlflow)
            for model in self.rest.call("GET", "registered-models/search",
                                        params={"max_results": 1000}).get(
                                            "registered_models", []):
                self.rest.call("DELETE", "registered-models/delete",
                               body={"name": model["name"]})

    def open(self, model_name: str = MODEL) -> ModelRegistry:
        if self.mlflow is not None:
            return MlflowRegistry(self.mlflow, model_name)
        assert self.store is not None
        return Registry(self.store, model_name)

    def model_uri(self, version: int) -> str:
        if self.mlflow is not None:
            return f"{self.mlflow}/{MODEL}/versions/{version}/model.keras"
        assert self.store is not None
        return self.store.uri_for(f"registry/{MODEL}/versions/{version:06d}/model.keras")

    def _path(self, version: int, name: str) -> str:
        if self.mlflow is not None:
            raw = self.rest.call("GET", "model-versions/get",
                                 params={"name": MODEL, "version": str(version)})
            tags = {t["key"]: t["value"] for t in raw["model_version"]["tags"]}
            return f"{tags[TAG_ARTIFACTS]}/{MODEL_PATH if name == 'model.keras' else name}"
        return f"registry/{MODEL}/versions/{version:06d}/{name}"

    def read_raw(self, version: int, name: str) -> bytes:
        """A version's file as the backend keeps it, unchecked."""
        if self.mlflow is not None:
            return self.rest.get_artifact(self._path(version, name))
        assert self.store is not None
        return self.store.read_bytes(self._path(version, name))

    def has_raw(self, version: int, name: str) -> bool:
        try:
            self.read_raw(version, name)
        except Exception:
            return False
        return True

    def tamper(self, version: int, name: str, data: bytes) -> None:
        """Overwrite a version's file behind the registry's back."""
        if self.mlflow is not None:
            self.rest.put_artifact(self._path(version, name), data)
        else:
            assert self.store is not None
            self.store.write_bytes(self._path(version, name), data)

    def nothing_written(self) -> bool:
        if self.mlflow is not None:
            return not self.rest.call("GET", "registered-models/search").get("registered_models")
        assert self.store is not None
        return self.store.list("") == []


@pytest.fixture(params=["file", "s3", "mlflow"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """The store-backed registry on each store, and the MLflow-backed one."""
    if request.param == "mlflow":
        return Backend(mlflow=request.getfixturevalue("mlflow_server"))
    return Backend(store=request.getfixturevalue(f"{request.param}_store"))


def files_for(tag: str) -> dict[str, Any]:
    return {
        "model.keras": f"model bytes of {tag}".encode(),
        "metrics.json": json.dumps({"test_accuracy": 0.98}).encode(),
        "report.txt": f"report of {tag}".encode(),
    }


def meta_for(run: str, accuracy: float = 0.98) -> dict[str, Any]:
    return {
        "run": {"dag_id": "mnist_training", "run_id": f"manual__{run}", "run_key": run},
        "metrics": {"test_accuracy": accuracy},
        "gate": {"decision": "PROMOTE"},
        "code_version": "abc123",
    }


def register(registry: ModelRegistry, run: str, accuracy: float = 0.98) -> int:
    return registry.register(run, files_for(run), meta_for(run, accuracy)).version


def test_register_get_list_download(backend: Backend, tmp_path: Path) -> None:
    registry = backend.open()
    src = tmp_path / "model.keras"
    src.write_bytes(b"a model file on disk")
    files = {**files_for("r1"), "model.keras": src}
    info = registry.register("r1", files, meta_for("r1", 0.975))

    assert info.version == 1
    assert info.run_key == "r1" and info.run_id == "manual__r1"
    assert info.test_accuracy == 0.975 and info.gate_decision == "PROMOTE"
    assert info.model_uri == backend.model_uri(1)
    assert info.uri.startswith(registry.uri + "/") and info.model_uri.startswith(info.uri + "/")
    assert registry.model_uri(1) == info.model_uri
    assert set(info.files) == {"model.keras", "metrics.json", "report.txt", "metadata.json"}
    assert info.files["model.keras"] == {
        "sha256": hashlib.sha256(b"a model file on disk").hexdigest(), "size": 20}
    # the registry adds identity fields to the caller's metadata
    assert info.metadata["version"] == 1 and info.metadata["model_name"] == "mnist-classifier"
    assert info.metadata["code_version"] == "abc123"
    assert info.created_at == info.metadata["created_at"]

    manifest = json.loads(backend.read_raw(1, "MANIFEST.json"))
    for name, entry in manifest["objects"].items():
        data = backend.read_raw(1, name)
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    assert register(registry, "r2") == 2
    assert [v.version for v in registry.list_versions()] == [1, 2]
    assert registry.latest() is not None and registry.latest().version == 2  # type: ignore[union-attr]
    assert registry.get("2") == registry.get(2)
    assert registry.version_for_run("r2").version == 2  # type: ignore[union-attr]
    assert registry.version_for_run("never-ran") is None

    dest = registry.download(1, tmp_path / "dl")
    assert (dest / "model.keras").read_bytes() == b"a model file on disk"
    assert json.loads((dest / "metadata.json").read_text())["version"] == 1
    assert (dest / "MANIFEST.json").is_file()
    assert registry.fetch_model(2, tmp_path / "m").read_bytes() == b"model bytes of r2"


def test_register_is_idempotent_per_run(backend: Backend) -> None:
    registry = backend.open()
    first = registry.register("run-a", files_for("run-a"), meta_for("run-a"))
    again = registry.register("run-a", files_for("other bytes"), meta_for("run-a", 0.5))
    assert again == first
    assert [v.version for v in registry.list_versions()] == [1]
    assert registry.get(1).test_accuracy == 0.98  # the first registration stands


def test_late_files_see_their_version_and_verify_runs_before_visibility(
        backend: Backend, tmp_path: Path) -> None:
    registry = backend.open()
    register(registry, "r0")
    seen: list[PendingVersion] = []

    def card(pending: PendingVersion) -> bytes:
        return f"card of v{pending.version} ({pending.created_at})".encode()

    def verify(pending: PendingVersion) -> dict[str, Any]:
        seen.append(pending)
        fetched = registry.fetch_pending_model(pending, tmp_path / "pending")
        assert fetched.read_bytes() == b"model bytes of r1"
        assert not registry.exists(pending.version)  # not visible while verifying
        return {"verified": True}

    info = registry.register("r1", {**files_for("r1"), "model_card.md": card}, meta_for("r1"),
                             verify=verify)
    assert seen[0].version == info.version == 2
    card_text = registry.read_file(info.version, "model_card.md").decode()
    assert card_text == f"card of v2 ({info.created_at})"
    assert info.metadata["verification"] == {"verified": True}


def test_failed_verification_leaves_version_invisible_and_retry_resumes(
        backend: Backend) -> None:
    registry = backend.open()

    def bad(pending: PendingVersion) -> None:
        raise ValueError(f"v{pending.version} predicts differently")

    with pytest.raises(ValueError, match="predicts differently"):
        registry.register("r1", files_for("r1"), meta_for("r1"), verify=bad)
    # the objects are there, but without a manifest nobody sees the version
    assert backend.has_raw(1, "model.keras")
    assert registry.list_versions() == []
    assert registry.version_for_run("r1") is None
    with pytest.raises(VersionNotFound, match="no version 1"):
        registry.get(1)
    with pytest.raises(VersionNotFound):
        registry.promote(1)
    assert registry.get_alias(CHAMPION) is None

    info = registry.register("r1", files_for("r1"), meta_for("r1"))  # the retry completes v1
    assert info.version == 1
    assert [v.version for v in registry.list_versions()] == [1]


def test_complete_versions_are_immutable(backend: Backend, tmp_path: Path) -> None:
    registry = backend.open()
    info = registry.get(register(registry, "r1"))
    pending = PendingVersion(info.model_name, info.version, info.run_key, info.created_at,
                             info.uri, info.model_uri)
    with pytest.raises(ImmutableVersionError, match=r"complete and immutable.*model\.keras"):
        registry._put(pending, "model.keras", b"replacement")  # type: ignore[attr-defined]
    assert registry.fetch_model(1, tmp_path).read_bytes() == b"model bytes of r1"


def test_corruption_is_detected(backend: Backend, tmp_path: Path) -> None:
    registry = backend.open()
    register(registry, "r1")
    backend.tamper(1, "model.keras", b"tampered")
    with pytest.raises(RegistryError, match=r"model\.keras.*does not match the manifest"):
        registry.download(1, tmp_path / "dl")
    assert not (tmp_path / "dl" / "model.keras").exists()
    backend.tamper(1, "metadata.json", b"{}")
    with pytest.raises(RegistryError, match="corrupted"):
        registry.get(1)


def test_alias_promote_rollback_and_history(backend: Backend) -> None:
    registry = backend.open()
    for run in ("r1", "r2", "r3"):
        register(registry, run)
    assert registry.get_alias(CHAMPION) is None
    with pytest.raises(RegistryError, match="not set; nothing to roll back"):
        registry.rollback()

    registry.promote(1)
    registry.promote("2")
    record = registry.promote(3)
    assert (record.version, record.previous) == (3, (1, 2))
    assert registry.promote(3) == registry.alias_record(CHAMPION)  # no-op, no new history
    assert [h["version"] for h in registry.alias_record(CHAMPION).history] == [1, 2, 3]  # type: ignore[union-attr]

    record = registry.rollback()
    assert (record.version, record.previous) == (2, (1,))
    record = registry.rollback()
    assert (record.version, record.previous) == (1, ())
    with pytest.raises(RegistryError, match="no previous version"):
        registry.rollback()
    final = registry.alias_record(CHAMPION)
    assert final is not None
    assert [(h["seq"], h["version"], h["action"]) for h in final.history] == [
        (1, 1, "set"), (2, 2, "set"), (3, 3, "set"), (4, 2, "rollback"), (5, 1, "rollback")]
    assert registry.aliases() == {CHAMPION: 1}


def test_alias_compare_and_swap_expectations(backend: Backend) -> None:
    registry = backend.open()
    register(registry, "r1")
    register(registry, "r2")
    registry.set_alias("staging", 1, expected=None)
    with pytest.raises(AliasConflict, match="points to 1, expected nothing"):
        registry.set_alias("staging", 2, expected=None)
    with pytest.raises(AliasConflict, match="points to 1, expected 2"):
        registry.set_alias("staging", 2, expected=2)
    assert registry.set_alias("staging", 2, expected=1).version == 2
    with pytest.raises(VersionNotFound, match="version 7"):
        registry.set_alias("staging", 7)
    assert registry.get_alias("staging") == 2


def test_model_file_and_reserved_names(backend: Backend) -> None:
    registry = backend.open()
    with pytest.raises(ValueError, match=r"must include 'model\.keras'"):
        registry.register("r1", {"metrics.json": b"{}"}, {})
    for reserved in ("MANIFEST.json", "metadata.json", "claim.json"):
        with pytest.raises(InvalidName, match="reserved"):
            registry.register("r1", {**files_for("r1"), reserved: b"x"}, {})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        registry.register("r1", files_for("r1"), {"bad": object()})
    assert backend.nothing_written()  # nothing claimed by refused calls


BAD_VERSIONS = ["../1", "1/../2", "-1", "0", "abc", "1.0", " 1", "1234567", "", "0x1", "１"]


@pytest.mark.parametrize("bad", BAD_VERSIONS)
def test_bad_version_strings_are_refused(backend: Backend, bad: str) -> None:
    registry = backend.open()
    register(registry, "r1")
    for call in (registry.get, registry.exists, registry.model_uri, registry.promote):
        with pytest.raises(InvalidName, match="invalid version") as err:
            call(bad)
        assert repr(bad) in str(err.value)


@pytest.mark.parametrize("bad", ["../escape", "a/b", "UPPER", "", ".hidden", "a..b", "x" * 64])
def test_bad_model_names_are_refused(backend: Backend, bad: str) -> None:
    with pytest.raises(InvalidName, match="invalid model name") as err:
        backend.open(bad)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("bad", ["../champion", "champ/ion", "Champion", "", "9lives", "a..b"])
def test_bad_aliases_are_refused(backend: Backend, bad: str) -> None:
    registry = backend.open()
    register(registry, "r1")
    with pytest.raises(InvalidName, match="invalid alias") as err:
        registry.set_alias(bad, 1)
    assert repr(bad) in str(err.value)
    with pytest.raises(InvalidName):
        registry.get_alias(bad)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "run/1", "", "-lead", "a..b", "r" * 201,
                                 "white space"])
def test_bad_run_keys_are_refused(backend: Backend, bad: str) -> None:
    registry = backend.open()
    with pytest.raises(InvalidName, match="invalid run key") as err:
        registry.register(bad, files_for("x"), {})
    assert repr(bad) in str(err.value)
    with pytest.raises(InvalidName, match="invalid run key"):
        registry.version_for_run(bad)
    assert backend.nothing_written()


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", "", "a..b", "/abs"])
def test_bad_file_names_are_refused(backend: Backend, bad: str) -> None:
    registry = backend.open()
    with pytest.raises(InvalidName, match="invalid file name") as err:
        registry.register("r1", {**files_for("x"), bad: b"data"}, {})
    assert repr(bad) in str(err.value)
    assert backend.nothing_written()
