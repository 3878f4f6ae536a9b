"""The storage contract, run unchanged against file:// and S3 over HTTP (moto server)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from mnist_tasks.storage import (
    InvalidKey,
    ObjectNotFound,
    ObjectTooLarge,
    S3Store,
    Store,
    open_store,
    s3_client,
)
from tests.helpers import TEST_BUCKET


def test_write_read_roundtrip_and_list(store: Store) -> None:
    store.write_bytes("a/b/c.json", b"{}")
    store.write_bytes("a/d.bin", b"\x00\x01")
    assert store.read_bytes("a/b/c.json") == b"{}"
    assert store.list("a") == ["a/b/c.json", "a/d.bin"]
    assert store.list_children("a") == ["b", "d.bin"]
    assert store.exists("a/d.bin") and not store.exists("a/missing")
    store.delete("a/d.bin")
    assert store.list("a") == ["a/b/c.json"]


def test_missing_object_names_the_uri(store: Store) -> None:
    with pytest.raises(ObjectNotFound, match=r"nope/x\.json"):
        store.read_bytes("nope/x.json")


def test_write_if_absent_only_once(store: Store) -> None:
    assert store.write_if_absent("claim", b"first") is True
    assert store.write_if_absent("claim", b"second") is False
    assert store.read_bytes("claim") == b"first"


def test_write_if_absent_concurrent_has_one_winner(store: Store) -> None:
    wins: list[int] = []

    def claim(i: int) -> None:
        if store.write_if_absent("race", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.read_bytes("race") == str(wins[0]).encode()


def test_write_if_match_is_compare_and_swap(store: Store) -> None:
    store.write_bytes("alias", b"v1")
    _, etag = store.read_with_etag("alias")
    assert store.write_if_match("alias", b"v2", etag) is True
    assert store.write_if_match("alias", b"v3", etag) is False  # stale ETag loses
    assert store.read_bytes("alias") == b"v2"
    assert store.write_if_match("missing-alias", b"x", etag) is False


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a//b", "a/../b", "", "a/.hidden"])
def test_unsafe_keys_are_refused(store: Store, key: str) -> None:
    with pytest.raises(InvalidKey, match="invalid storage key"):
        store.write_bytes(key, b"x")


def test_upload_download_file(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 1000)
    store.upload_file(src, "files/src.bin")
    dest = tmp_path / "out" / "dest.bin"
    store.download_file("files/src.bin", dest)
    assert dest.read_bytes() == src.read_bytes()
    with store.local_copy("files/src.bin") as path:
        assert path.read_bytes() == src.read_bytes()
    with pytest.raises(ObjectNotFound):
        store.download_file("files/none.bin", tmp_path / "none.bin")
    assert not (tmp_path / "none.bin").exists()


def test_child_store_and_uris(store: Store) -> None:
    child = store.child("runs/r1")
    child.write_bytes("x.txt", b"x")
    assert store.read_bytes("runs/r1/x.txt") == b"x"
    assert child.uri_for("x.txt") == store.uri_for("runs/r1/x.txt")
    reopened = open_store(store.uri_for("runs"))
    assert reopened.read_bytes("r1/x.txt") == b"x"


def test_missing_bucket_is_named(s3_env: str) -> None:
    store = open_store("s3://no-such-bucket/p")
    with pytest.raises(ObjectNotFound, match="no-such-bucket"):
        store.read_bytes("k")


@pytest.mark.parametrize("uri", ["", "ftp://x/y", "s3://", "file://remotehost/x"])
def test_bad_store_uris(uri: str) -> None:
    with pytest.raises(ValueError):
        open_store(uri)


def test_open_read_streams_and_checks_the_size_first(store: Store) -> None:
    store.write_bytes("raw/blob.bin", b"0123456789" * 100)
    with store.open_read("raw/blob.bin", max_bytes=1000) as fh:
        assert fh.read(4) == b"0123"
        assert fh.read(10_000) == (b"0123456789" * 100)[4:]
        assert fh.read(10) == b""
    too_large = r"raw/blob\.bin: 1,000 bytes is larger than the 999 accepted; refusing to read it"
    with pytest.raises(ObjectTooLarge, match=too_large), \
            store.open_read("raw/blob.bin", max_bytes=999):
        pytest.fail("an oversize object must be refused before it can be read")
    with pytest.raises(ObjectNotFound, match=r"raw/none\.bin"), \
            store.open_read("raw/none.bin", max_bytes=1000):
        pytest.fail("unreachable")


def test_one_s3_client_builder(s3_env: str) -> None:
    from botocore.config import Config

    client = s3_client(timeout_s=5.0, retries=2)
    assert client.meta.config.read_timeout == 5.0
    assert client.meta.config.connect_timeout == 5.0
    assert client.meta.config.retries == {"total_max_attempts": 3, "mode": "standard"}
    # A Config from an Airflow connection keeps its other settings; timeouts/retries are ours.
    client = s3_client({"config": Config(max_pool_connections=3, read_timeout=999)},
                       timeout_s=30.0, retries=1)
    assert client.meta.config.max_pool_connections == 3
    assert client.meta.config.read_timeout == 30.0
    assert client.meta.config.connect_timeout == 10.0  # never more than 10 s to connect
    # S3Store builds its client the same way, with its own defaults.
    store = S3Store(TEST_BUCKET, "p")
    assert store.client.meta.config.retries == {"total_max_attempts": 6, "mode": "standard"}
    assert store.client.meta.config.read_timeout == 60.0
    store.write_bytes("k", b"v")
    assert s3_client().get_object(Bucket=TEST_BUCKET, Key="p/k")["Body"].read() == b"v"


def test_list_children_lists_one_level_after_start_after(store: Store) -> None:
    for key in ("b/x", "b-1/x", "b.x/y/z", "c/x", "a/x", "top.json", "c1/deep/er/x"):
        store.write_bytes(key, b"1")
    assert store.list_children() == ["a", "b", "b-1", "b.x", "c", "c1", "top.json"]
    # By name, not by key: "b-1/x" sorts before "b/x" as a key, yet "b-1" comes after "b".
    assert store.list_children(start_after="b") == ["b-1", "b.x", "c", "c1", "top.json"]
    assert store.list_children(start_after="top.json") == []
    assert store.list_children("b.x") == ["y"]
    assert store.list_children("c1", start_after="a") == ["deep"]
    assert store.list_children("none") == []
    assert store.list("top.json") == ["top.json"]  # a key names itself


def test_completion_markers(store: Store) -> None:
    assert not store.has_marker("batch")
    store.write_bytes("batch/a.png", b"x")
    assert not store.has_marker("batch")
    store.write_marker("batch")
    assert store.has_marker("batch") and not store.has_marker("other")
    assert store.list("batch") == ["batch/_SUCCESS", "batch/a.png"]
    store.write_marker("")
    assert store.has_marker("")
    with pytest.raises(InvalidKey, match="marker name"):
        store.has_marker("batch", "SUCCESS")
    with pytest.raises(InvalidKey):
        store.write_marker("../batch")


def test_children_token_moves_when_a_child_comes(store: Store) -> None:
    import os
    import time

    from mnist_tasks.storage import LocalStore

    store.write_bytes("landing/b1/x", b"1")
    if not isinstance(store, LocalStore):
        assert store.children_token("landing") is None  # S3 has none: list after a watermark
        return
    folder = store.root / "landing"
    assert store.children_token("landing") is None  # changed just now: not trusted yet
    old = time.time() - 60
    os.utime(folder, (old, old))
    token = store.children_token("landing")
    assert token is not None and store.children_token("landing") == token
    store.write_bytes("landing/b2/x", b"1")
    assert store.children_token("landing") != token
    os.utime(folder, (old + 1, old + 1))
    assert store.children_token("landing") not in (None, token)
    assert store.children_token("nothing") is None


def test_a_store_of_its_own_gets_the_generic_listing_and_marker_check(store: Store) -> None:
    # Another Store (a wrapper, a test double) implements only the abstract methods: the
    # generic list_children and has_marker answer as the two stores here do.
    def delegate(name: str) -> Any:
        return lambda self, *args, **kwargs: getattr(store, name)(*args, **kwargs)

    methods = {name: delegate(name) for name in Store.__abstractmethods__}
    plain = type("Plain", (Store,), {**methods, "uri": store.uri})()
    for key in ("b/x", "b-1/x", "b.x/y/z", "top.json"):
        store.write_bytes(key, b"1")
    store.write_marker("b")
    for prefix, after in (("", None), ("", "b"), ("b.x", None), ("none", None)):
        assert plain.list_children(prefix, start_after=after) == store.list_children(
            prefix, start_after=after)
    assert plain.has_marker("b") and not plain.has_marker("b-1")
    with pytest.raises(NotImplementedError):
        plain.write_marker("b-1")
