"""The validation report: metrics on tiny synthetic arrays, checks against thresholds, messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mnist_tasks import validation
from mnist_tasks.config import ValidationThresholds
from mnist_tasks.validation import (
    DataValidationError,
    build_report,
    compute_metrics,
    evaluate_checks,
    raise_if_failed,
    row_hashes,
    summarize,
    summary_lines,
)
from tests.helpers import make_arrays

REPORT_URI = "s3://bucket/cache/datasets/idx-abc/validation.json"


def _metrics(a: dict[str, np.ndarray]) -> dict:
    return compute_metrics(a["x_train"], a["y_train"], a["x_test"], a["y_test"])


def test_clean_data_passes_every_check() -> None:
    a = make_arrays(n_train=100, n_test=50)
    m = _metrics(a)
    assert m["train"]["count"] == 100 and m["test"]["count"] == 50
    assert m["train"]["class_counts"] == [10] * 10
    assert m["train"]["max_class_deviation"] == 0.0
    assert m["train"]["image_shape"] == [28, 28] and m["train"]["dtype"] == "uint8"
    assert m["train"]["blank_images"] == 0
    assert m["train"]["duplicate_images"] == 0 and m["leakage"]["test_images_in_train"] == 0
    assert (m["train"]["label_min"], m["train"]["label_max"]) == (0, 9)
    checks = evaluate_checks(m, ValidationThresholds())
    assert [c["name"] for c in checks] == [
        "train_count", "test_count", "train_class_imbalance", "train_blank_fraction",
        "test_class_imbalance", "test_blank_fraction", "train_duplicate_fraction",
        "leakage_fraction",
    ]
    assert all(c["passed"] for c in checks)
    raise_if_failed(checks, REPORT_URI)  # no error
    json.dumps(build_report(m, ValidationThresholds(), dataset_key="k", source="s"))


def test_exact_duplicates_within_train_are_counted() -> None:
    a = make_arrays(n_train=100, n_test=20)
    x = a["x_train"].copy()
    x[10] = x[11] = x[12] = x[3]  # three extra copies of image 3
    x[50] = x[7]  # one extra copy of image 7
    a["x_train"] = x
    m = _metrics(a)["train"]
    assert m["duplicate_images"] == 4
    assert m["duplicate_groups"] == 2
    assert m["duplicate_fraction"] == pytest.approx(0.04)
    assert sorted(m["duplicate_examples"]) == [[3, 10, 11, 12], [7, 50]]


def test_leakage_reports_test_images_present_in_train() -> None:
    a = make_arrays(n_train=100, n_test=20)
    x_test = a["x_test"].copy()
    x_test[2] = a["x_train"][40]
    x_test[9] = a["x_train"][0]
    a["x_test"] = x_test
    leak = _metrics(a)["leakage"]
    assert leak["test_images_in_train"] == 2
    assert leak["fraction"] == pytest.approx(0.1)
    assert leak["examples"] == [[2, 40], [9, 0]]


def test_hash_collisions_never_count_as_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    # Force every image to the same hash: the byte comparison must still give exact counts.
    monkeypatch.setattr(validation, "row_hashes",
                        lambda x: np.zeros(len(x), dtype=np.uint64))
    a = make_arrays(n_train=30, n_test=10)
    x_test = a["x_test"].copy()
    x_test[4] = a["x_train"][5]
    a["x_test"] = x_test
    m = _metrics(a)
    assert m["train"]["duplicate_images"] == 0
    assert m["leakage"]["test_images_in_train"] == 1


def test_row_hashes_equal_for_equal_rows_and_any_width() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (50, 5, 3), dtype=np.uint8)  # 15 bytes: not a multiple of 8
    x[20] = x[4]
    h = row_hashes(x)
    assert h.dtype == np.uint64 and h.shape == (50,)
    assert h[20] == h[4]
    assert len(np.unique(h)) == 49


def test_blank_images_and_pixel_range() -> None:
    a = make_arrays(n_train=50, n_test=20)
    x = a["x_train"].copy()
    x[0] = 0
    x[1] = 17  # all pixels equal, though not zero: still blank
    a["x_train"] = x
    m = _metrics(a)["train"]
    assert m["blank_images"] == 2
    assert m["blank_fraction"] == pytest.approx(0.04)
    assert (m["pixel_min"], m["pixel_max"]) == (0, 255)


def test_class_imbalance_is_max_relative_deviation() -> None:
    a = make_arrays(n_train=100, n_test=20)
    y = a["y_train"].copy()
    y[y == 9] = 8  # no 9s, twice as many 8s
    a["y_train"] = y
    m = _metrics(a)["train"]
    assert m["class_counts"][8:] == [20, 0]
    assert m["max_class_deviation"] == pytest.approx(1.0)


def test_failures_name_check_amount_threshold_and_report() -> None:
    a = make_arrays(n_train=100, n_test=20)
    y = a["y_train"].copy()
    y[y == 9] = 8
    x_test = a["x_test"].copy()
    x_test[:3] = a["x_train"][:3]
    a["y_train"], a["x_test"] = y, x_test
    m = _metrics(a)
    checks = evaluate_checks(m, ValidationThresholds())
    assert {c["name"] for c in checks if not c["passed"]} == {
        "train_class_imbalance", "leakage_fraction"
    }
    with pytest.raises(DataValidationError) as info:
        raise_if_failed(checks, REPORT_URI)
    msg = str(info.value)
    assert "data validation failed (2 of 8 checks)" in msg
    assert "train_class_imbalance = 1 exceeds max_class_imbalance = 0.5 by 0.5" in msg
    assert "(train class counts 0..20 (digit 8 furthest from balanced))" in msg
    assert "leakage_fraction = 0.15 exceeds max_leakage_fraction = 0 by 0.15" in msg
    assert "3 of 20 test images also occur in train" in msg
    assert msg.endswith(f"Report: {REPORT_URI}")
    s = summarize(m, checks)
    assert s["passed"] is False and s["failed"] == ["train_class_imbalance", "leakage_fraction"]
    assert s["test_images_in_train"] == 3
    assert summary_lines(m, checks)[-1] == (
        "2 of 8 checks FAILED: train_class_imbalance, leakage_fraction"
    )


def test_thresholds_decide_not_metrics() -> None:
    a = make_arrays(n_train=100, n_test=20)
    x = a["x_train"].copy()
    x[1] = x[0]
    a["x_train"] = x
    m = _metrics(a)
    strict = evaluate_checks(m, ValidationThresholds(max_duplicate_fraction=0.0))
    loose = evaluate_checks(m, ValidationThresholds(max_duplicate_fraction=0.05))
    assert not next(c for c in strict if c["name"] == "train_duplicate_fraction")["passed"]
    assert all(c["passed"] for c in loose)


def test_min_count_failure_says_below() -> None:
    a = make_arrays(n_train=20, n_test=10)
    checks = evaluate_checks(_metrics(a), ValidationThresholds(min_train_images=100))
    with pytest.raises(DataValidationError,
                       match=r"train_count = 20 is below min_train_images = 100 by 80"):
        raise_if_failed(checks, REPORT_URI)


def test_empty_test_split_is_reported_not_crashing() -> None:
    a = make_arrays(n_train=20, n_test=10)
    a["x_test"], a["y_test"] = a["x_test"][:0], a["y_test"][:0]
    m = _metrics(a)
    assert m["test"]["count"] == 0 and m["test"]["pixel_min"] is None
    checks = evaluate_checks(m, ValidationThresholds())
    assert [c["name"] for c in checks if not c["passed"]] == ["test_count"]
