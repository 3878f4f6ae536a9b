"""Storage failures in the middle of a registration or an alias move, on file:// and S3.

Two kinds of failure:

* fault injection at our storage boundary: a Store wrapper whose K-th write raises
  StorageError (the backend itself, file or the S3 server over HTTP, stays real). Every K from
  the first write to the last is tried;
* a real outage: a dedicated S3 server over HTTP is stopped after K writes, so the next
  request fails in boto3; then a new server is started (moto keeps its data in the process, so
  the objects written before the outage are still there, as they would be on real S3).

After each failure no partial version may be visible, and a retry with a healthy store must
succeed and produce exactly one visible version for the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mnist_tasks.registry import CHAMPION, Registry
from mnist_tasks.storage import S3Store, StorageError, Store

FILES = {"model.keras": b"the weights", "metrics.json": b'{"test_accuracy": 0.98}',
         "report.txt": b"the report"}
META = {"metrics": {"test_accuracy": 0.98}, "gate": {"decision": "PROMOTE"}}


class FaultyStore(Store):
    """Delegates to ``inner``; calls ``on_fail`` (default: raise StorageError) at write ``fail_at``.

    Writes are counted from 0; ``fail_at=None`` never fails.
    """

    def __init__(self, inner: Store, fail_at: int | None = None,
                 on_fail: Callable[[], None] | None = None) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.fail_at = fail_at
        self.on_fail = on_fail
        self.writes = 0

    def _write(self, key: str) -> None:
        n, self.writes = self.writes, self.writes + 1
        if n == self.fail_at:
            if self.on_fail is None:
                raise StorageError(f"{self.uri_for(key)}: injected failure at write {n}")
            self.on_fail()

    def read_bytes(self, key: str) -> bytes:
        return self.inner.read_bytes(key)

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        return self.inner.read_with_etag(key)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._write(key)
        self.inner.write_bytes(key, data)

    def write_if_absent(self, key: str, data: bytes) -> bool:
        self._write(key)
        return self.inner.write_if_absent(key, data)

    def write_if_match(self, key: str, data: bytes, etag: str) -> bool:
        self._write(key)
        return self.inner.write_if_match(key, data, etag)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def download_file(self, key: str, dest: str | os.PathLike[str]) -> None:
        self.inner.download_file(key, dest)

    def upload_file(self, src: str | os.PathLike[str], key: str) -> None:
        self._write(key)
        self.inner.upload_file(src, key)

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        with self.inner.local_copy(key) as path:
            yield path


def writes_per_registration(store: Store) -> int:
    counter = FaultyStore(store)
    Registry(counter, "write-counter").register("count-run", FILES, META)
    return counter.writes


def assert_nothing_visible(registry: Registry, run_key: str) -> None:
    assert registry.list_versions() == []
    assert registry.latest() is None
    assert registry.version_for_run(run_key) is None
    for n in range(1, 4):
        assert not registry.exists(n)


def test_failure_at_every_write_leaves_nothing_visible_and_retry_succeeds(
    store: Store, tmp_path: Path
) -> None:
    total = writes_per_registration(store)
    assert total == 2 + len(FILES) + 2  # claim, run record, files, metadata, manifest
    for fail_at in range(total):
        name = f"model-{fail_at}"
        with pytest.raises(StorageError, match="injected failure"):
            Registry(FaultyStore(store, fail_at), name).register("run-1", FILES, META)
        registry = Registry(store, name)
        assert_nothing_visible(registry, "run-1")

        info = registry.register("run-1", FILES, META)  # the retry, on a healthy store
        # A crash before the run record leaves an orphan claim (v1) and the retry takes v2;
        # after it, the retry resumes the run's own version.
        assert info.version == (2 if fail_at == 1 else 1), fail_at
        assert [v.version for v in registry.list_versions()] == [info.version]
        assert registry.register("run-1", FILES, META) == info  # and it stays idempotent
        dest = registry.download(info.version, tmp_path / name)
        for file, data in FILES.items():
            assert (dest / file).read_bytes() == data
        expected = hashlib.sha256(FILES["model.keras"]).hexdigest()
        assert info.files["model.keras"]["sha256"] == expected


def test_failed_alias_move_leaves_the_alias_as_it_was(store: Store) -> None:
    registry = Registry(store)
    registry.register("run-1", FILES, META)
    registry.register("run-2", FILES, META)
    registry.promote(1)
    with pytest.raises(StorageError, match="injected failure"):
        Registry(FaultyStore(store, fail_at=0)).promote(2)
    record = registry.alias_record(CHAMPION)
    assert record is not None and (record.version, len(record.history)) == (1, 1)
    assert registry.promote(2).previous == (1,)


@pytest.fixture
def outage_server(s3_env: str) -> Iterator[dict[str, Any]]:
    """A dedicated S3 server over HTTP that a test may stop and replace."""
    from moto.server import ThreadedMotoServer

    state: dict[str, Any] = {}

    def start() -> str:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        state["server"] = server
        return f"http://{host}:{port}"

    def stop() -> None:
        server = state.pop("server", None)
        if server is not None:
            server.stop()

    state["start"], state["stop"] = start, stop
    try:
        yield state
    finally:
        stop()


def s3_store_at(endpoint: str) -> S3Store:
    import boto3
    from botocore.config import Config

    # No retries and short timeouts: the outage must surface at once.
    client = boto3.client("s3", endpoint_url=endpoint, config=Config(
        retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=5))
    return S3Store("mnist-test", "outage", client=client)


# Write 1 is the run record (after the claim), 3 a file, 6 the manifest.
@pytest.mark.parametrize("fail_at", [1, 3, 6])
def test_s3_server_stopped_mid_registration(outage_server: dict[str, Any], fail_at: int) -> None:
    store = s3_store_at(outage_server["start"]())
    faulty = FaultyStore(store, fail_at, on_fail=outage_server["stop"])
    with pytest.raises(StorageError):
        Registry(faulty).register("run-1", FILES, META)
    assert "server" not in outage_server  # the server really was down

    store = s3_store_at(outage_server["start"]())  # the endpoint comes back
    registry = Registry(store)
    assert_nothing_visible(registry, "run-1")
    info = registry.register("run-1", FILES, META)
    assert info.version == (2 if fail_at == 1 else 1)
    assert [v.version for v in registry.list_versions()] == [info.version]
    assert store.read_bytes(store.key_of(info.model_uri)) == FILES["model.keras"]
