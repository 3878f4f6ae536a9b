"""Increments on an s3:// source and dataset versions in an S3 store, over a moto server (HTTP).

Objects are uploaded with boto3 exactly as an uploader would (data files first, ``_SUCCESS``
last); discovery, bounded reads and the version manifest then go through real HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import boto3
import numpy as np
import pytest

from mnist_tasks import datasets_cli, userfiles, watch
from mnist_tasks.config import MNIST_FILES
from mnist_tasks.datasets import BaseInfo, list_versions, load_arrays, load_version, save_version
from mnist_tasks.increment_files import discover, payload_sha256, read_increment
from mnist_tasks.increments import ACCEPTED, QUARANTINED, IncrementPolicy, Reference, check_all
from mnist_tasks.storage import S3Store, StorageError
from mnist_tasks.userfiles import UserFileError
from tests.helpers import TEST_BUCKET, gz_idx, increment_reference, png
from tests.helpers import sparse_digits as digits

pytestmark = pytest.mark.integration

SOURCE = f"s3://{TEST_BUCKET}/landing"


def put(key: str, data: bytes) -> None:
    boto3.client("s3").put_object(Bucket=TEST_BUCKET, Key=f"landing/{key}", Body=data)


def land_idx(inc_id: str, images: np.ndarray, labels: np.ndarray, *, marker: bool = True) -> None:
    put(f"increments/{inc_id}/images-idx3-ubyte.gz", gz_idx(images))
    put(f"increments/{inc_id}/labels-idx1-ubyte.gz", gz_idx(labels))
    if marker:
        put(f"increments/{inc_id}/_SUCCESS", b"")


@pytest.fixture
def reference() -> Reference:
    return increment_reference(1000, 200)


def test_discover_and_check_increments_on_s3(s3_env: str, reference: Reference) -> None:
    x, y = digits(80, seed=3)
    land_idx("2026-11-20", x[:40], y[:40])
    for i in range(40, 60):  # a PNG increment, one folder per digit
        put(f"increments/2026-11-27/{y[i]}/img-{i:03d}.png", png(x[i]))
    put("increments/2026-11-27/_SUCCESS", b"")
    land_idx("2026-12-01", x[60:], y[60:], marker=False)  # still uploading
    data = gz_idx(x[:40])
    put("increments/cut/images-idx3-ubyte.gz", data[: len(data) // 2])
    put("increments/cut/labels-idx1-ubyte.gz", gz_idx(y[:40]))
    put("increments/cut/_SUCCESS", b"")
    put("increments/wide/0/a.png", png(np.zeros((28, 30), dtype=np.uint8)))
    put("increments/wide/_SUCCESS", b"")

    found = discover(SOURCE)
    assert found.source_uri == SOURCE
    assert [r.id for r in found.complete] == ["2026-11-20", "2026-11-27", "cut", "wide"]
    assert found.incomplete == ("2026-12-01",)

    raw = read_increment(found.complete[0])
    np.testing.assert_array_equal(raw.images, x[:40])
    assert raw.payload_sha256 == payload_sha256(x[:40], y[:40])

    results = {r.id: r for r in check_all(found, reference, IncrementPolicy())}
    assert results["2026-11-20"].status == ACCEPTED
    assert results["2026-11-27"].status == ACCEPTED and results["2026-11-27"].format == "png"
    assert results["2026-11-27"].counts["kept"] == 20
    assert results["cut"].status == QUARANTINED
    assert results["cut"].reasons[0].startswith(
        f"{SOURCE}/increments/cut/images-idx3-ubyte.gz: truncated gzip")
    assert results["wide"].reasons == (
        f"{SOURCE}/increments/wide/0/a.png: PNG is 30x28, expected 28x28 (resize it before "
        "uploading)",)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket=TEST_BUCKET, Prefix="landing/increments/cut/")["Contents"]]
    assert len(keys) == 3  # a quarantine deletes nothing


def test_s3_reads_are_bounded_and_missing_buckets_fail_loudly(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = digits(30, seed=4)
    land_idx("big", x, y)
    monkeypatch.setattr(userfiles, "MAX_IDX_FILE_BYTES", 64)
    with pytest.raises(UserFileError, match=rf"{SOURCE}/increments/big/images-idx3-ubyte\.gz: "
                                             r"[\d,]+ bytes is over the 64-byte limit"):
        read_increment(discover(SOURCE).complete[0])
    with pytest.raises(StorageError, match=r"no-such-bucket"):
        discover("s3://no-such-bucket/x")


def test_dataset_versions_in_an_s3_store(s3_env: str, reference: Reference,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    x, y = digits(50, seed=5)
    land_idx("a", x, y)
    checked = check_all(discover(SOURCE), reference, IncrementPolicy())
    store = S3Store(TEST_BUCKET, "store")
    base = BaseInfo({n: "0" * 64 for n in MNIST_FILES.values()}, 1000, 200)
    v = save_version(store, base, checked, fresh_fraction=0.2, created_by="run-1")
    assert save_version(store, base, checked, fresh_fraction=0.2).id == v.id
    assert load_version(store, v.id) == v and [w.id for w in list_versions(store)] == [v.id]
    arrays = load_arrays(store, v.increments[0])
    assert arrays["x_train"].shape == (40, 28, 28) and arrays["y_fresh"].shape == (10,)
    assert datasets_cli.main(["--store", store.uri, "show", v.id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["increments"][0]["id"] == "a"


class _RacedS3Store(S3Store):
    """The S3 store, with another announcer's call run just before our first conditional
    write (between our read and our write: the race a compare-and-swap must settle)."""

    def __init__(self, other: Callable[[], None]) -> None:
        super().__init__(TEST_BUCKET, "store")
        self.other: Callable[[], None] | None = other

    def _race(self) -> None:
        if self.other is not None:
            other, self.other = self.other, None
            other()

    def write_if_absent(self, key: str, data: bytes) -> bool:
        self._race()
        return super().write_if_absent(key, data)

    def write_if_match(self, key: str, data: bytes, etag: str) -> bool:
        self._race()
        return super().write_if_match(key, data, etag)


def test_announce_new_on_s3(s3_env: str) -> None:
    """Listing an s3:// source, the record in an S3 store, conditional writes over HTTP."""
    x, y = digits(20, seed=3)
    land_idx("2026-11-20", x, y)
    land_idx("2026-11-27", x, y, marker=False)
    store = S3Store(TEST_BUCKET, "store")
    assert watch.announce_new(SOURCE, store, announcer="run-1") == ["2026-11-20"]
    assert watch.announce_new(SOURCE, f"s3://{TEST_BUCKET}/store") == []
    put("increments/2026-11-27/_SUCCESS", b"")
    assert watch.announce_new(SOURCE, store) == ["2026-11-27"]  # write_if_match on the record
    key = watch.announced_key(SOURCE)
    doc = json.loads(store.read_bytes(key))
    assert doc["source"] == SOURCE and sorted(doc["increments"]) == ["2026-11-20", "2026-11-27"]

    # Two announcers race for the next increment, on the record's ETag: one announces it.
    land_idx("2026-12-04", x, y)
    theirs: list[str] = []
    raced = _RacedS3Store(lambda: theirs.extend(
        watch.announce_new(SOURCE, S3Store(TEST_BUCKET, "store"), announcer="other")))
    mine = watch.announce_new(SOURCE, raced, announcer="me")
    assert (theirs, mine) == (["2026-12-04"], [])
    assert watch.announce_new(SOURCE, store) == []


def test_announce_new_on_a_missing_bucket_fails_naming_it(s3_env: str) -> None:
    with pytest.raises(StorageError, match="no-such-bucket"):
        watch.announce_new("s3://no-such-bucket/landing", S3Store(TEST_BUCKET, "store"))
