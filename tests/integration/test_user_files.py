"""The one reader of user files, from one table, in both contexts (an increment, a scoring
batch) on both stores (a folder, and S3 over HTTP through a moto server).

Each case lands one file beside good ones; the table says what each context must make of it:
read (counted), skipped as hidden (never mentioned), or refused with a message naming the file
(an increment is quarantined, a batch skips the file and scores the rest).
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from mnist_tasks import score
from mnist_tasks.idx import encode_idx
from mnist_tasks.increment_files import discover
from mnist_tasks.increments import IncrementPolicy, Reference, check_all
from mnist_tasks.scoring_batches import read_batch
from mnist_tasks.scoring_outputs import ERRORS, PREDICTIONS, read_output
from mnist_tasks.storage import LocalStore, S3Store, Store
from mnist_tasks.userfiles import MAX_IMAGES, MAX_PNG_BYTES
from tests.helpers import TEST_BUCKET, call_in_child, png, write_zero_bomb

pytestmark = pytest.mark.integration

GOOD = 12  # good digits landed beside each case (an increment needs at least 10)


def digit(seed: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + seed)
    return np.where(rng.random((28, 28)) < 0.3, rng.integers(1, 256, (28, 28)), 0).astype(np.uint8)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """About 100 bytes whose header claims ``width`` x ``height`` 8-bit gray pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))


@dataclass(frozen=True)
class Case:
    name: str  # the file's name in the batch (in an increment: inside the digit folder 5/)
    data: Callable[[], bytes]
    outcome: str  # "read", "hidden", or a regex the refusal must match (after the file name)


CASES = [
    Case("photo 1.png", lambda: png(digit(1)), "read"),
    Case("IMG_0001 (copy).png", lambda: png(digit(2)), "read"),
    Case("été.png", lambda: png(digit(3)), "read"),
    Case("_x.png", lambda: png(digit(4)), "read"),
    Case("-x.png", lambda: png(digit(5)), "read"),
    Case("x#1.png", lambda: png(digit(6)), "read"),
    Case("rgb.png", lambda: png(np.stack([digit(7)] * 3, axis=-1)), "read"),
    Case(".DS_Store", lambda: b"\0\0\0\1Bud1" + bytes(100), "hidden"),
    Case("._ok.png", lambda: b"\0\5\26\7" + bytes(80), "hidden"),
    Case("_SUCCESS.crc", lambda: b"crc\0\0\0\0", "hidden"),
    Case("bomb.png", bomb_png, r"PNG is 30000x30000, expected 28x28"),
    Case("deep.png", lambda: png(digit(8).astype(np.uint16) * 257),
         r"16-bit grayscale PNG is not supported"),
    Case("junk.png", lambda: b"this is not a png", r"unreadable PNG \(no PNG signature"),
    Case("cut.png", lambda: png(digit(9))[:60], r"unreadable PNG"),
    Case("huge.png", lambda: png(digit(10)) + bytes(MAX_PNG_BYTES),
         rf"[\d,]+ bytes is over the {MAX_PNG_BYTES:,}-byte limit"),
]


# -- landing: the same bytes on a folder or on S3 ------------------------------------------------


