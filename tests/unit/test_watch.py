"""mnist_tasks.watch: each complete increment announced once, under races and lost replies."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks.config import ConfigError
from mnist_tasks.demo_data import write_increment
from mnist_tasks.storage import LocalStore, StorageError
from mnist_tasks.userfiles import MARKER
from mnist_tasks.watch import announce_batches, announce_new, announced_key
from tests.helpers import land_files
from tests.helpers import sparse_digits as digits


def land(root: Path, inc_id: str, images: np.ndarray, labels: np.ndarray, *,
         fmt: str = "idx") -> Path:
    return write_increment(root, inc_id, images, labels, fmt=fmt)


class _HookedStore(LocalStore):
    """A real local store with a hook that runs just before each conditional write, and an
    optional lost reply: the write lands, then the call fails (as a dropped connection does)."""

    def __init__(self, root: Path, *, before_write: Callable[[], None] | None = None,
                 reply: str = "ok") -> None:
        super().__init__(root)
        self.before_write = before_write
        self.reply = reply  # "ok", "lost" (landed, then an error) or "refused" (landed, False)
        self.writes = 0

    def _conditional(self, write: Callable[[], bool]) -> bool:
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook()
        self.writes += 1
        written = write()
        if self.reply == "lost" and self.writes == 1:
            raise StorageError(f"{self.uri}: connection reset by peer")
        if self.reply == "refused" and self.writes == 1:
            return False  # a retried conditional PUT is refused: the first one had landed
        return written

    def write_if_absent(self, key: str, data: bytes) -> bool:
        return self._conditional(lambda: super(_HookedStore, self).write_if_absent(key, data))

    def write_if_match(self, key: str, data: bytes, etag: str) -> bool:
        return self._conditional(
            lambda: super(_HookedStore, self).write_if_match(key, data, etag))


def _announced(store: LocalStore, source: Path) -> dict[str, Any]:
    key = announced_key(LocalStore(source).uri)
    assert key.startswith("watch/") and key.endswith("/announced.json")
    doc: dict[str, Any] = json.loads(store.read_bytes(key))
    return doc


def test_announce_new_returns_each_complete_increment_once(tmp_path: Path) -> None:
    source, store = tmp_path / "source", LocalStore(tmp_path / "store")
    x, y = digits(20, seed=3)
    land(source, "2026-11-27", x, y)
    land(source, "2026-11-20", x, y, fmt="png")
    land_files(source, "2026-12-01", {"images-idx3-ubyte.gz": b"partial"}, marker=False)
    assert announce_new(str(source), store, announcer="run-1") == ["2026-11-20", "2026-11-27"]
    assert announce_new(f"file://{source}", store) == []  # the same source, spelled otherwise
    (source / "increments" / "2026-12-01" / MARKER).write_bytes(b"")  # its upload finished
    assert announce_new(str(source), str(store.root)) == ["2026-12-01"]  # a store URI works too
    assert announce_new(str(source), store) == []
    doc = _announced(store, source)
    assert doc["source"] == LocalStore(source).uri
    assert sorted(doc["increments"]) == ["2026-11-20", "2026-11-27", "2026-12-01"]
    assert doc["increments"]["2026-11-20"]["announcer"] == "run-1"


def test_announce_new_reads_no_increment(tmp_path: Path) -> None:
    """Only the listing: files that ingest will quarantine are announced all the same."""
    source, store = tmp_path / "source", LocalStore(tmp_path / "store")
    land_files(source, "garbage", {"images-idx3-ubyte.gz": b"not gzip",
                                   "labels-idx1-ubyte.gz": b""})
    assert announce_new(str(source), store) == ["garbage"]


def test_sources_apart_are_announced_apart(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    x, y = digits(20, seed=3)
    for name in ("a", "b"):
        land(tmp_path / name, "inc-1", x, y)
    assert announce_new(str(tmp_path / "a"), store) == ["inc-1"]
    assert announce_new(str(tmp_path / "b"), store) == ["inc-1"]
    assert len(store.list("watch")) == 2


@pytest.mark.parametrize("source", ["default", "https://example.org/mnist/",
                                    "HTTPS://a.example/m/,https://b.example/m/"])
def test_a_source_that_cannot_hold_increments_is_named(tmp_path: Path, source: str) -> None:
    with pytest.raises(ConfigError, match=r"'source'.*cannot hold increments"):
        announce_new(source, LocalStore(tmp_path / "store"))
    assert not (tmp_path / "store").exists()


def test_concurrent_announcers_never_announce_an_id_twice(tmp_path: Path) -> None:
    """Another announcer records the same ids between our read and our conditional write: we
    lose the race, re-read, and announce nothing; a later id is then ours alone."""
    source = tmp_path / "source"
    x, y = digits(20, seed=3)
    land(source, "inc-1", x, y)
    land(source, "inc-2", x, y)
    theirs: list[str] = []
    store = _HookedStore(tmp_path / "store", before_write=lambda: theirs.extend(
        announce_new(str(source), LocalStore(tmp_path / "store"), announcer="other-1")))
    assert announce_new(str(source), store, announcer="me") == []
    assert theirs == ["inc-1", "inc-2"]
    # The record exists now: the race is on write_if_match.
    land(source, "inc-3", x, y)
    store.before_write = lambda: theirs.extend(
        announce_new(str(source), LocalStore(tmp_path / "store"), announcer="other-2"))
    assert announce_new(str(source), store, announcer="me") == []
    assert theirs == ["inc-1", "inc-2", "inc-3"]
    land(source, "inc-4", x, y)
    assert announce_new(str(source), store, announcer="me") == ["inc-4"]


@pytest.mark.parametrize("reply", ["lost", "refused"])
def test_a_lost_reply_neither_loses_nor_repeats_an_announcement(tmp_path: Path,
                                                                 reply: str) -> None:
    source = tmp_path / "source"
    x, y = digits(20, seed=3)
    land(source, "inc-1", x, y)
    store = _HookedStore(tmp_path / "store", reply=reply)
    assert announce_new(str(source), store) == ["inc-1"]  # the re-read shows it landed
    assert store.writes == 1
    assert announce_new(str(source), store) == []


def test_a_write_that_did_not_land_fails(tmp_path: Path) -> None:
    source = tmp_path / "source"
    x, y = digits(20, seed=3)
    land(source, "inc-1", x, y)

    class Refusing(LocalStore):
        def write_if_absent(self, key: str, data: bytes) -> bool:
            raise StorageError(f"{self.uri_for(key)}: S3 error AccessDenied: denied")

    with pytest.raises(StorageError, match="AccessDenied"):
        announce_new(str(source), Refusing(tmp_path / "store"))
    assert announce_new(str(source), LocalStore(tmp_path / "store")) == ["inc-1"]


def test_a_retry_of_the_same_announcer_gets_its_ids_back(tmp_path: Path) -> None:
    """A try that recorded ids and then failed (before its asset event) loses nothing: the
    retry, with the same run id, announces them again; anyone else sees nothing new."""
    source, store = tmp_path / "source", LocalStore(tmp_path / "store")
    x, y = digits(20, seed=3)
    land(source, "inc-1", x, y)
    assert announce_new(str(source), store, announcer="scheduled__1") == ["inc-1"]
    assert announce_new(str(source), store, announcer="scheduled__1") == ["inc-1"]
    assert announce_new(str(source), store, announcer="scheduled__2") == []
    assert announce_new(str(source), store) == []


@pytest.mark.parametrize(("content", "problem"), [
    (b"{not json", "not JSON"),
    (b'{"increments": []}', "not an announcement record"),
    (json.dumps({"schema": "mnist-tasks/announced-increments/1", "source": "s3://x/y",
                 "increments": {}}).encode(), "records the source 's3://x/y'"),
])
def test_a_damaged_record_is_named(tmp_path: Path, content: bytes, problem: str) -> None:
    source, store = tmp_path / "source", LocalStore(tmp_path / "store")
    x, y = digits(20, seed=3)
    land(source, "inc-1", x, y)
    key = announced_key(LocalStore(source).uri)
    store.write_bytes(key, content)
    with pytest.raises(StorageError, match=f"announced.json: {problem}"):
        announce_new(str(source), store)


def test_landing_events_announce_only_the_named_complete_increments(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Events mode: only the increments a message names; one that is incomplete, invalid or
    absent is logged by name and dropped; a duplicate message announces nothing."""
    source, store = tmp_path / "source", LocalStore(tmp_path / "store")
    x, y = digits(20, seed=3)
    land(source, "inc-1", x, y)
    land(source, "inc-2", x, y)
    land_files(source, "inc-3", {"images-idx3-ubyte.gz": b"partial"}, marker=False)
    caplog.set_level("WARNING", logger="mnist_tasks.watch")
    named = ["inc-1", "inc-3", "inc-9"]
    assert announce_new(str(source), store, announcer="r1", only=named) == ["inc-1"]
    dropped = [r.getMessage() for r in caplog.records]
    assert any("inc-3" in m and "incomplete" in m for m in dropped), dropped
    assert any("inc-9" in m and "not found" in m for m in dropped), dropped
    assert announce_new(str(source), store, announcer="r2", only=["inc-1"]) == []  # duplicate
    assert announce_new(str(source), store, announcer="r3") == ["inc-2"]  # polling finds it


def test_batches_are_announced_once_apart_from_increments(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    landing = "s3://bucket/scoring/landing"
    assert announce_batches(landing, ["b-2", "b-1", "b-1"], store, announcer="r1") == [
        "b-1", "b-2"]
    assert announce_batches(landing, ["b-1"], store, announcer="r2") == []  # replayed
    assert announce_batches(landing, ["b-1"], store, announcer="r1") == ["b-1", "b-2"]  # retry
    assert announce_batches(landing, ["b-3"], store) == ["b-3"]
    doc = json.loads(store.read_bytes(announced_key(landing)))
    assert doc["schema"] == "mnist-tasks/announced-batches/1" and doc["source"] == landing
    assert sorted(doc["batches"]) == ["b-1", "b-2", "b-3"]
    with pytest.raises(StorageError, match="not an announcement record"):
        # An increments record under the batches' key is refused, not misread.
        store.write_bytes(announced_key(landing), json.dumps(
            {"schema": "mnist-tasks/announced-increments/1", "source": landing,
             "increments": {}}).encode())
        announce_batches(landing, ["b-4"], store)
