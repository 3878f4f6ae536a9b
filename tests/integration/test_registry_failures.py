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

from mnist_tasks.registry import Registry
from mnist_tasks.registry_api import CHAMPION
from mnist_tasks.storage import S3Store, StorageError, Store
from tests.helpers import TEST_BUCKET
from tests.integration.s3_fault_proxy import S3FaultProxy, SeenRequest

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


# --- lost replies: the write is applied, the caller is told it failed --------------------------


class LostReplyStore(FaultyStore):
    """The first conditional write whose key ends with ``suffix`` is applied, then reported
    as refused: what a caller sees when the reply is lost and its retry meets its own write
    (412). The same fault on S3 is produced for real by :class:`S3FaultProxy` below."""

    def __init__(self, inner: Store, suffix: str) -> None:
        super().__init__(inner)
        self.suffix = suffix
        self.lost: list[str] = []

    def _lose(self, key: str, applied: bool) -> bool:
        if applied and not self.lost and key.endswith(self.suffix):
            self.lost.append(key)
            return False
        return applied

    def write_if_absent(self, key: str, data: bytes) -> bool:
        return self._lose(key, self.inner.write_if_absent(key, data))

    def write_if_match(self, key: str, data: bytes, etag: str) -> bool:
        return self._lose(key, self.inner.write_if_match(key, data, etag))


def three_versions_promoted_in_turn(registry: Registry) -> None:
    for run in ("run-1", "run-2", "run-3"):
        registry.register(run, FILES, META)
    for version in (1, 2, 3):
        registry.promote(version)


def assert_rolled_back_once(registry: Registry) -> None:
    record = registry.alias_record(CHAMPION)
    assert record is not None
    assert record.version == 2, "one rollback must move the champion from v3 to v2, not v1"
    assert record.previous == (1,)
    assert [(h["version"], h["action"]) for h in record.history] == [
        (1, "set"), (2, "set"), (3, "set"), (2, "rollback")]


def test_lost_reply_of_a_rollback_is_not_applied_twice(store: Store) -> None:
    three_versions_promoted_in_turn(Registry(store))
    lossy = LostReplyStore(store, "aliases/champion.json")
    assert Registry(lossy).rollback().version == 2
    assert lossy.lost
    assert_rolled_back_once(Registry(store))


def test_lost_reply_of_an_expected_move_is_not_a_false_conflict(store: Store) -> None:
    registry = Registry(store)
    three_versions_promoted_in_turn(registry)
    lossy = LostReplyStore(store, "aliases/champion.json")
    record = Registry(lossy).set_alias(CHAMPION, 1, expected=3)
    assert lossy.lost and record.version == 1
    assert registry.get_alias(CHAMPION) == 1
    assert len(registry.alias_record(CHAMPION).history) == 4  # type: ignore[union-attr]


def test_lost_reply_of_the_first_alias_write(store: Store) -> None:
    registry = Registry(store)
    registry.register("run-1", FILES, META)
    lossy = LostReplyStore(store, "aliases/champion.json")
    assert Registry(lossy).set_alias(CHAMPION, 1, expected=None).version == 1
    assert lossy.lost
    record = registry.alias_record(CHAMPION)
    assert record is not None and len(record.history) == 1


@pytest.mark.parametrize("suffix", ["claim.json", "runs/run-1.json", "MANIFEST.json"])
def test_lost_reply_while_registering_leaves_no_gap_and_no_false_report(
    store: Store, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    lossy = LostReplyStore(store, suffix)
    with caplog.at_level("INFO"):
        info = Registry(lossy).register("run-1", FILES, META)
    assert lossy.lost
    assert info.version == 1
    registry = Registry(store)
    assert [e.status for e in registry.scan(include_incomplete=True)] == ["ok"]
    assert "concurrent" not in caplog.text  # no made-up race in the log
    assert registry.register("run-2", FILES, META).version == 2


# --- the same, for real: a proxy in front of the S3 server drops the reply ----------------------


@pytest.fixture
def proxy(s3_env: str) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(s3_env) as running:
        yield running


def proxied_store(proxy: S3FaultProxy) -> S3Store:
    return S3Store(TEST_BUCKET, "proxied", client_kwargs={"endpoint_url": proxy.url})


def conditional_put(suffix: str, header: str) -> Callable[[SeenRequest], bool]:
    def match(request: SeenRequest) -> bool:
        headers = {k.lower() for k in request.headers}
        return request.method == "PUT" and header in headers and \
            request.path.split("?")[0].endswith(suffix)
    return match


def test_s3_lost_reply_of_a_rollback_moves_the_champion_once(proxy: S3FaultProxy) -> None:
    store = proxied_store(proxy)
    three_versions_promoted_in_turn(Registry(store))
    proxy.drop_reply_once(conditional_put("aliases/champion.json", "if-match"))
    assert Registry(store).rollback().version == 2
    dropped = proxy.dropped
    assert len(dropped) == 1 and dropped[0].status == 200  # applied, reply lost
    retries = [r for r in proxy.requests if r.method == "PUT" and r.status == 412]
    assert retries, "boto3 retried the PUT and met its own write"
    assert_rolled_back_once(Registry(store))


def test_s3_lost_reply_of_an_expected_move_is_not_a_false_conflict(proxy: S3FaultProxy) -> None:
    store = proxied_store(proxy)
    registry = Registry(store)
    three_versions_promoted_in_turn(registry)
    proxy.drop_reply_once(conditional_put("aliases/champion.json", "if-match"))
    assert registry.set_alias(CHAMPION, 1, expected=3).version == 1
    assert len(proxy.dropped) == 1
    record = registry.alias_record(CHAMPION)
    assert record is not None and (record.version, len(record.history)) == (1, 4)


@pytest.mark.parametrize("suffix", ["claim.json", "runs/run-1.json", "MANIFEST.json",
                                    "aliases/champion.json"])
def test_s3_lost_reply_of_a_conditional_create(
    proxy: S3FaultProxy, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = proxied_store(proxy)
    registry = Registry(store)
    proxy.drop_reply_once(conditional_put(suffix, "if-none-match"))
    with caplog.at_level("INFO"):
        assert registry.register("run-1", FILES, META).version == 1
        assert registry.set_alias(CHAMPION, 1, expected=None).version == 1
    assert len(proxy.dropped) == 1
    assert "concurrent" not in caplog.text
    assert [e.status for e in registry.scan(include_incomplete=True)] == ["ok"]
    record = registry.alias_record(CHAMPION)
    assert record is not None and len(record.history) == 1