class Landing:
    """Writes files under a root the way a user's tools would: any name, the marker last."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.folder = tmp_path / "landing"
        self.folder.mkdir()
        self.uri = self.folder.as_uri() if kind == "file" else f"s3://{TEST_BUCKET}/landing"

    def put(self, key: str, data: bytes) -> None:
        if self.kind == "file":
            path = self.folder / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            boto3.client("s3").put_object(Bucket=TEST_BUCKET, Key=f"landing/{key}", Body=data)

    def store(self) -> Store:
        return LocalStore(self.folder) if self.kind == "file" else S3Store(TEST_BUCKET, "landing")


@pytest.fixture(params=["file", "s3"])
def landing(request: pytest.FixtureRequest, tmp_path: Path) -> Landing:
    if request.param == "s3":
        request.getfixturevalue("s3_env")
    return Landing(request.param, tmp_path)


def land_batch(landing: Landing, batch: str, extra: dict[str, bytes]) -> None:
    for i in range(GOOD):
        landing.put(f"{batch}/good-{i:02d}.png", png(digit(100 + i)))
    for name, data in extra.items():
        landing.put(f"{batch}/{name}", data)
    landing.put(f"{batch}/_SUCCESS", b"")


def land_increment(landing: Landing, inc_id: str, extra: dict[str, bytes], seed: int = 100
                   ) -> None:
    for i in range(GOOD):
        landing.put(f"increments/{inc_id}/{i % 10}/good-{i:02d}.png", png(digit(seed + i)))
    for name, data in extra.items():
        landing.put(f"increments/{inc_id}/5/{name}", data)
    landing.put(f"increments/{inc_id}/_SUCCESS", b"")


def reference() -> Reference:
    rng = np.random.default_rng(0)
    x = np.where(rng.random((200, 28, 28)) < 0.3, rng.integers(1, 256, (200, 28, 28)), 0)
    return Reference.build(x.astype(np.uint8), (np.arange(200) % 10).astype(np.uint8),
                           x[:50].astype(np.uint8) // 2)


# -- the table, both contexts ---------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_scoring_batch_reads_skips_or_names_each_file(landing: Landing, case: Case) -> None:
    land_batch(landing, "b1", {case.name: case.data()})
    read = read_batch(landing.store(), "b1")
    good = [f"good-{i:02d}.png" for i in range(GOOD)]
    if case.outcome == "read":
        assert sorted(read.ids) == sorted([*good, case.name]) and read.errors == []
    elif case.outcome == "hidden":
        assert sorted(read.ids) == good and read.errors == []
        assert read.files == GOOD
    else:
        assert sorted(read.ids) == good
        [error] = read.errors
        assert error["file"] == case.name
        assert error["error"].startswith(f"{case.name}: ")
        assert re.search(case.outcome, error["error"]), error["error"]
        assert " at 0x" not in error["error"]
        # The same file gives the same message, so two runs write the same errors.json.
        assert read_batch(landing.store(), "b1").errors == read.errors
    assert read.images.shape == (len(read.ids), 28, 28)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_an_increment_accepts_skips_or_quarantines_naming_the_file(
    landing: Landing, case: Case
) -> None:
    land_increment(landing, "inc-1", {case.name: case.data()})
    land_increment(landing, "inc-2", {}, seed=200)  # beside it, and checked after it
    found = discover(landing.uri)
    assert [r.id for r in found.complete] == ["inc-1", "inc-2"]
    first, second = check_all(found, reference(), IncrementPolicy())
    assert second.status == "ACCEPTED"  # one bad file never stops the run
    if case.outcome == "read":
        assert first.status == "ACCEPTED" and first.counts["received"] == GOOD + 1
    elif case.outcome == "hidden":
        assert first.status == "ACCEPTED" and first.counts["received"] == GOOD
    else:
        assert first.status == "QUARANTINED"
        [reason] = first.reasons
        assert reason.startswith(f"{landing.uri}/increments/inc-1/5/{case.name}: ")
        assert re.search(case.outcome, reason), reason


# -- what only a folder can hold: links and special files ------------------------------------------


def test_links_and_special_files_in_a_folder(tmp_path: Path) -> None:
    landing = Landing("file", tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png(digit(50)))
    land_batch(landing, "b1", {})
    batch = landing.folder / "b1"
    os.mkfifo(batch / "p.png")
    (batch / "z.png").symlink_to("/dev/zero")
    (batch / "out.png").symlink_to(outside / "secret.png")
    (landing.folder / "shared.png").write_bytes(png(digit(51)))
    (batch / "in.png").symlink_to(landing.folder / "shared.png")  # inside the landing: fine
    (batch / "sub").symlink_to(outside, target_is_directory=True)
    read = read_batch(landing.store(), "b1")
    assert "in.png" in read.ids and len(read.ids) == GOOD + 1
    problems = {e["file"]: e["error"] for e in read.errors}
    assert set(problems) == {"p.png", "z.png", "out.png", "sub"}
    assert "not a regular file" in problems["p.png"]
    assert "outside the source folder" in problems["z.png"]
    assert "outside the source folder" in problems["out.png"]
    assert "outside" in problems["sub"] and "not followed" in problems["sub"]

    # In a source: a digit folder that is a link inside the source is followed.
    land_increment(landing, "linked", {})
    (landing.folder / "increments" / "linked" / "7").rename(landing.folder / "seven")
    (landing.folder / "seven" / "b.png").write_bytes(png(digit(61)))
    (landing.folder / "increments" / "linked" / "7").symlink_to(landing.folder / "seven")
    [ref] = [r for r in discover(landing.uri).complete if r.id == "linked"]
    [result] = check_all([ref], reference(), IncrementPolicy())
    assert result.status == "ACCEPTED" and result.counts["received"] == GOOD + 1
    assert result.class_counts[7] == 2  # good-07 and b.png, through the link


def test_bombs_and_special_files_cost_bounded_memory(tmp_path: Path) -> None:
    """The files claim gigabytes (a PNG header, a sparse file, /dev/zero, a FIFO, a gzip bomb);
    reading them in a fresh process grows its memory by a few MB, and a gzip bomb by at most
    twice the largest IDX payload accepted (it is inflated up to that cap, then refused)."""
    landing = Landing("file", tmp_path)
    land_batch(landing, "specials", {"bomb.png": bomb_png(200_000, 200_000)})
    batch = landing.folder / "specials"
    with open(batch / "sparse.png", "wb") as fh:
        fh.truncate(1 << 30)
    os.mkfifo(batch / "p.png")
    (batch / "z.png").symlink_to("/dev/zero")
    land_batch(landing, "gzip-bomb", {})
    write_zero_bomb(landing.folder / "gzip-bomb" / "zeros-idx3-ubyte.gz", 1 << 30)

    run = call_in_child("tests.integration.test_user_files:read_batch_summary",
                        str(landing.folder), "specials")
    assert run.error_type is None, run.message
    assert run.value == {"images": GOOD, "skipped": ["bomb.png", "p.png", "sparse.png",
                                                     "z.png"]}
    assert run.growth < 16 << 20, f"memory grew by {run.growth:,} bytes"

    run = call_in_child("tests.integration.test_user_files:read_batch_summary",
                        str(landing.folder), "gzip-bomb")
    assert run.error_type is None, run.message
    assert run.value == {"images": GOOD, "skipped": ["zeros-idx3-ubyte.gz"]}
    largest = 16 + MAX_IMAGES * 28 * 28
    assert run.growth < 2 * largest, f"memory grew by {run.growth:,} bytes"


def read_batch_summary(folder: str, batch: str) -> dict[str, Any]:
    """``read_batch`` of a folder landing, as JSON (for :func:`call_in_child`)."""
    read = read_batch(LocalStore(folder), batch)
    return {"images": len(read.ids), "skipped": [e["file"] for e in read.errors]}


def test_one_bad_file_never_stops_scoring(landing: Landing, model_file: Path,
                                          tmp_path: Path) -> None:
    """A batch with a bomb beside two good batches: all three are scored, the bomb named."""
    from mnist_tasks.registry import Registry

    store = LocalStore(tmp_path / "store")
    Registry(store).register("run-a", {"model.keras": model_file},
                             {"metrics": {"test_accuracy": 0.9}})
    Registry(store).promote(1)
    land_batch(landing, "a-good", {})
    land_batch(landing, "b-bomb", {"bomb.png": bomb_png(), "photo 1.png": png(digit(1))})
    landing.put("c-idx/digits-idx3-ubyte.gz",
                gzip.compress(encode_idx(np.stack([digit(i) for i in range(5)]))))
    landing.put("c-idx/_SUCCESS", b"")
    cfg = score.ScoringConfig(landing=landing.uri)
    result = score.score_batches(cfg, store, landing.store(), "run-1")
    assert sorted(result.committed) == ["a-good", "b-bomb", "c-idx"]
    errors = read_output(store, cfg, "b-bomb", 1, ERRORS)
    assert b"bomb.png: PNG is 30000x30000" in errors
    rows = read_output(store, cfg, "b-bomb", 1, PREDICTIONS).decode()
    assert "photo 1.png" in rows and rows.count("\n") == GOOD + 2
