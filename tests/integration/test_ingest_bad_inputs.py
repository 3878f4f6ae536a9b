"""Bad inputs to ingest: each fails with an error naming the file and the problem, and leaves
nothing in the cache (no entry without COMPLETE.json, no entry for the failed key)."""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from mnist_tasks import base_data
from mnist_tasks.base_data import ChecksumMismatch, DatasetError, FetchError, SourceNotFound
from mnist_tasks.config import MNIST_FILES, IngestConfig
from mnist_tasks.idx import IdxFormatError, encode_idx
from mnist_tasks.ingest import ingest
from mnist_tasks.storage import LocalStore, Store
from tests.helpers import (
    TEST_BUCKET,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    gz,
    gz_idx,
    http_server,
    ingest_in_child,
    make_arrays,
    payload_sha256,
    silent_socket,
    write_folder,
    write_zero_bomb,
)


def assert_cache_clean(store: Store) -> None:
    """No cache entry at all: nothing partial, nothing for the failed key."""
    assert store.list("cache") == []


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


Mutation = Callable[[Path, dict[str, np.ndarray]], dict[str, Any] | None]


def truncated_gzip(folder: Path, a: dict[str, np.ndarray]) -> None:
    data = (folder / TRAIN_IMAGES).read_bytes()
    (folder / TRAIN_IMAGES).write_bytes(data[: len(data) // 2])


def html_page_named_gz(folder: Path, a: dict[str, np.ndarray]) -> None:
    (folder / TEST_LABELS).write_bytes(
        b"<!DOCTYPE html>\n<html><head><title>Moved</title></head><body>See the new site</body>"
    )


def corrupt_crc(folder: Path, a: dict[str, np.ndarray]) -> None:
    data = bytearray((folder / TEST_IMAGES).read_bytes())
    data[-6] ^= 0x55
    (folder / TEST_IMAGES).write_bytes(bytes(data))


def wrong_magic(folder: Path, a: dict[str, np.ndarray]) -> None:
    payload = bytearray(encode_idx(a["y_train"]))
    payload[1] = 0x01
    (folder / TRAIN_LABELS).write_bytes(gz(bytes(payload)))


def declared_size_larger(folder: Path, a: dict[str, np.ndarray]) -> None:
    payload = _header(0x08, (61, 28, 28)) + a["x_train"].tobytes()  # 60 images present
    (folder / TRAIN_IMAGES).write_bytes(gz(payload))


def trailing_bytes(folder: Path, a: dict[str, np.ndarray]) -> None:
    (folder / TEST_IMAGES).write_bytes(gz(encode_idx(a["x_test"]) + b"\x00" * 100))


def count_mismatch(folder: Path, a: dict[str, np.ndarray]) -> None:
    (folder / TRAIN_LABELS).write_bytes(gz_idx(a["y_train"][:-1]))


def label_out_of_range(folder: Path, a: dict[str, np.ndarray]) -> None:
    y = a["y_train"].copy()
    y[5] = 10
    (folder / TRAIN_LABELS).write_bytes(gz_idx(y))


def empty_file(folder: Path, a: dict[str, np.ndarray]) -> None:
    (folder / TEST_IMAGES).write_bytes(b"")


def billion_images(folder: Path, a: dict[str, np.ndarray]) -> None:
    payload = _header(0x08, (1_000_000_000, 28, 28)) + a["x_train"].tobytes()
    (folder / TRAIN_IMAGES).write_bytes(gz(payload))


def pinned_checksum_mismatch(folder: Path, a: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"checksums": "pinned"}  # synthetic data is not MNIST


def custom_checksum_mismatch(folder: Path, a: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"checksums": {**payload_sha256(folder), TEST_LABELS: "0" * 64}}


def missing_file(folder: Path, a: dict[str, np.ndarray]) -> None:
    (folder / TEST_LABELS).unlink()


def missing_folder(folder: Path, a: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"source": str(folder / "no-such-folder")}


def labels_not_uint8(folder: Path, a: dict[str, np.ndarray]) -> None:
    (folder / TEST_LABELS).write_bytes(gz_idx(a["y_test"].astype(np.int32)))


def images_with_two_dims(folder: Path, a: dict[str, np.ndarray]) -> None:
    (folder / TRAIN_IMAGES).write_bytes(gz_idx(a["x_train"].reshape(60, 784)))


def other_test_image_shape(folder: Path, a: dict[str, np.ndarray]) -> None:
    (folder / TEST_IMAGES).write_bytes(gz_idx(a["x_test"][:, :20, :20]))


CASES: list[tuple[Mutation, type[Exception], str, str]] = [
    (truncated_gzip, IdxFormatError, TRAIN_IMAGES, r"truncated gzip file"),
    (html_page_named_gz, IdxFormatError, TEST_LABELS,
     r"not a gzip file and not an IDX file: it looks like an HTML/XML page"),
    (corrupt_crc, IdxFormatError, TEST_IMAGES, r"corrupt gzip data"),
    (wrong_magic, IdxFormatError, TRAIN_LABELS, r"wrong magic number: an IDX file starts"),
    (declared_size_larger, IdxFormatError, TRAIN_IMAGES,
     r"declares 61x28x28 uint8 values = 47,824 bytes, but only 47,040 bytes of data follow"),
    (trailing_bytes, IdxFormatError, TEST_IMAGES, r"100 trailing bytes after the 23,520 bytes"),
    (count_mismatch, DatasetError, TRAIN_LABELS, r"has 60 images but .* has 59 labels"),
    (label_out_of_range, DatasetError, TRAIN_LABELS,
     r"1 labels outside 0-9 \(first: 10 at index 5\)"),
    (empty_file, IdxFormatError, TEST_IMAGES, r"empty file \(0 bytes\)"),
    (billion_images, IdxFormatError, TRAIN_IMAGES,
     r"declares 1000000000x28x28 uint8 values = 784,000,000,000 bytes, but only 47,040"),
    (pinned_checksum_mismatch, ChecksumMismatch, TRAIN_IMAGES,
     r"SHA-256 of the decompressed payload is [0-9a-f]{64}, expected ba891046\w+ "
     r"\(pinned checksum\)"),
    (custom_checksum_mismatch, ChecksumMismatch, TEST_LABELS,
     r"expected 0{64} \(custom checksum\)"),
    (missing_file, SourceNotFound, TEST_LABELS, r"no such file"),
    (missing_folder, SourceNotFound, TRAIN_IMAGES, r"the source folder .* does not exist"),
    (labels_not_uint8, IdxFormatError, TEST_LABELS,
     r"values are int32 \(type code 0x0C\), expected uint8"),
    (images_with_two_dims, IdxFormatError, TRAIN_IMAGES,
     r"has 2 dimensions, expected 3 \(images"),
    (other_test_image_shape, DatasetError, TEST_IMAGES, r"\(20, 20\); they must agree"),
]


@pytest.mark.parametrize(("mutate", "error", "file", "problem"), CASES,
                         ids=[c[0].__name__ for c in CASES])
def test_bad_local_input(
    tmp_path: Path, file_store: Store, mutate: Mutation, error: type[Exception], file: str,
    problem: str,
) -> None:
    arrays = make_arrays()
    folder = write_folder(tmp_path / "src", arrays)
    good = payload_sha256(folder)
    overrides = mutate(folder, arrays) or {}
    try:  # checksums of the files as they now are, so the intended check is the one that fires
        checksums: Any = {**good, **payload_sha256(folder)}
    except (OSError, EOFError, gzip.BadGzipFile):
        checksums = good
    cfg_kwargs: dict[str, Any] = {"source": str(folder), "checksums": checksums, **overrides}
    with pytest.raises(error, match=problem) as info:
        ingest(IngestConfig(**cfg_kwargs), file_store)
    message = str(info.value)
    assert file in message, message
    if not cfg_kwargs["source"].endswith("no-such-folder"):
        assert str(folder) in message  # the source URI, not just the bare name
    assert_cache_clean(file_store)


def test_billion_image_header_fails_fast_without_allocating(
    tmp_path: Path, file_store: Store
) -> None:
    arrays = make_arrays()
    folder = write_folder(tmp_path / "src", arrays)
    billion_images(folder, arrays)
    cfg = IngestConfig(source=str(folder), checksums="off")
    tracemalloc.start()
    try:
        with pytest.raises(IdxFormatError, match="1000000000x28x28"):
            ingest(cfg, file_store)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000  # the header declares 784 GB; a few small payloads were allocated
    assert_cache_clean(file_store)


def test_failed_cache_write_leaves_no_entry(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_folder(tmp_path / "src")
    real_write = store.write_bytes

    def write_bytes(key: str, data: bytes) -> None:
        if key.endswith("/COMPLETE.json"):
            raise OSError("disk full (simulated)")
        real_write(key, data)

    monkeypatch.setattr(store, "write_bytes", write_bytes)
    with pytest.raises(OSError, match="simulated"):
        ingest(IngestConfig(source=str(folder), checksums=payload_sha256(folder)), store)
    assert_cache_clean(store)


# --- Bounded reads: devices, FIFOs, oversize files, gzip bombs, files outside the folder -------

LARGEST_PAYLOAD = 47_040_016  # MNIST's train images, the largest legitimate payload
RSS_BUDGET = 2 * LARGEST_PAYLOAD  # the most a refused input may add to the peak RSS


def dev_zero_symlink(folder: Path) -> dict[str, Any]:
    (folder / TRAIN_IMAGES).unlink()
    (folder / TRAIN_IMAGES).symlink_to("/dev/zero")
    return {"checksums": "pinned"}


def gzip_bomb(folder: Path) -> dict[str, Any]:
    write_zero_bomb(folder / TRAIN_IMAGES, 256 << 20)  # ~1 MB inflating to 256 MB
    return {"checksums": "pinned"}


def gzip_bomb_unverified(folder: Path) -> dict[str, Any]:
    gzip_bomb(folder)
    return {"checksums": "off"}


def raw_idx_just_over_the_size(folder: Path) -> dict[str, Any]:
    # Uncompressed and 59 KB over MNIST's size: passes the file-size check (room is left for
    # gzip overhead), so the payload limit itself must stop it. Sparse: no disk used.
    with open(folder / TRAIN_IMAGES, "wb") as fh:
        fh.write(_header(0x08, (60_075, 28, 28)))
        fh.truncate(16 + 60_075 * 784)
    return {"checksums": "pinned"}


def raw_idx_900_mb(folder: Path) -> dict[str, Any]:
    with open(folder / TRAIN_IMAGES, "wb") as fh:  # sparse
        fh.write(_header(0x08, (1_148_000, 28, 28)))
        fh.truncate(16 + 1_148_000 * 784)
    return {"checksums": "off"}


RSS_CASES: list[tuple[Callable[[Path], dict[str, Any]], str, str]] = [
    (dev_zero_symlink, "FetchError",
     r"is a symbolic link to a file outside the source folder .*; refusing it"),
    (gzip_bomb, "IdxFormatError",
     r"decompresses to more than 47,040,016 bytes; refusing it .*gzip bomb"),
    (gzip_bomb_unverified, "IdxFormatError", r"decompresses to more than 67,108,864 bytes"),
    (raw_idx_just_over_the_size, "IdxFormatError",
     r"the uncompressed IDX file is larger than 47,040,016 bytes; refusing it"),
    (raw_idx_900_mb, "FetchError",
     r"900,032,016 bytes is larger than the 67,239,936 accepted for this file; refusing it"),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("mutate", "error", "problem"), RSS_CASES,
                         ids=[c[0].__name__ for c in RSS_CASES])
def test_refused_input_costs_bounded_memory(
    tmp_path: Path, mutate: Callable[[Path], dict[str, Any]], error: str, problem: str
) -> None:
    folder = write_folder(tmp_path / "src")
    overrides = mutate(folder)
    run = ingest_in_child({"source": str(folder), **overrides}, tmp_path / "store")
    assert run.error_type == error, run
    assert re.search(problem, run.message), run.message
    assert run.message.startswith(f"{folder.as_uri()}/{TRAIN_IMAGES}: "), run.message
    # Peak resident memory added by ingest, measured in the child (see tests.helpers._CHILD).
    assert run.growth <= RSS_BUDGET, f"{run.growth:,} bytes > {RSS_BUDGET:,}"
    assert_cache_clean(LocalStore(tmp_path / "store"))


@pytest.mark.timeout(30)  # the old code blocked in open() until a writer came: forever
def test_fifo_is_refused_without_blocking(tmp_path: Path, file_store: Store) -> None:
    folder = write_folder(tmp_path / "src")
    (folder / TRAIN_IMAGES).unlink()
    os.mkfifo(folder / TRAIN_IMAGES)
    with pytest.raises(FetchError, match=rf"{TRAIN_IMAGES}: is a FIFO \(named pipe\), not a "
                                         r"regular file; refusing it"):
        ingest(IngestConfig(source=str(folder), checksums="pinned"), file_store)
    assert_cache_clean(file_store)


def test_symlink_out_of_the_folder_is_refused_without_quoting_it(
    tmp_path: Path, file_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "elsewhere" / "credentials.txt"
    secret.parent.mkdir()
    secret.write_text("aws_secret_access_key = SECRET-TOKEN-1234\n")
    folder = write_folder(tmp_path / "src")
    checksums = payload_sha256(folder)
    (folder / TEST_LABELS).unlink()
    (folder / TEST_LABELS).symlink_to(Path("..") / "elsewhere" / "credentials.txt")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(FetchError, match=rf"{folder.as_uri()}/{TEST_LABELS}: is a symbolic link "
                                         r"to a file outside the source folder") as info:
        ingest(IngestConfig(source=str(folder), checksums=checksums), file_store)
    for text in (str(info.value), caplog.text):
        assert "SECRET" not in text and "aws_secret" not in text
        assert "61 77 73" not in text and "617773" not in text  # nor its bytes in hex ("aws")
    assert_cache_clean(file_store)


def test_text_file_in_the_folder_is_named_not_quoted(tmp_path: Path, file_store: Store) -> None:
    folder = write_folder(tmp_path / "src")
    checksums = payload_sha256(folder)
    (folder / TEST_LABELS).write_text("aws_secret_access_key = SECRET-TOKEN-1234\n")
    with pytest.raises(IdxFormatError, match=rf"{TEST_LABELS}: not a gzip file and not an IDX "
                                             r"file: it looks like a text file$") as info:
        ingest(IngestConfig(source=str(folder), checksums=checksums), file_store)
    assert "SECRET" not in str(info.value) and "61 77 73" not in str(info.value)


def test_symlinks_inside_the_folder_are_followed(tmp_path: Path, file_store: Store) -> None:
    folder = tmp_path / "src"
    real = write_folder(folder / "v1")
    for name in MNIST_FILES.values():
        (folder / name).symlink_to(Path("v1") / name)  # links that stay inside the folder
    linked_folder = tmp_path / "linked-src"
    linked_folder.symlink_to(folder)  # and the source folder itself may be a link
    result = ingest(IngestConfig(source=str(linked_folder), checksums=payload_sha256(real)),
                    file_store)
    assert result.counts == {"train": 60, "test": 30}


def test_symlinked_sub_folder_leading_outside_is_refused(
    tmp_path: Path, file_store: Store
) -> None:
    outside = write_folder(tmp_path / "elsewhere")
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "files").symlink_to(outside)  # the escape is in a folder link, not the file link
    for name in MNIST_FILES.values():
        (folder / name).symlink_to(Path("files") / name)
    with pytest.raises(FetchError, match=rf"{TRAIN_IMAGES}: is a symbolic link to a file outside"):
        ingest(IngestConfig(source=str(folder), checksums=payload_sha256(outside)), file_store)


def test_device_in_the_folder_is_refused(tmp_path: Path, file_store: Store) -> None:
    folder = write_folder(tmp_path / "src")
    (folder / TRAIN_IMAGES).unlink()
    # A link to a device elsewhere is refused as outside; one resolving inside the folder to a
    # non-regular file is refused as such: a sub-folder stands in for a device here.
    (folder / TRAIN_IMAGES).mkdir()
    with pytest.raises(FetchError, match=rf"{TRAIN_IMAGES}: is a folder, not a regular file"):
        ingest(IngestConfig(source=str(folder), checksums="pinned"), file_store)


def test_pinned_checksums_cap_each_file_at_its_own_size(
    tmp_path: Path, file_store: Store, mnist_dir: Path
) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    for name in (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES):  # the real ones pass
        shutil.copyfile(mnist_dir / name, folder / name)
    # 20,000 labels gzip to a few hundred bytes but are twice the size of MNIST's test labels.
    (folder / TEST_LABELS).write_bytes(gz_idx(np.zeros(20_000, dtype=np.uint8)))
    with pytest.raises(IdxFormatError, match=rf"{TEST_LABELS}: decompresses to more than "
                                             r"10,008 bytes"):
        ingest(IngestConfig(source=str(folder), checksums="pinned"), file_store)
    assert_cache_clean(file_store)


# --- S3 sources (moto server over HTTP) ----------------------------------------------------------


def _upload(folder: Path, prefix: str) -> None:
    s3 = boto3.client("s3")
    for name in MNIST_FILES.values():
        s3.upload_file(str(folder / name), TEST_BUCKET, f"{prefix}/{name}")


def test_s3_missing_bucket(tmp_path: Path, s3_store: Store) -> None:
    folder = write_folder(tmp_path / "src")
    cfg = IngestConfig(source="s3://no-such-bucket/raw/mnist", checksums=payload_sha256(folder),
                       retries=0)
    with pytest.raises(SourceNotFound,
                       match=rf"s3://no-such-bucket/raw/mnist/{TRAIN_IMAGES}: "
                             r"bucket 'no-such-bucket' does not exist"):
        ingest(cfg, s3_store)
    assert_cache_clean(s3_store)


def test_s3_missing_key(tmp_path: Path, s3_store: Store) -> None:
    folder = write_folder(tmp_path / "src")
    _upload(folder, "raw/mnist")
    boto3.client("s3").delete_object(Bucket=TEST_BUCKET, Key=f"raw/mnist/{TEST_IMAGES}")
    cfg = IngestConfig(source=f"s3://{TEST_BUCKET}/raw/mnist", checksums=payload_sha256(folder),
                       retries=0)
    with pytest.raises(SourceNotFound,
                       match=rf"s3://{TEST_BUCKET}/raw/mnist/{TEST_IMAGES}: no such object"):
        ingest(cfg, s3_store)
    assert_cache_clean(s3_store)


def test_s3_corrupt_object(tmp_path: Path, s3_store: Store) -> None:
    folder = write_folder(tmp_path / "src")
    checksums = payload_sha256(folder)
    truncated_gzip(folder, make_arrays())
    _upload(folder, "raw")
    cfg = IngestConfig(source=f"s3://{TEST_BUCKET}/raw", checksums=checksums)
    with pytest.raises(IdxFormatError, match=rf"s3://{TEST_BUCKET}/raw/{TRAIN_IMAGES}: truncated"):
        ingest(cfg, s3_store)
    assert_cache_clean(s3_store)


def test_s3_oversize_object_is_refused_before_its_body_is_read(
    tmp_path: Path, s3_env: str
) -> None:
    folder = write_folder(tmp_path / "src")
    _upload(folder, "raw")
    big = tmp_path / "big"
    with open(big, "wb") as fh:  # 100 MB, raw IDX-like: more than twice the largest payload
        fh.truncate(100_000_000)
    boto3.client("s3").upload_file(str(big), TEST_BUCKET, f"raw/{TRAIN_IMAGES}")
    run = ingest_in_child({"source": f"s3://{TEST_BUCKET}/raw", "checksums": "pinned",
                           "retries": 0}, tmp_path / "store")
    assert run.error_type == "FetchError", run
    assert run.message == (
        f"s3://{TEST_BUCKET}/raw/{TRAIN_IMAGES}: 100,000,000 bytes is larger than the "
        "47,151,489 accepted; refusing to read it"  # 47,040,016 + room for gzip overhead
    )
    # ContentLength was checked first: the 100 MB body was never read into memory.
    assert run.growth <= 30_000_000, f"{run.growth:,}"


def test_s3_object_over_its_pinned_size_is_refused(
    tmp_path: Path, s3_store: Store, mnist_dir: Path
) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    for name in MNIST_FILES.values():
        shutil.copyfile(mnist_dir / name, folder / name)  # the real train images pass
    (folder / TRAIN_LABELS).write_bytes(os.urandom(200_000))  # over 60,008 + gzip slack
    _upload(folder, "raw")
    cfg = IngestConfig(source=f"s3://{TEST_BUCKET}/raw", checksums="pinned", retries=0)
    with pytest.raises(FetchError, match=rf"s3://{TEST_BUCKET}/raw/{TRAIN_LABELS}: 200,000 bytes "
                                         r"is larger than the 125,602 accepted"):
        ingest(cfg, s3_store)
    assert_cache_clean(s3_store)


# --- HTTP sources (a server on 127.0.0.1 only) --------------------------------------------------


def test_unreachable_host_fails_within_the_timeout(file_store: Store) -> None:
    timeout, retries, backoff = 0.5, 1, 0.1
    with silent_socket() as port:
        cfg = IngestConfig(source=f"http://127.0.0.1:{port}/mnist/", checksums="pinned",
                           timeout_s=timeout, retries=retries, backoff_s=backoff)
        # The message is the deterministic record: both attempts ran and each timed out.
        with pytest.raises(FetchError, match=rf"{TRAIN_IMAGES}: failed after 2 attempt\(s\): "
                                             r"timed out after 0.5 s"):
            ingest(cfg, file_store)
    assert_cache_clean(file_store)


def test_404_on_every_mirror_is_not_retried(tmp_path: Path, file_store: Store) -> None:
    (tmp_path / "www").mkdir()
    with http_server(tmp_path / "www") as server:
        source = f"{server.url}/a/,{server.url}/b"
        cfg = IngestConfig(source=source, checksums="pinned", retries=3, backoff_s=0.01)
        with pytest.raises(SourceNotFound) as info:
            ingest(cfg, file_store)
    msg = str(info.value)
    assert msg.startswith(f"{TRAIN_IMAGES}: no source gave a good copy: ")
    assert f"{server.url}/a/{TRAIN_IMAGES}: HTTP 404" in msg
    assert f"{server.url}/b/{TRAIN_IMAGES}: HTTP 404" in msg
    assert server.requests == [f"/a/{TRAIN_IMAGES}", f"/b/{TRAIN_IMAGES}"]  # no retries on 404
    assert_cache_clean(file_store)


def test_html_error_page_from_a_mirror(tmp_path: Path, file_store: Store) -> None:
    www = write_folder(tmp_path / "www" / "mnist")
    checksums = payload_sha256(www)
    html_page_named_gz(www, make_arrays())
    with http_server(tmp_path / "www") as server:
        cfg = IngestConfig(source=f"{server.url}/mnist", checksums=checksums, retries=0)
        with pytest.raises(IdxFormatError,
                           match=rf"{server.url}/mnist/{TEST_LABELS}: not a gzip file and not an "
                                 r"IDX file: it looks like an HTML/XML page"):
            ingest(cfg, file_store)
    assert_cache_clean(file_store)


def test_http_content_length_over_the_size_is_refused(
    tmp_path: Path, file_store: Store, mnist_dir: Path
) -> None:
    www = tmp_path / "www" / "mnist"
    www.mkdir(parents=True)
    for name in MNIST_FILES.values():
        shutil.copyfile(mnist_dir / name, www / name)  # the real train images pass
    (www / TRAIN_LABELS).write_bytes(os.urandom(200_000))
    with http_server(tmp_path / "www") as server:
        cfg = IngestConfig(source=f"{server.url}/mnist", checksums="pinned", retries=0)
        with pytest.raises(FetchError, match=rf"{server.url}/mnist/{TRAIN_LABELS}: Content-Length "
                                             r"200,000 is larger than the 125,602 bytes accepted"):
            ingest(cfg, file_store)
    assert_cache_clean(file_store)


def test_unsupported_source_scheme(file_store: Store) -> None:
    with pytest.raises(ValueError, match=r"parameter 'source' = 'ftp://x/y' is invalid: "
                                         r"unsupported scheme 'ftp'"):
        ingest(IngestConfig(source="ftp://x/y"), file_store)
    assert_cache_clean(file_store)


def test_module_exports_the_error_types() -> None:
    assert issubclass(base_data.SourceNotFound, FileNotFoundError)
    assert issubclass(base_data.DataValidationError, ValueError)
