"""Ingest end to end against real components: local folders, an HTTP server on 127.0.0.1, S3
over HTTP (moto server), file:// and s3:// stores. Synthetic data, except the slow tests."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import boto3
import numpy as np
import pytest

from mnist_tasks.base_data import DataValidationError, SourceNotFound, dataset_key, load_dataset
from mnist_tasks.config import MNIST_FILES, MNIST_PAYLOAD_SHA256, IngestConfig, ValidationThresholds
from mnist_tasks.ingest import ingest
from mnist_tasks.results import to_json
from mnist_tasks.storage import LocalStore, S3Store, Store
from tests.helpers import (
    TEST_BUCKET,
    TEST_LABELS,
    TRAIN_IMAGES,
    http_server,
    make_arrays,
    payload_sha256,
    write_folder,
)

LOGGER = "mnist_tasks.base_data"


def _entry_files(store: Store, key: str) -> list[str]:
    return store.list(f"cache/datasets/{key}")


def _assert_same_arrays(store: Store, uri: str, arrays: dict[str, np.ndarray]) -> None:
    loaded = load_dataset(uri, store)
    assert sorted(loaded) == ["x_test", "x_train", "y_test", "y_train"]
    for name, arr in arrays.items():
        assert loaded[name].dtype == np.uint8
        np.testing.assert_array_equal(loaded[name], arr)


def test_folder_source_then_cache_hit_skips_download_and_parse(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    arrays = make_arrays()
    folder = write_folder(tmp_path / "src", arrays)
    checksums = payload_sha256(folder)
    cfg = IngestConfig(source=str(folder), checksums=checksums)
    caplog.set_level(logging.INFO, logger=LOGGER)

    first = ingest(cfg, store)
    key = dataset_key(checksums)
    assert first.cached is False
    assert first.dataset_key == key
    assert first.dataset_uri == store.uri_for(f"cache/datasets/{key}/mnist.npz")
    assert first.report_uri == store.uri_for(f"cache/datasets/{key}/validation.json")
    assert first.verification == "custom"
    assert first.checksums == checksums
    assert first.counts == {"train": 60, "test": 30}
    assert first.image_shape == (28, 28)
    assert first.report_summary["passed"] is True
    assert first.source == str(folder)
    # Small enough for XCom: its size without the folder and store paths, which the result
    # repeats (the dataset's URIs, and the base files' for lineage) and a machine's tmp decides.
    doc = json.dumps(to_json(first)).replace(str(folder), "F").replace(store.uri_for("cache"), "S")
    assert len(doc) < 2000, len(doc)
    assert _entry_files(store, key) == [
        f"cache/datasets/{key}/{f}" for f in ("COMPLETE.json", "mnist.npz", "validation.json")
    ]
    report = json.loads(store.read_bytes(store.key_of(first.report_uri)))
    assert report["passed"] is True and report["metrics"]["train"]["count"] == 60
    complete = json.loads(store.read_bytes(f"cache/datasets/{key}/COMPLETE.json"))
    assert complete["fetched_from"][TRAIN_IMAGES] == (folder / TRAIN_IMAGES).as_uri()
    _assert_same_arrays(store, first.dataset_uri, arrays)
    assert "cache miss" in caplog.text and "verified (custom)" in caplog.text

    shutil.rmtree(folder)  # a hit must not touch the source at all
    caplog.clear()
    second = ingest(cfg, store)
    assert second.cached is True
    assert f"cache hit: skipped download and parse (key {key}" in caplog.text
    for field in ("dataset_uri", "dataset_key", "checksums", "counts", "report_uri",
                  "data_sha256", "report_summary"):
        assert getattr(second, field) == getattr(first, field), field


def test_file_uri_source(tmp_path: Path, file_store: Store) -> None:
    folder = write_folder(tmp_path / "my src")  # a space: the URI is percent-encoded
    result = ingest(IngestConfig(source=folder.as_uri(), checksums="off"), file_store)
    assert result.counts == {"train": 60, "test": 30}
    assert "%20" in folder.as_uri()


def test_checksums_off_warns_records_and_keys_by_payload(
    tmp_path: Path, file_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_folder(tmp_path / "src")
    cfg = IngestConfig(source=str(folder), checksums="off")
    caplog.set_level(logging.INFO, logger=LOGGER)
    first = ingest(cfg, file_store)
    assert first.verification == "off"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("checksum verification is OFF" in r.getMessage() for r in warnings)
    assert "NOT verified (checksums off)" in caplog.text
    assert first.checksums == payload_sha256(folder)
    assert first.dataset_key == dataset_key(payload_sha256(folder))
    complete = json.loads(file_store.read_bytes(
        f"cache/datasets/{first.dataset_key}/COMPLETE.json"))
    assert complete["verification"] == "off"

    caplog.clear()
    second = ingest(cfg, file_store)  # downloads and hashes, but parse/validation are reused
    assert second.cached is True and second.dataset_key == first.dataset_key
    assert "files downloaded and hashed" in caplog.text

    # The same payloads with their checksums given hit the same entry without any download.
    third = ingest(IngestConfig(source=str(tmp_path / "gone"), checksums=first.checksums),
                   file_store)
    assert third.cached is True and third.verification == "custom"

    # With checksums off the files are needed: a missing source fails even though cached.
    (folder / TEST_LABELS).unlink()
    with pytest.raises(SourceNotFound, match=TEST_LABELS):
        ingest(cfg, file_store)


def test_other_data_gets_another_key(tmp_path: Path, file_store: Store) -> None:
    a = ingest(IngestConfig(source=str(write_folder(tmp_path / "a", make_arrays(seed=1))),
                            checksums="off"), file_store)
    b = ingest(IngestConfig(source=str(write_folder(tmp_path / "b", make_arrays(seed=2))),
                            checksums="off"), file_store)
    assert a.dataset_key != b.dataset_key and not b.cached
    assert file_store.list_children("cache/datasets") == sorted(
        [a.dataset_key, b.dataset_key])


def test_incomplete_entry_is_ignored_and_overwritten(tmp_path: Path, store: Store) -> None:
    arrays = make_arrays()
    folder = write_folder(tmp_path / "src", arrays)
    key = dataset_key(payload_sha256(folder))
    # What an interrupted run leaves: data without the marker (here even garbage data).
    store.write_bytes(f"cache/datasets/{key}/mnist.npz", b"half-written")
    store.write_bytes(f"cache/datasets/{key}/validation.json", b"{")
    result = ingest(IngestConfig(source=str(folder), checksums=payload_sha256(folder)), store)
    assert result.cached is False
    assert store.exists(f"cache/datasets/{key}/COMPLETE.json")
    _assert_same_arrays(store, result.dataset_uri, arrays)


@pytest.mark.parametrize("damage", ["bad-marker", "data-deleted", "report-deleted"])
def test_damaged_complete_entry_is_rebuilt(
    tmp_path: Path, file_store: Store, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    arrays = make_arrays()
    folder = write_folder(tmp_path / "src", arrays)
    cfg = IngestConfig(source=str(folder), checksums=payload_sha256(folder))
    key = ingest(cfg, file_store).dataset_key
    prefix = f"cache/datasets/{key}"
    if damage == "bad-marker":
        file_store.write_bytes(f"{prefix}/COMPLETE.json", b"not json")
    elif damage == "data-deleted":
        file_store.delete(f"{prefix}/mnist.npz")
    else:
        file_store.delete(f"{prefix}/validation.json")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    result = ingest(cfg, file_store)
    assert result.cached is False
    assert "ignoring" in caplog.text
    assert ingest(cfg, file_store).cached is True
    _assert_same_arrays(file_store, result.dataset_uri, arrays)


def test_failed_write_leaves_a_concurrent_runs_complete_entry_alone(
    tmp_path: Path, file_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = make_arrays()
    folder = write_folder(tmp_path / "src", arrays)
    cfg = IngestConfig(source=str(folder), checksums=payload_sha256(folder))
    real_write = file_store.write_bytes

    def write_bytes(key: str, data: bytes) -> None:
        real_write(key, data)
        if key.endswith("/COMPLETE.json"):  # the marker lands, then the call fails (a timeout)
            raise OSError("connection reset (simulated)")

    monkeypatch.setattr(file_store, "write_bytes", write_bytes)
    with pytest.raises(OSError, match="simulated"):
        ingest(cfg, file_store)
    monkeypatch.undo()
    again = ingest(cfg, file_store)  # the entry is complete: kept and trusted
    assert again.cached is True
    _assert_same_arrays(file_store, again.dataset_uri, arrays)


def test_validation_failure_names_check_and_report_then_looser_thresholds_pass(
    tmp_path: Path, store: Store
) -> None:
    arrays = make_arrays()
    y = arrays["y_train"].copy()
    y[y == 9] = 8  # a whole class missing from train
    x_test = arrays["x_test"].copy()
    x_test[:3] = arrays["x_train"][:3]  # three test images copied from train
    arrays["y_train"], arrays["x_test"] = y, x_test
    folder = write_folder(tmp_path / "src", arrays)
    checksums = payload_sha256(folder)
    key = dataset_key(checksums)
    report_uri = store.uri_for(f"cache/datasets/{key}/validation.json")

    with pytest.raises(DataValidationError) as info:
        ingest(IngestConfig(source=str(folder), checksums=checksums), store)
    msg = str(info.value)
    assert "train_class_imbalance = 1 exceeds max_class_imbalance = 0.5 by 0.5" in msg
    assert "leakage_fraction = 0.1 exceeds max_leakage_fraction = 0 by 0.1" in msg
    assert msg.endswith(f"Report: {report_uri}")
    report = json.loads(store.read_bytes(store.key_of(report_uri)))
    assert report["passed"] is False
    assert report["metrics"]["leakage"]["test_images_in_train"] == 3
    assert report["metrics"]["leakage"]["examples"] == [[0, 0], [1, 1], [2, 2]]

    # The same data hits the cache and fails again: the checks are re-run on every hit.
    with pytest.raises(DataValidationError, match="train_class_imbalance"):
        ingest(IngestConfig(source=str(folder), checksums=checksums), store)
    loose = ValidationThresholds(max_class_imbalance=1.0, max_leakage_fraction=0.2)
    result = ingest(IngestConfig(source=str(folder), checksums=checksums, thresholds=loose), store)
    assert result.cached is True and result.report_summary["passed"] is True


def test_s3_source_with_client_kwargs(
    tmp_path: Path, s3_env: str, file_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_folder(tmp_path / "src")
    s3 = boto3.client("s3")
    for name in MNIST_FILES.values():
        s3.upload_file(str(folder / name), TEST_BUCKET, f"landing/mnist/{name}")
    # As the DAG does with an Airflow connection: the endpoint and keys come as arguments.
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    kwargs = {"endpoint_url": s3_env, "aws_access_key_id": "testing",
              "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    cfg = IngestConfig(source=f"s3://{TEST_BUCKET}/landing/mnist", checksums="off")
    result = ingest(cfg, file_store, s3_client_kwargs=kwargs)
    assert result.counts == {"train": 60, "test": 30}
    complete = json.loads(file_store.read_bytes(
        f"cache/datasets/{result.dataset_key}/COMPLETE.json"))
    assert complete["fetched_from"][TRAIN_IMAGES] == (
        f"s3://{TEST_BUCKET}/landing/mnist/{TRAIN_IMAGES}")


def test_s3_source_into_s3_store(tmp_path: Path, s3_store: S3Store) -> None:
    arrays = make_arrays()
    folder = write_folder(tmp_path / "src", arrays)
    s3 = boto3.client("s3")
    for name in MNIST_FILES.values():
        s3.upload_file(str(folder / name), TEST_BUCKET, f"raw/{name}")
    cfg = IngestConfig(source=f"s3://{TEST_BUCKET}/raw", checksums=payload_sha256(folder))
    result = ingest(cfg, s3_store)
    assert result.dataset_uri.startswith(f"s3://{TEST_BUCKET}/store/cache/datasets/")
    _assert_same_arrays(s3_store, result.dataset_uri, arrays)
    assert ingest(cfg, s3_store).cached is True


# --- HTTP mirrors (a server on 127.0.0.1) ----------------------------------------------------


@pytest.mark.parametrize("first_mirror_status", [404, 500])
def test_next_mirror_when_the_first_fails(
    tmp_path: Path, file_store: Store, first_mirror_status: int
) -> None:
    arrays = make_arrays()
    write_folder(tmp_path / "www" / "good", arrays)
    checksums = payload_sha256(tmp_path / "www" / "good")
    with http_server(tmp_path / "www") as server:
        for name in MNIST_FILES.values():
            server.script[f"/bad/{name}"] = [first_mirror_status]
        cfg = IngestConfig(source=f"{server.url}/bad/, {server.url}/good/", checksums=checksums,
                           retries=1, backoff_s=0.01)
        result = ingest(cfg, file_store)
    assert result.counts == {"train": 60, "test": 30}
    bad = [p for p in server.requests if p.startswith("/bad/")]
    # 404 is final; 500 is retried once. After the good mirror worked, it is tried first.
    assert bad == [f"/bad/{TRAIN_IMAGES}"] * (1 if first_mirror_status == 404 else 2)
    assert [p for p in server.requests if p.startswith("/good/")] == [
        f"/good/{name}" for name in MNIST_FILES.values()
    ]
    _assert_same_arrays(file_store, result.dataset_uri, arrays)


def test_next_mirror_when_the_first_serves_corrupt_data(
    tmp_path: Path, file_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    write_folder(tmp_path / "www" / "good")
    write_folder(tmp_path / "www" / "stale", make_arrays(seed=99))  # other data
    checksums = payload_sha256(tmp_path / "www" / "good")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with http_server(tmp_path / "www") as server:
        cfg = IngestConfig(source=f"{server.url}/stale,{server.url}/good", checksums=checksums)
        result = ingest(cfg, file_store)
    assert result.checksums == checksums
    assert f"{server.url}/stale/{TRAIN_IMAGES}: SHA-256 of the decompressed payload" in caplog.text
    assert "trying the next source" in caplog.text


def test_retry_on_503_with_backoff(
    tmp_path: Path, file_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    write_folder(tmp_path / "www" / "mnist")
    checksums = payload_sha256(tmp_path / "www" / "mnist")
    caplog.set_level(logging.INFO, logger=LOGGER)
    with http_server(tmp_path / "www") as server:
        server.script[f"/mnist/{TRAIN_IMAGES}"] = [503, 503, 200]
        cfg = IngestConfig(source=f"{server.url}/mnist", checksums=checksums, retries=3,
                           backoff_s=0.01)
        result = ingest(cfg, file_store)
    assert result.cached is False
    assert server.requests.count(f"/mnist/{TRAIN_IMAGES}") == 3
    assert "HTTP 503 Service Unavailable); retry 1 of 3 in 0.0 s" in caplog.text
    assert "retry 2 of 3" in caplog.text and "retry 3 of 3" not in caplog.text
    assert f"downloaded {server.url}/mnist/{TRAIN_IMAGES}" in caplog.text


def test_retries_exhausted_on_429(tmp_path: Path, file_store: Store) -> None:
    write_folder(tmp_path / "www" / "mnist")
    with http_server(tmp_path / "www") as server:
        server.script[f"/mnist/{TRAIN_IMAGES}"] = [429]
        cfg = IngestConfig(source=f"{server.url}/mnist", retries=2, backoff_s=0.01)
        with pytest.raises(Exception, match=r"failed after 3 attempt\(s\): HTTP 429"):
            ingest(cfg, file_store)
    assert server.requests == [f"/mnist/{TRAIN_IMAGES}"] * 3
    assert file_store.list("cache") == []


# --- real MNIST ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("store_kind", ["file", "s3"])
def test_real_mnist(mnist_dir: Path, store_kind: str, request: pytest.FixtureRequest,
                    caplog: pytest.LogCaptureFixture) -> None:
    store: Store = request.getfixturevalue(f"{store_kind}_store")
    cfg = IngestConfig(source=str(mnist_dir))  # pinned checksums, default thresholds
    caplog.set_level(logging.INFO, logger=LOGGER)
    first = ingest(cfg, store)
    assert first.cached is False
    assert first.verification == "pinned"
    assert first.checksums == MNIST_PAYLOAD_SHA256
    assert first.counts == {"train": 60000, "test": 10000}
    summary = first.report_summary
    assert summary["passed"] is True
    # Measured on the real data: no exact duplicates, no train/test leakage, no blanks.
    assert summary["test_images_in_train"] == 0 and summary["train_duplicate_images"] == 0
    assert summary["blank_images"] == {"train": 0, "test": 0}
    assert summary["train_max_class_deviation"] == pytest.approx(0.123667)
    assert summary["test_max_class_deviation"] == pytest.approx(0.135)
    assert store.exists(store.key_of(first.report_uri))
    assert "validation: all 8 checks passed" in caplog.text

    second = ingest(cfg, store)
    assert second.cached is True and second.dataset_uri == first.dataset_uri
    assert second.seconds < 0.5
    if isinstance(store, LocalStore):
        data = load_dataset(first.dataset_uri, store)
        assert data["x_train"].shape == (60000, 28, 28) and data["y_test"].shape == (10000,)
        assert np.bincount(data["y_train"]).tolist()[5] == 5421
