"""The ingest stage with increments, on the real MNIST, from a folder (file://) and from S3 over
HTTP (a moto server; the demo folder is uploaded with boto3 as an uploader would, markers last).

Base only gives dataset version A; a landed increment gives B, which lists it; a re-run gives
B again without reading any increment; bad increments are quarantined or ignored, each named in
the log, and the run goes on; ``fail_on_quarantine`` makes the run fail naming them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from mnist_tasks import datasets, demo_data, increment_files, increments
from mnist_tasks.config import IngestConfig
from mnist_tasks.increments import IncrementPolicy, IncrementQuarantined
from mnist_tasks.ingest import LATEST_PREFIX, ingest
from mnist_tasks.results import IgnoredIncrement
from mnist_tasks.storage import Store
from tests.helpers import TEST_BUCKET, gz_idx, land_files, png

pytestmark = pytest.mark.integration

BASE = 2_000  # small base and increments keep each ingest to seconds
SIZE = 300


class Source:
    """A demo source folder and the URI ingest reads it from (the folder, or its S3 copy)."""

    def __init__(self, folder: Path, kind: str) -> None:
        self.folder = folder
        self.kind = kind
        self.uri = folder.as_uri() if kind == "file" else f"s3://{TEST_BUCKET}/landing"

    def sync(self) -> None:
        """Upload the folder to S3 (S3 only): data files first, every _SUCCESS marker last."""
        if self.kind != "s3":
            return
        client = boto3.client("s3")
        files = sorted(p for p in self.folder.rglob("*") if p.is_file())
        for path in sorted(files, key=lambda p: p.name == increment_files.MARKER):
            key = f"landing/{path.relative_to(self.folder).as_posix()}"
            client.put_object(Bucket=TEST_BUCKET, Key=key, Body=path.read_bytes())


@pytest.fixture
def source(store: Store, tmp_path: Path, mnist_dir: Path) -> tuple[Source, dict[str, str]]:
    """A base-only demo source of the first BASE training images, for the store's kind."""
    demo = demo_data.make_demo(mnist_dir, tmp_path / "src", base=BASE, increments=0, size=SIZE)
    src = Source(tmp_path / "src", "file" if store.uri.startswith("file:") else "s3")
    src.sync()
    return src, demo["payload_sha256"]


