"""The storage contract, run unchanged against file:// and S3 over HTTP (moto server)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mnist_tasks.storage import InvalidKey, ObjectNotFound, Store, open_store


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
