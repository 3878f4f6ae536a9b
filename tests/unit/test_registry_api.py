"""The store-backed Registry implements the ModelRegistry protocol that its users are typed with.

mypy checks the same statically (``registry._store_backed``, under ``make lint``).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from mnist_tasks.registry import Registry
from mnist_tasks.registry_api import CHAMPION, ModelRegistry, PendingVersion, RegistryError
from mnist_tasks.storage import open_store


def _members() -> list[str]:
    return sorted(n for n, v in vars(ModelRegistry).items()
                  if not n.startswith("_") and (callable(v) or isinstance(v, property)))


def champion(registry: ModelRegistry) -> int | None:
    return registry.get_alias(CHAMPION)


def test_a_registry_is_a_model_registry(tmp_path: Path) -> None:
    registry = Registry(open_store(str(tmp_path)), "m")
    assert isinstance(registry, ModelRegistry)
    assert champion(registry) is None
    assert registry.store_uri == registry.store.uri


@pytest.mark.parametrize("name", _members())
def test_each_method_has_the_protocols_signature(name: str) -> None:
    declared = inspect.getattr_static(ModelRegistry, name)
    if isinstance(declared, property):  # attributes: the isinstance check above has them
        return
    implemented = inspect.getattr_static(Registry, name)
    assert inspect.signature(implemented) == inspect.signature(declared), name


def test_the_protocol_covers_what_the_users_need() -> None:
    assert {"get", "exists", "list_versions", "latest", "version_for_run", "get_alias",
            "set_alias", "promote", "rollback", "fetch_model", "fetch_pending_model",
            "read_file", "register", "model_name", "uri", "store_uri"} <= set(_members())


def test_a_pending_model_of_another_registry_is_refused(tmp_path: Path) -> None:
    registry = Registry(open_store(str(tmp_path)), "m")
    other = PendingVersion("other", 1, "run-1", "2026-01-01T00:00:00Z",
                           "file:///x/1", "file:///x/1/model.keras")
    with pytest.raises(RegistryError, match="not a pending version"):
        registry.fetch_pending_model(other, tmp_path)


def test_a_verifier_reads_the_pending_model_and_read_file_checks_the_manifest(
    tmp_path: Path,
) -> None:
    store = open_store(str(tmp_path / "store"))
    registry: ModelRegistry = Registry(store, "m")
    seen: list[bytes] = []

    def verify(pending: PendingVersion) -> dict[str, bool]:
        assert not registry.exists(pending.version)  # not visible yet
        seen.append(registry.fetch_pending_model(pending, tmp_path).read_bytes())
        return {"verified": True}

    info = registry.register("run-1", {"model.keras": b"model", "notes.txt": b"hello"}, {},
                             verify=verify)
    assert seen == [b"model"]
    assert registry.read_file(info.version, "notes.txt") == b"hello"
    store.write_bytes(store.key_of(f"{info.uri}/notes.txt"), b"HELLO")  # damaged in the store
    with pytest.raises(RegistryError, match="does not match the manifest"):
        registry.read_file(info.version, "notes.txt")
    with pytest.raises(RegistryError, match="lists no"):
        registry.read_file(info.version, "model_card.md")
