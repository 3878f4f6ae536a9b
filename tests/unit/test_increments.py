"""Labeled increments: discovery, strict reading, validation, drift and the fresh split.

Synthetic digits throughout, except the drift test, which uses 500 real MNIST digits.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mnist_tasks import idx, increment_files, userfiles
from mnist_tasks.config import ConfigError
from mnist_tasks.demo_data import thicken, write_increment
from mnist_tasks.increment_files import MARKER, discover, payload_sha256, read_increment
from mnist_tasks.increments import (
    ACCEPTED,
    QUARANTINED,
    IncrementPolicy,
    IncrementQuarantined,
    Reference,
    check_all,
    fresh_split,
    raise_on_quarantine,
    validate_increment,
)
from mnist_tasks.userfiles import UserFileError
from tests.helpers import gz_idx, land_files, png, reference_data
from tests.helpers import sparse_digits as digits


@pytest.fixture(scope="module")
def base() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return reference_data()


@pytest.fixture(scope="module")
def reference(base: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Reference:
    return Reference.build(*base)


def land(root: Path, inc_id: str, images: np.ndarray, labels: np.ndarray, *,
         fmt: str = "idx") -> Path:
    return write_increment(root, inc_id, images, labels, fmt=fmt)


def only(root: Path) -> increment_files.IncrementRef:
    found = discover(str(root))
    assert len(found.complete) == 1, found
    return found.complete[0]


# --------------------------------------------------------------------------- discovery


def test_discover_sorts_complete_and_names_incomplete_and_invalid(tmp_path: Path) -> None:
    x, y = digits(20, seed=3)
    land(tmp_path, "2026-11-27", x, y)
    land(tmp_path, "2026-11-20", x, y)
    land_files(tmp_path, "2026-12-01", {"images-idx3-ubyte.gz": gz_idx(x)}, marker=False)
    land_files(tmp_path, "-bad", {"images-idx3-ubyte.gz": gz_idx(x)})
    (tmp_path / "increments" / "stray.txt").write_text("hi")
    land_files(tmp_path, ".uploading-x", {"images-idx3-ubyte.gz": b""})  # hidden: skipped
    (tmp_path / "increments" / "2026-11-20" / ".notes").write_text("hidden")
    found = discover(f"file://{tmp_path}")
    assert [r.id for r in found.complete] == ["2026-11-20", "2026-11-27"]
    assert found.incomplete == ("2026-12-01",)
    assert dict(found.invalid).keys() == {"-bad", "stray.txt"}
    assert tuple(f.key for f in found.complete[0].files) == (
        "increments/2026-11-20/images-idx3-ubyte.gz",
        "increments/2026-11-20/labels-idx1-ubyte.gz",
    )
    assert found.complete[0].uri == f"file://{tmp_path}/increments/2026-11-20"
    assert json.loads(json.dumps(found.to_dict()))["incomplete"] == ["2026-12-01"]


def test_a_source_without_increments_is_empty(tmp_path: Path) -> None:
    found = discover(str(tmp_path))
    assert found.complete == () and found.incomplete == () and found.invalid == ()


def test_an_incomplete_folder_is_not_read_and_its_marker_makes_it_complete(
    tmp_path: Path,
) -> None:
    x, y = digits(20, seed=3)
    folder = land_files(tmp_path, "late", {"images-idx3-ubyte.gz": b"partial upload"},
                        marker=False)
    assert discover(str(tmp_path)).incomplete == ("late",)
    (folder / "images-idx3-ubyte.gz").write_bytes(gz_idx(x))
    (folder / "labels-idx1-ubyte.gz").write_bytes(gz_idx(y))
    (folder / MARKER).write_bytes(b"")
    raw = read_increment(only(tmp_path))
    assert raw.format == "idx" and len(raw.images) == 20


# --------------------------------------------------------------------------- reading


def test_idx_and_png_increments_of_the_same_digits_decode_and_hash_alike(tmp_path: Path) -> None:
    x, y = digits(30, seed=4)
    order = np.lexsort((np.arange(30), y))  # the PNG order: by digit, then file name
    a, b = tmp_path / "a", tmp_path / "b"
    land(a, "as-idx", x[order], y[order])
    land(b, "as-png", x, y, fmt="png")
    raw_idx, raw_png = read_increment(only(a)), read_increment(only(b))
    assert raw_png.format == "png" and raw_idx.format == "idx"
    np.testing.assert_array_equal(raw_png.images, x[order])
    np.testing.assert_array_equal(raw_png.labels, y[order])
    assert raw_png.payload_sha256 == raw_idx.payload_sha256 == payload_sha256(x[order], y[order])
    assert raw_png.images.dtype == np.uint8 and raw_png.images.shape == (30, 28, 28)


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    x, y = digits(50, seed=5)
    data = gz_idx(x)
    land_files(tmp_path, "cut", {"images-idx3-ubyte.gz": data[: len(data) // 2],
                                 "labels-idx1-ubyte.gz": gz_idx(y)})
    with pytest.raises(UserFileError, match=r"increments/cut/images-idx3-ubyte\.gz: truncated"):
        read_increment(only(tmp_path))


def test_label_out_of_range_names_the_file(tmp_path: Path) -> None:
    x, y = digits(20, seed=6)
    y[7] = 12
    land_files(tmp_path, "bad-label", {"images-idx3-ubyte.gz": gz_idx(x),
                                       "labels-idx1-ubyte.gz": gz_idx(y)})
    with pytest.raises(UserFileError, match=r"labels-idx1-ubyte\.gz: 1 labels out of range "
                                             r"0\.\.9 \(first: label 12 at index 7\)"):
        read_increment(only(tmp_path))


def test_bad_idx_header_and_count_mismatch_name_the_file(tmp_path: Path) -> None:
    x, y = digits(20, seed=7)
    bad = bytearray(idx.encode_idx(x))
    bad[2] = 0x42
    land_files(tmp_path / "a", "hdr", {"images-idx3-ubyte.gz": gzip.compress(bytes(bad)),
                                       "labels-idx1-ubyte.gz": gz_idx(y)})
    with pytest.raises(UserFileError, match=r"hdr/images-idx3-ubyte\.gz: unknown IDX type"):
        read_increment(only(tmp_path / "a"))
    land_files(tmp_path / "b", "count", {"images-idx3-ubyte.gz": gz_idx(x),
                                         "labels-idx1-ubyte.gz": gz_idx(y[:19])})
    with pytest.raises(UserFileError, match=r"labels-idx1-ubyte\.gz: 19 labels for 20 images"):
        read_increment(only(tmp_path / "b"))
    land_files(tmp_path / "c", "size", {"images-idx3-ubyte.gz": gz_idx(x[:, :27, :]),
                                        "labels-idx1-ubyte.gz": gz_idx(y)})
    with pytest.raises(UserFileError, match=r"images are 27x28, expected 28x28"):
        read_increment(only(tmp_path / "c"))


def test_png_of_the_wrong_size_names_the_file(tmp_path: Path) -> None:
    x, _ = digits(3, seed=8)
    land_files(tmp_path, "big", {
        "3/a.png": png(x[0]),
        "3/b.png": png(np.zeros((32, 32), dtype=np.uint8)),
    })
    with pytest.raises(UserFileError, match=r"increments/big/3/b\.png: PNG is 32x32, "
                                             r"expected 28x28"):
        read_increment(only(tmp_path))


def test_png_modes_convert_to_grayscale_and_16_bit_is_refused(tmp_path: Path) -> None:
    gray = digits(1, seed=9)[0][0]
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    land_files(tmp_path / "a", "colour", {"1/rgba.png": png(rgba),
                                          "2/p.png": png(gray, "P")})
    raw = read_increment(only(tmp_path / "a"))
    np.testing.assert_array_equal(raw.images[0], gray)  # R=G=B: luma is the gray value
    np.testing.assert_array_equal(raw.images[1], gray)
    assert raw.labels.tolist() == [1, 2]
    land_files(tmp_path / "b", "deep", {"4/x.png": png(gray.astype(np.uint16) * 256)})
    with pytest.raises(UserFileError, match=r"deep/4/x\.png: 16-bit grayscale PNG is not "):
        read_increment(only(tmp_path / "b"))


def test_unreadable_png_and_unexpected_files_name_the_file(tmp_path: Path) -> None:
    land_files(tmp_path / "a", "junk", {"5/x.png": b"not a png at all"})
    with pytest.raises(UserFileError, match=r"junk/5/x\.png: unreadable PNG"):
        read_increment(only(tmp_path / "a"))
    good = png(digits(1, seed=1)[0][0])
    land_files(tmp_path / "b", "cut", {"5/x.png": good[: len(good) - 20]})
    with pytest.raises(UserFileError, match=r"cut/5/x\.png: unreadable PNG"):
        read_increment(only(tmp_path / "b"))
    land_files(tmp_path / "c", "odd", {"5/x.png": good, "notes.txt": b"hi"})
    with pytest.raises(UserFileError, match=r"odd/notes\.txt: unexpected file"):
        read_increment(only(tmp_path / "c"))
    land_files(tmp_path / "d", "half", {"images-idx3-ubyte.gz": gz_idx(digits(2, 1)[0])})
    with pytest.raises(UserFileError, match=r"half/labels-idx1-ubyte\.gz: missing"):
        read_increment(only(tmp_path / "d"))
    land_files(tmp_path / "e", "empty", {})
    with pytest.raises(UserFileError, match=r"empty: empty increment"):
        read_increment(only(tmp_path / "e"))


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    x, _ = digits(5, seed=10)
    folder = land_files(tmp_path, "fifo", {"images-idx3-ubyte.gz": gz_idx(x)})
    os.mkfifo(folder / "labels-idx1-ubyte.gz")
    with pytest.raises(UserFileError, match=r"labels-idx1-ubyte\.gz: not a regular file"):
        read_increment(only(tmp_path))


def test_symlinks_may_not_leave_the_source_folder(tmp_path: Path) -> None:
    x, y = digits(5, seed=11)
    outside = tmp_path / "outside.gz"
    outside.write_bytes(gz_idx(y))
    src = tmp_path / "src"
    folder = land_files(src, "link", {"images-idx3-ubyte.gz": gz_idx(x)})
    (folder / "labels-idx1-ubyte.gz").symlink_to(outside)
    with pytest.raises(UserFileError, match=r"labels-idx1-ubyte\.gz: a symbolic link .* "
                                             r"outside the source folder"):
        read_increment(only(src))
    # A link that stays inside the source folder is fine.
    (src / "labels.gz").write_bytes(gz_idx(y))
    (folder / "labels-idx1-ubyte.gz").unlink()
    (folder / "labels-idx1-ubyte.gz").symlink_to(src / "labels.gz")
    assert len(read_increment(only(src)).labels) == 5


def test_reads_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = digits(20, seed=12)
    land(tmp_path, "big", x, y)
    monkeypatch.setattr(userfiles, "MAX_IDX_FILE_BYTES", 100)
    with pytest.raises(UserFileError, match=r"images-idx3-ubyte\.gz: [\d,]+ bytes is over the "
                                             r"100-byte limit"):
        read_increment(only(tmp_path))
    monkeypatch.undo()
    monkeypatch.setattr(userfiles, "_MAX_IMAGES_PAYLOAD", 16 + 10 * 784)  # room for 10 images only
    with pytest.raises(UserFileError, match=r"decompresses to more than"):
        read_increment(only(tmp_path))


# --------------------------------------------------------------------------- policy


@pytest.mark.parametrize(("param", "value"), [
    ("fresh_fraction", 1.0), ("fresh_fraction", -0.1), ("max_leakage_fraction", 2),
    ("min_images", 0), ("min_images", 2.5), ("drift_alpha", 0.0), ("max_ks_d", 1.5),
    ("quarantine_on_drift", "yes"), ("drift_sample_size", 10), ("seed", -1),
])
def test_policy_names_the_bad_parameter(param: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"parameter '{param}' = "):
        IncrementPolicy(**{param: value})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- validation


def raw_of(images: np.ndarray, labels: np.ndarray, inc_id: str = "t"
           ) -> increment_files.RawIncrement:
    return increment_files.RawIncrement(inc_id, f"file:///src/increments/{inc_id}", "idx",
                                        images, labels, payload_sha256(images, labels), ())


def test_a_clean_increment_is_accepted_and_split(reference: Reference) -> None:
    x, y = digits(500, seed=20)
    result = validate_increment(raw_of(x, y, "2026-11-20"), reference=reference,
                                policy=IncrementPolicy())
    assert result.status == ACCEPTED and result.reasons == ()
    assert result.counts == {"received": 500, "leaked": 0, "duplicates_within": 0,
                             "duplicates_accepted": 0, "kept": 500, "train": 400, "fresh": 100}
    assert result.class_counts == (50,) * 10
    assert result.train_images.shape == (400, 28, 28) and result.fresh_labels.shape == (100,)
    assert not result.drift_flagged
    assert set(result.drift) == {"class_distribution", "mean_intensity", "stroke_area"}
    assert result.summary_line() == ("increment 2026-11-20: ACCEPTED, 500 images (400 train, "
                                     "100 fresh), 0 duplicates, 0 leaked; drift: none")
    report = json.loads(json.dumps(result.to_dict()))
    assert report["status"] == "ACCEPTED" and report["drift"] is False
    assert report["drift_statistics"]["stroke_area"]["effect"] == "ks_d"


def test_duplicates_within_and_against_accepted_data_are_dropped_and_counted(
    base: tuple[np.ndarray, np.ndarray, np.ndarray], reference: Reference
) -> None:
    x, y = digits(100, seed=21)
    x = np.concatenate([x, x[:5], base[0][:3]])  # 5 repeats, 3 copies of base images
    y = np.concatenate([y, y[:5], base[1][:3]])
    result = validate_increment(raw_of(x, y), reference=reference, policy=IncrementPolicy())
    assert result.status == ACCEPTED
    assert result.counts["duplicates_within"] == 5
    assert result.counts["duplicates_accepted"] == 3
    assert result.counts["kept"] == 100
    later, _ = digits(100, seed=22)
    ref2 = reference.with_accepted(x[:100])  # this increment now counts as accepted
    again = validate_increment(raw_of(np.concatenate([later, x[:10]]), np.arange(110) % 10),
                               reference=ref2, policy=IncrementPolicy())
    assert again.counts["duplicates_accepted"] == 10 and again.counts["kept"] == 100


def test_an_increment_made_of_test_images_is_quarantined(
    base: tuple[np.ndarray, np.ndarray, np.ndarray], reference: Reference
) -> None:
    x_test = base[2][:200]
    result = validate_increment(raw_of(x_test, np.arange(200) % 10, "leak"),
                                reference=reference, policy=IncrementPolicy())
    assert result.status == QUARANTINED
    assert result.counts["leaked"] == 200
    assert any(r.startswith("leakage: 200 of 200 images (100.0%) are identical to test images")
               for r in result.reasons)
    assert result.train_images.shape == (0, 28, 28)  # nothing to train on
    assert "QUARANTINED" in result.summary_line() and "200 leaked" in result.summary_line()


def test_a_few_leaked_images_are_dropped_under_the_threshold(
    base: tuple[np.ndarray, np.ndarray, np.ndarray], reference: Reference
) -> None:
    x, y = digits(100, seed=23)
    x[:4] = base[2][:4]  # 4 % leaked, the limit is 5 %
    result = validate_increment(raw_of(x, y), reference=reference, policy=IncrementPolicy())
    assert result.status == ACCEPTED and result.counts["leaked"] == 4
    assert result.counts["kept"] == 96
    strict = validate_increment(raw_of(x, y), reference=reference,
                                policy=IncrementPolicy(max_leakage_fraction=0.03))
    assert strict.status == QUARANTINED


def test_too_few_images_quarantine(reference: Reference) -> None:
    x, y = digits(9, seed=24)
    result = validate_increment(raw_of(x, y), reference=reference, policy=IncrementPolicy())
    assert result.status == QUARANTINED
    assert result.reasons == ("too few images: 9 left of 9 after dropping 0 (leaked or "
                              "duplicate), min_images 10",)


def test_labels_out_of_range_quarantine_in_validation_too(reference: Reference) -> None:
    x, y = digits(50, seed=25)
    y[3] = 10
    result = validate_increment(raw_of(x, y), reference=reference, policy=IncrementPolicy())
    assert result.status == QUARANTINED
    assert "labels out of range 0..9 (first: 10 at index 3)" in result.reasons[0]


def test_a_one_digit_increment_is_flagged_for_class_drift(reference: Reference) -> None:
    x, _ = digits(300, seed=26)
    y = np.full(300, 7, dtype=np.uint8)
    result = validate_increment(raw_of(x, y), reference=reference, policy=IncrementPolicy())
    stat = result.drift["class_distribution"]
    assert stat["flagged"] and stat["p_value"] < 1e-10
    assert stat["effect"] == "cramers_v" and stat["effect_size"] > 0.9
    assert result.status == ACCEPTED  # drift warns by default
    assert any(r.startswith("drift: class_distribution: cramers_v = ") for r in result.reasons)
    strict = validate_increment(raw_of(x, y), reference=reference,
                                policy=IncrementPolicy(quarantine_on_drift=True))
    assert strict.status == QUARANTINED


@pytest.fixture(scope="module")
def mnist_train(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, ndim in (("train-images-idx3-ubyte.gz", 3), ("train-labels-idx1-ubyte.gz", 1)):
        path = mnist_dir / name
        arrays.append(idx.parse_idx(idx.decompress(path.read_bytes(), source=str(path)),
                                    source=str(path), ndim=ndim))
    return arrays[0], arrays[1]


def test_a_drifted_increment_is_flagged_with_its_statistic(
    mnist_train: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = mnist_train
    ref = Reference.build(x[:50_000], y[:50_000], x[:0])
    policy = IncrementPolicy()
    held_x, held_y = np.array(x[50_000:50_500]), np.array(y[50_000:50_500])
    clean = validate_increment(raw_of(held_x, held_y, "clean"), reference=ref, policy=policy)
    drifted = validate_increment(raw_of(thicken(held_x), held_y, "thick"), reference=ref,
                                 policy=policy)
    assert clean.status == ACCEPTED and not clean.drift_flagged, clean.drift
    assert clean.summary_line().endswith("drift: none")
    assert drifted.status == ACCEPTED and drifted.drift_flagged
    for name in ("stroke_area", "mean_intensity"):
        stat = drifted.drift[name]
        assert stat["flagged"], stat
        assert stat["statistic"] > 2 * policy.max_ks_d > clean.drift[name]["statistic"]
        assert stat["p_value"] < policy.drift_alpha
        assert stat["cohens_d"] > 1.0 > abs(clean.drift[name]["cohens_d"])  # thicker: more ink
    assert not drifted.drift["class_distribution"]["flagged"]  # same labels
    assert ", stroke_area (ks_d=0.5" in drifted.summary_line()
    assert drifted.to_dict()["drift"] is True


# --------------------------------------------------------------------------- fresh split


def test_fresh_split_is_stable_stratified_and_disjoint() -> None:
    labels = (np.arange(1000) % 10).astype(np.uint8)
    train, fresh = fresh_split(labels, 0.2, "2026-11-20", "ab" * 32)
    again = fresh_split(labels, 0.2, "2026-11-20", "ab" * 32)
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(fresh, again[1])
    assert len(fresh) == 200 and np.bincount(labels[fresh]).tolist() == [20] * 10
    assert np.intersect1d(train, fresh).size == 0 and len(train) + len(fresh) == 1000
    other = fresh_split(labels, 0.2, "2026-11-27", "ab" * 32)[1]
    assert not np.array_equal(fresh, other)  # seeded by the id (and the payload)
    assert fresh_split(labels, 0.0, "x", "ab" * 32)[1].size == 0


# --------------------------------------------------------------------------- the whole flow


def test_check_all_quarantines_bad_increments_and_goes_on(
    tmp_path: Path, reference: Reference
) -> None:
    x, y = digits(60, seed=30)
    land(tmp_path, "a-good", x[:40], y[:40])
    land(tmp_path, "b-repeat", x[:40], y[:40])  # the same digits again: all duplicates
    data = gz_idx(x)
    cut = land_files(tmp_path, "c-cut", {"images-idx3-ubyte.gz": data[:-30],
                                         "labels-idx1-ubyte.gz": gz_idx(y)})
    land(tmp_path, "d-png", x[40:], y[40:], fmt="png")
    results = check_all(discover(str(tmp_path)), reference, IncrementPolicy())
    assert [(r.id, r.status) for r in results] == [
        ("a-good", ACCEPTED), ("b-repeat", QUARANTINED), ("c-cut", QUARANTINED),
        ("d-png", ACCEPTED)]
    assert results[1].counts["duplicates_accepted"] == 40
    assert "c-cut/images-idx3-ubyte.gz: truncated gzip" in results[2].reasons[0]
    assert results[2].summary_line().startswith("increment c-cut: QUARANTINED: file://")
    assert json.dumps([r.to_dict() for r in results])  # JSON-able, no arrays
    assert (cut / "images-idx3-ubyte.gz").read_bytes() == data[:-30]  # nothing deleted
    with pytest.raises(IncrementQuarantined, match=r"b-repeat .*; c-cut \(.*truncated gzip"):
        raise_on_quarantine(results, IncrementPolicy(fail_on_quarantine=True))
    raise_on_quarantine(results, IncrementPolicy())  # a warning by default