def run_ingest(src: Source, sha: dict[str, str], store: Store, **policy: Any) -> dict[str, Any]:
    return ingest(IngestConfig(source=src.uri, checksums=sha), store,
                  policy=IncrementPolicy(**policy), run_id="test-run")


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the increments read from the source (our reader, wrapped to count)."""
    seen: list[str] = []
    real: Callable[..., Any] = increment_files.read_increment

    def counting(ref: increment_files.IncrementRef, *args: Any, **kwargs: Any) -> Any:
        seen.append(ref.id)
        return real(ref, *args, **kwargs)

    monkeypatch.setattr(increments, "read_increment", counting)
    return seen


def test_versions_follow_the_increments(
    source: tuple[Source, dict[str, str]], store: Store, mnist_dir: Path, reads: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    src, sha = source
    a = run_ingest(src, sha, store)
    version_a = datasets.load_version(store, a.dataset_version)
    assert version_a.increments == () and version_a.base.train_count == BASE
    assert a.increments == () and a.quarantined == () and a.increments_new == ()
    assert a.dataset_manifest_uri == store.uri_for(f"datasets/{version_a.id}/manifest.json")
    assert version_a.created_by == "test-run"

    demo_data.add_increment(mnist_dir, src.folder, "inc-01", offset=BASE, size=SIZE)
    src.sync()
    b = run_ingest(src, sha, store)
    assert b.dataset_version != a.dataset_version
    version_b = datasets.load_version(store, b.dataset_version)
    assert version_b.increment_ids == ("inc-01",)
    assert version_b.train_images == BASE + SIZE - round(SIZE * 0.2)
    (record,) = b.increments
    assert record.id == "inc-01" and record.status == "ACCEPTED" and record.new
    assert record.train + record.fresh == SIZE and record.drift is False
    assert record.payload_sha256 is not None and len(record.payload_sha256) == 64
    assert b.increments_new == ("inc-01",) and reads == ["inc-01"]
    # What lineage names: the increment's folder and the base's files, in the source.
    assert record.uri == f"{src.uri}/increments/inc-01"
    assert sorted(b.base_files) == sorted(f"{src.uri}/{name}" for name in sha)
    pointers = store.list(LATEST_PREFIX)
    assert len(pointers) == 1

    # Nothing new: the same version, no increment read, the pointer untouched.
    pointer_bytes = store.read_bytes(pointers[0])
    with caplog.at_level(logging.INFO, logger="mnist_tasks"):
        again = run_ingest(src, sha, store)
    assert again.dataset_version == b.dataset_version
    assert again.increments_new == () and reads == ["inc-01"]
    assert [r.id for r in again.increments] == ["inc-01"]
    assert not again.increments[0].new
    assert store.read_bytes(pointers[0]) == pointer_bytes
    assert "already decided in dataset version" in caplog.text and "not read again" in caplog.text
    assert datasets.list_versions(store) == sorted(
        [version_a, version_b], key=lambda v: (v.created_at or "", v.id))


def _png(size: int, seed: int) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8))


def land_bad_increments(folder: Path, mnist_dir: Path) -> None:
    """One good increment and five bad ones (ids name what is wrong with them)."""
    demo_data.add_increment(mnist_dir, folder, "good", offset=BASE, size=SIZE)
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    y = (np.arange(50) % 10).astype(np.uint8)
    whole = gz_idx(x)
    land_files(folder, "cut", {increment_files.IMAGES_FILE: whole[: len(whole) // 2],
                               increment_files.LABELS_FILE: gz_idx(y)})
    bad_y = y.copy()
    bad_y[7] = 12
    land_files(folder, "labels", {increment_files.IMAGES_FILE: whole,
                                  increment_files.LABELS_FILE: gz_idx(bad_y)})
    land_files(folder, "pending", {increment_files.IMAGES_FILE: whole,
                                   increment_files.LABELS_FILE: gz_idx(y)}, marker=False)
    land_files(folder, "png32", {"3/a.png": _png(28, 1), "3/b.png": _png(32, 2)})
    demo_data.add_increment(mnist_dir, folder, "leak", split="test", offset=0, size=100)


def test_bad_increments_are_quarantined_or_ignored_and_the_run_goes_on(
    source: tuple[Source, dict[str, str]], store: Store, mnist_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    src, sha = source
    land_bad_increments(src.folder, mnist_dir)
    src.sync()
    with caplog.at_level(logging.INFO, logger="mnist_tasks"):
        out = run_ingest(src, sha, store)
    status = {r.id: r.status for r in out.increments}
    assert status == {"good": "ACCEPTED", "cut": "QUARANTINED", "labels": "QUARANTINED",
                      "png32": "QUARANTINED", "leak": "QUARANTINED"}
    assert sorted(out.quarantined) == ["cut", "labels", "leak", "png32"]
    assert out.increments_ignored == (IgnoredIncrement("pending", "no _SUCCESS marker"),)
    assert datasets.load_version(store, out.dataset_version).increment_ids == ("good",)

    lines = {r.getMessage(): r.levelno for r in caplog.records}

    def line(*parts: str) -> int:
        found = [level for text, level in lines.items() if all(p in text for p in parts)]
        assert found, f"no log line with {parts}:\n" + "\n".join(lines)
        return found[0]

    base = src.uri.rstrip("/") + "/increments"
    assert line("increment cut: QUARANTINED", f"{base}/cut/{increment_files.IMAGES_FILE}",
                "truncated gzip") == logging.WARNING
    assert line("increment labels: QUARANTINED", "labels out of range 0..9",
                "label 12 at index 7") == logging.WARNING
    assert line("increment png32: QUARANTINED", f"{base}/png32/3/b.png",
                "PNG is 32x32, expected 28x28") == logging.WARNING
    assert line("increment leak: QUARANTINED", "leakage: 100 of 100 images",
                "identical to test images") == logging.WARNING
    assert line("increment pending: ignored: no _SUCCESS marker") == logging.INFO
    assert line("increment good: ACCEPTED") == logging.INFO


def test_fail_on_quarantine_fails_the_run_naming_them(
    source: tuple[Source, dict[str, str]], store: Store, mnist_dir: Path,
) -> None:
    src, sha = source
    land_bad_increments(src.folder, mnist_dir)
    src.sync()
    with pytest.raises(IncrementQuarantined) as first:
        run_ingest(src, sha, store, fail_on_quarantine=True)
    message = str(first.value)
    assert "4 increment(s) quarantined and fail_on_quarantine is set" in message
    for inc_id, reason in (("cut", "truncated gzip"), ("labels", "out of range"),
                           ("png32", "32x32"), ("leak", "leakage")):
        assert f"{inc_id} (" in message and reason in message
    assert "good (" not in message
    # The quarantine was recorded; a later run with the flag still fails on them, one without
    # goes on with the same version.
    with pytest.raises(IncrementQuarantined, match=r"decided by an earlier run.*cut \("):
        run_ingest(src, sha, store, fail_on_quarantine=True)
    out = run_ingest(src, sha, store)
    assert sorted(out.quarantined) == ["cut", "labels", "leak", "png32"]
    assert out.increments_new == ()


def test_a_decided_increment_that_changes_is_named_on_every_run(
    source: tuple[Source, dict[str, str]], store: Store, reads: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The marker came before every file, and a decided file was later rewritten: the
    increment is not read again (what was read is what is used), and every run warns, naming
    it, its files and what to do."""
    src, sha = source
    rng = np.random.default_rng(7)
    folder = src.folder / "increments" / "early"

    def put_png(name: str) -> None:
        image = np.where(rng.random((28, 28)) < 0.3, rng.integers(1, 256, (28, 28)), 0)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png(image.astype(np.uint8)))

    for i in range(20):
        put_png(f"{i % 10}/d{i:02d}.png")
    (folder / increment_files.MARKER).write_bytes(b"")
    src.sync()
    first = run_ingest(src, sha, store)
    assert first.increments_new == ("early",) and first.increments_changed == ()
    assert reads == ["early"]

    put_png("5/late arrival.png")  # landed after the marker
    put_png("3/d03.png")  # rewritten with other bytes
    src.sync()
    for _ in range(2):
        caplog.clear()
        again = run_ingest(src, sha, store)
        assert again.dataset_version == first.dataset_version and reads == ["early"]
        assert again.increments_changed == (
            {"id": "early", "added": ["5/late arrival.png"], "changed": ["3/d03.png"]},)
        [warning] = [r.getMessage() for r in caplog.records if "changed after" in r.getMessage()]
        assert "increment early changed after it was decided" in warning
        assert "added 5/late arrival.png; changed 3/d03.png" in warning
        assert "land the corrected or complete data under a new increment id" in warning
