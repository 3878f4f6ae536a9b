"""The gate: its pure decision (threshold, champion margin, McNemar's test, per-digit recall, on
the benchmark and on the fresh data) and the stage with a store and a registry."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks.artifacts import PREPARED_ARRAYS, save_npz, write_json
from mnist_tasks.config import GateConfig
from mnist_tasks.gate import (
    MCNEMAR_EXACT_MAX,
    MIN_FRESH_SUPPORT,
    FreshData,
    decide,
    gate,
    mcnemar_test,
    per_digit_recall,
)
from mnist_tasks.registry import Registry
from mnist_tasks.registry_api import MODEL_FILE
from mnist_tasks.results import (
    EvaluateResult,
    FreshComparison,
    FreshRecall,
    GateDecision,
    IncrementComparison,
    RecallChange,
    from_json,
    to_json,
)
from mnist_tasks.storage import Store
from tests.helpers import evaluate_result, patch_images, patch_model

Y = np.repeat(np.arange(10), 100)  # 1000 test labels, 100 per digit


def wrong(y: np.ndarray, idx: np.ndarray | list[int]) -> np.ndarray:
    """A copy of ``y`` with the predictions at ``idx`` made wrong."""
    pred = y.copy()
    pred[idx] = (pred[idx] + 1) % 10
    return pred


def test_mcnemar_exact_binomial() -> None:
    test = mcnemar_test(10, 0)
    assert test.method == "exact binomial"
    assert test.p_value == pytest.approx(2 * 0.5**10)
    assert test.significant
    assert mcnemar_test(3, 2).p_value == pytest.approx(1.0)  # symmetric: nothing to see
    assert not mcnemar_test(3, 2).significant


def test_mcnemar_chi_square_for_many_discordant_pairs() -> None:
    b, c = 600, 500
    assert b + c > MCNEMAR_EXACT_MAX
    test = mcnemar_test(b, c, significance=0.01)
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    assert test.method == "chi-square with continuity correction"
    assert test.p_value == pytest.approx(math.erfc(math.sqrt(statistic / 2)))  # chi2 sf, 1 dof
    assert test.significant


def test_mcnemar_edge_cases() -> None:
    none = mcnemar_test(0, 0)
    assert (none.p_value, none.significant) == (1.0, False) and "no discordant" in none.method
    with pytest.raises(ValueError, match="b=-1"):
        mcnemar_test(-1, 3)


def test_per_digit_recall() -> None:
    y = np.array([0, 0, 1, 1, 3])
    pred = np.array([0, 1, 1, 1, 2])
    assert per_digit_recall(y, pred) == [0.5, 1.0, None, 0.0] + [None] * 6


def test_no_champion_threshold_only() -> None:
    cfg = GateConfig(min_accuracy=0.97)
    passed = decide(cfg, 0.975)
    assert passed.decision == "PROMOTE"
    assert passed.reasons == ["threshold PASS: benchmark: test accuracy 0.9750 >= minimum 0.9700",
                              "champion INFO: no champion yet: threshold only",
                              "accuracy INFO: fresh: n/a: no fresh data"]
    assert passed.mcnemar is None and passed.champion_version is None and passed.fresh is None
    failed = decide(cfg, 0.96)
    assert failed.decision == "REJECT"
    assert failed.reasons[0] == "threshold FAIL: benchmark: test accuracy 0.9600 < minimum 0.9700"


def test_clearly_worse_challenger_is_rejected_with_mcnemar() -> None:
    cfg = GateConfig(min_accuracy=0.5)
    champion = wrong(Y, [0, 1])  # 0.998
    challenger = wrong(Y, np.arange(0, 1000, 20))  # 0.95: 50 wrong, spread over all digits
    result = decide(cfg, 0.95, y_true=Y, challenger_pred=challenger, champion_pred=champion,
                    champion_version=4)
    assert result.decision == "REJECT"
    assert result.champion_accuracy == pytest.approx(0.998)
    by_name = {c.name: c for c in result.checks if c.test_set == "benchmark"}
    assert by_name["threshold"].passed is True
    assert by_name["champion"].passed is False
    assert "champion v4 0.9980" in by_name["champion"].detail
    # index 0 is wrong for both; 49 only the challenger gets wrong; 1 only the champion
    assert result.mcnemar is not None
    assert (result.mcnemar.b, result.mcnemar.c) == (49, 1)
    assert result.mcnemar.significant and result.mcnemar.p_value < 1e-10
    assert "exact binomial: b=49" in by_name["mcnemar"].detail
    assert "is significant at 0.05" in by_name["mcnemar"].detail


def test_within_margin_passes_and_boundary_is_inclusive() -> None:
    cfg = GateConfig(min_accuracy=0.5, champion_margin=0.002, max_recall_drop=0.05)
    champion = Y.copy()  # 1.0
    challenger = wrong(Y, [5, 505])  # 0.998: exactly champion - margin
    result = decide(cfg, 0.998, y_true=Y, challenger_pred=challenger, champion_pred=champion,
                    champion_version=1)
    assert result.decision == "PROMOTE"
    assert result.mcnemar is not None and not result.mcnemar.significant
    assert "not significant" in result.reasons[2]
    one_more = wrong(Y, [5, 505, 905])  # 0.997
    assert decide(cfg, 0.997, y_true=Y, challenger_pred=one_more, champion_pred=champion)\
        .decision == "REJECT"


def test_per_digit_recall_drop_rejects_even_when_accuracy_is_fine() -> None:
    cfg = GateConfig(min_accuracy=0.5, champion_margin=0.01, max_recall_drop=0.01)
    champion = wrong(Y, np.arange(100, 1000, 100))  # one error on each digit 1-9: 0.991
    challenger = wrong(Y, [300, 301, 302, 303, 304])  # five errors, all on digit 3: 0.995
    result = decide(cfg, 0.995, y_true=Y, challenger_pred=challenger, champion_pred=champion)
    assert result.decision == "REJECT"
    failed = [c for c in result.checks if c.passed is False]
    assert [c.name for c in failed] == ["per-digit recall"]
    assert "digit 3 0.9900 -> 0.9500 (drop 0.0400)" in failed[0].detail
    assert result.per_digit_recall["3"].drop == pytest.approx(0.04)
    assert result.per_digit_recall["0"] == RecallChange(challenger=1.0, champion=1.0, drop=0.0)
    assert result.per_digit_recall["1"].drop == pytest.approx(-0.01)  # the challenger's better


def test_better_challenger_is_promoted() -> None:
    cfg = GateConfig()
    champion = wrong(Y, np.arange(0, 1000, 40))  # 0.975
    challenger = wrong(Y, [0])  # 0.999
    result = decide(cfg, 0.999, y_true=Y, challenger_pred=challenger, champion_pred=champion,
                    champion_version=2)
    assert result.decision == "PROMOTE"
    assert all(c.passed is not False for c in result.checks)
    assert result.reasons[3].startswith("per-digit recall PASS: benchmark: no digit's recall")
    assert "largest change" in result.reasons[3]
    assert result.mcnemar is not None and (result.mcnemar.b, result.mcnemar.c) == (0, 24)
    # Without fresh data the fresh checks are one "n/a" line and change nothing.
    assert result.reasons[-1] == "champion INFO: fresh: n/a: no fresh data"
    assert result.fresh is None
    empty = FreshData(y_true=Y[:0], challenger_pred=Y[:0], champion_pred=Y[:0])
    same = decide(cfg, 0.999, y_true=Y, challenger_pred=challenger, champion_pred=champion,
                  champion_version=2, fresh=empty)
    assert (same.decision, same.reasons, same.fresh) == (result.decision, result.reasons, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"y_true": Y, "challenger_pred": Y[:10], "champion_pred": Y}, r"shape \(10,\)"),
        ({"y_true": Y, "challenger_pred": Y, "champion_pred": Y + 1}, "outside 0-9"),
        ({"y_true": None, "challenger_pred": Y, "champion_pred": Y}, "needs y_true"),
        ({"y_true": Y[:0], "challenger_pred": Y[:0], "champion_pred": Y[:0]}, "empty"),
    ],
)
def test_bad_inputs_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decide(GateConfig(), 0.99, **kwargs)


def test_accuracy_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"1\.5 is not in \[0, 1\]"):
        decide(GateConfig(), 1.5)


# ---------------------------------------------------------------------------- fresh data

FRESH_Y = np.repeat(np.arange(10), 40)  # 400 fresh labels, 40 per digit
FRESH_INC = np.tile([0, 1], 200)  # alternate images from two increments
FRESH_IDS = ("inc-001", "inc-002")


def test_winning_the_benchmark_but_losing_on_fresh_data_is_rejected() -> None:
    cfg = GateConfig(min_accuracy=0.5, champion_margin=0.01, max_recall_drop=0.5)
    champion, challenger = wrong(Y, [0, 1, 2]), Y.copy()  # benchmark: 0.997 vs 1.0
    # Fresh: the champion gets everything right; the challenger misses 20 of 400 (0.95), all
    # in increment inc-002 (odd indices), spread over the digits.
    fresh = FreshData(y_true=FRESH_Y, challenger_pred=wrong(FRESH_Y, np.arange(1, 400, 20)),
                      champion_pred=FRESH_Y.copy(), increment=FRESH_INC,
                      increment_ids=FRESH_IDS)
    result = decide(cfg, 1.0, y_true=Y, challenger_pred=challenger, champion_pred=champion,
                    champion_version=3, fresh=fresh)
    assert result.decision == "REJECT"
    failed = [c for c in result.checks if c.passed is False]
    assert [(c.name, c.test_set) for c in failed] == [("champion", "fresh")]
    assert failed[0].line() == (
        "champion FAIL: fresh: challenger 0.9500 vs champion v3 1.0000 on 400 images "
        "(difference -0.0500, allowed margin 0.0100)")
    bench = [c.line() for c in result.checks if c.test_set == "benchmark"]
    assert bench[:2] == ["threshold PASS: benchmark: test accuracy 1.0000 >= minimum 0.5000",
                         "champion PASS: benchmark: challenger 1.0000 vs champion v3 0.9970 on "
                         "1000 images (difference +0.0030, allowed margin 0.0100)"]
    # Every reason but "no champion yet" names its set.
    assert all(r.split(": ")[1] in ("benchmark", "fresh") for r in result.reasons)
    # McNemar on the fresh data is reported, not decisive.
    assert "mcnemar INFO: fresh: exact binomial: b=20 (only champion right), c=0" in \
        "\n".join(result.reasons)
    assert result.fresh is not None
    assert result.fresh.mcnemar is not None and result.fresh.mcnemar.significant
    assert (result.fresh.n, result.fresh.challenger_accuracy, result.fresh.champion_accuracy) \
        == (400, 0.95, 1.0)
    assert result.fresh.per_increment == {
        "inc-001": IncrementComparison(n=200, challenger=1.0, champion=1.0),
        "inc-002": IncrementComparison(n=200, challenger=0.9, champion=1.0),
    }
    # The benchmark numbers stay where they were.
    assert result.champion_accuracy == pytest.approx(0.997)
    assert result.mcnemar is not None and (result.mcnemar.b, result.mcnemar.c) == (0, 3)
    as_json = to_json(result.fresh)
    json.dumps(as_json)  # plain JSON (an XCom), no NumPy scalars
    assert set(as_json) == {"n", "challenger_accuracy", "champion_accuracy", "mcnemar",
                            "per_digit_recall", "per_increment", "challenger_predictions_uri",
                            "champion_predictions_uri"}
    assert as_json["mcnemar"]["b"] == 20

    # Beyond the margin by three images of 400: not significant (p = 0.25), so not a failure.
    few = FreshData(y_true=FRESH_Y, challenger_pred=wrong(FRESH_Y, [1, 3, 5]),
                    champion_pred=FRESH_Y.copy())
    strict = GateConfig(min_accuracy=0.5, champion_margin=0.005, max_recall_drop=0.5)
    chance = decide(strict, 1.0, y_true=Y, challenger_pred=challenger, champion_pred=champion,
                    champion_version=3, fresh=few)
    assert chance.decision == "PROMOTE"
    assert ("champion PASS: fresh: challenger 0.9925 vs champion v3 1.0000 on 400 images "
            "(difference -0.0075, allowed margin 0.0050; beyond it but not significant, "
            "p=0.25)") in chance.reasons

    # Within the margin on fresh data, the same challenger passes.
    lenient = GateConfig(min_accuracy=0.5, champion_margin=0.06, max_recall_drop=0.5)
    assert decide(lenient, 1.0, y_true=Y, challenger_pred=challenger, champion_pred=champion,
                  fresh=fresh).decision == "PROMOTE"


def test_fresh_recall_drop_counts_only_for_digits_with_enough_fresh_images() -> None:
    cfg = GateConfig(min_accuracy=0.5, champion_margin=0.5, max_recall_drop=0.05)
    # Digit 3 has 40 fresh images, digit 5 only 10 (below the floor), the others 40 or none.
    y = np.concatenate([np.full(40, 3), np.full(MIN_FRESH_SUPPORT - 20, 5), np.full(40, 7)])
    five = np.flatnonzero(y == 5)
    three = np.flatnonzero(y == 3)

    # The challenger misses half of the 5s: a drop of 0.5, but on 10 images: not judged.
    few = FreshData(y_true=y, challenger_pred=wrong(y, five[:5]), champion_pred=y.copy())
    result = decide(cfg, 1.0, y_true=Y, challenger_pred=Y, champion_pred=Y, fresh=few)
    assert result.decision == "PROMOTE"
    line = next(r for r in result.reasons if r.startswith("per-digit recall PASS: fresh: "))
    assert "digits with >= 30 images (3, 7) checked, not 5 (fewer images)" in line
    assert result.fresh is not None
    assert result.fresh.per_digit_recall["5"] == FreshRecall(
        challenger=0.5, champion=1.0, drop=0.5, support=10, checked=False)
    zero = result.fresh.per_digit_recall["0"]
    assert zero.support == 0 and zero.drop is None

    # Six of the forty 3s (drop 0.15 > 0.05, McNemar p = 2 * 0.5**6): flagged, naming the
    # fresh set and the digit.
    enough = FreshData(y_true=y, challenger_pred=wrong(y, three[:6]), champion_pred=y.copy())
    result = decide(cfg, 1.0, y_true=Y, challenger_pred=Y, champion_pred=Y, fresh=enough)
    assert result.decision == "REJECT"
    failed = [c.line() for c in result.checks if c.passed is False]
    assert len(failed) == 1 and failed[0].startswith(
        "per-digit recall FAIL: fresh: digits with >= 30 images (3, 7) checked, not 5 (fewer "
        "images); recall drops by more than 0.0500 significantly: digit 3 1.0000 -> 0.8500 "
        "(drop 0.1500, p=0.03125)")
    assert result.fresh is not None and result.fresh.per_digit_recall["3"].checked is True

    # Three of them (drop 0.075, p = 0.25): beyond the limit, but on 40 images that is chance.
    chance = FreshData(y_true=y, challenger_pred=wrong(y, three[:3]), champion_pred=y.copy())
    result = decide(cfg, 1.0, y_true=Y, challenger_pred=Y, champion_pred=Y, fresh=chance)
    assert result.decision == "PROMOTE"
    assert ("recall drops by more than 0.0500 but not significantly at 0.05: digit 3 1.0000 -> "
            "0.9250 (drop 0.0750, p=0.25)") in "\n".join(result.reasons)

    # Two of them (0.05): at the limit, which is allowed.
    at_limit = FreshData(y_true=y, challenger_pred=wrong(y, three[:2]), champion_pred=y.copy())
    assert decide(cfg, 1.0, y_true=Y, challenger_pred=Y, champion_pred=Y,
                  fresh=at_limit).decision == "PROMOTE"

    # The benchmark has no support floor: one digit-5 image in ten there is judged.
    bench_y = np.concatenate([np.full(10, 5), np.full(990, 1)])
    bench = decide(cfg, 0.99, y_true=bench_y, challenger_pred=wrong(bench_y, [0, 1]),
                   champion_pred=bench_y)
    assert any(r.startswith("per-digit recall FAIL: benchmark: ") and "digit 5" in r
               for r in bench.reasons)


def test_no_digit_with_enough_fresh_images_is_informational() -> None:
    cfg = GateConfig(min_accuracy=0.5, champion_margin=0.5)
    y = np.arange(10)  # one fresh image per digit
    fresh = FreshData(y_true=y, challenger_pred=wrong(y, [0, 1, 2]), champion_pred=y.copy())
    result = decide(cfg, 1.0, y_true=Y, challenger_pred=Y, champion_pred=Y, fresh=fresh)
    assert result.decision == "PROMOTE"
    line = next(r for r in result.reasons if r.startswith("per-digit recall INFO: fresh: "))
    assert line == ("per-digit recall INFO: fresh: not checked: no digit has >= 30 images "
                    "(0, 1, 2, 3, 4, 5, 6, 7, 8, 9 have fewer)")


def test_without_champion_the_fresh_accuracy_is_reported_not_gated() -> None:
    cfg = GateConfig(min_accuracy=0.9)
    fresh = FreshData(y_true=FRESH_Y, challenger_pred=wrong(FRESH_Y, np.arange(0, 400, 2)),
                      increment=FRESH_INC, increment_ids=FRESH_IDS)  # inc-001 all wrong
    result = decide(cfg, 0.95, fresh=fresh)
    assert result.decision == "PROMOTE"  # threshold on the benchmark only
    assert result.reasons[1:] == [
        "champion INFO: no champion yet: threshold only",
        "accuracy INFO: fresh: challenger 0.5000 on 400 images (inc-001 0.0000, inc-002 1.0000)"
        " (not gated: no champion to compare with)",
    ]
    assert result.fresh is not None
    assert result.fresh == FreshComparison(
        n=400, challenger_accuracy=0.5, champion_accuracy=None, mcnemar=None,
        per_digit_recall={},
        per_increment={"inc-001": IncrementComparison(n=200, challenger=0.0, champion=None),
                       "inc-002": IncrementComparison(n=200, challenger=1.0, champion=None)},
    )


@pytest.mark.parametrize(
    ("fresh", "message"),
    [
        (FreshData(y_true=FRESH_Y, challenger_pred=FRESH_Y[:5], champion_pred=FRESH_Y),
         r"challenger fresh predictions has shape \(5,\)"),
        (FreshData(y_true=FRESH_Y, challenger_pred=FRESH_Y, champion_pred=FRESH_Y + 1),
         "champion fresh predictions has labels outside 0-9"),
        (FreshData(y_true=FRESH_Y, challenger_pred=FRESH_Y),
         "on fresh data needs its predictions"),
        (FreshData(y_true=FRESH_Y, challenger_pred=FRESH_Y, champion_pred=FRESH_Y,
                   increment=FRESH_INC[:3], increment_ids=FRESH_IDS),
         r"fresh increment indices have shape \(3,\)"),
    ],
)
def test_bad_fresh_inputs_are_refused(fresh: FreshData, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decide(GateConfig(), 0.99, y_true=Y, challenger_pred=Y, champion_pred=Y, fresh=fresh)


# ---------------------------------------------------------------------------- gate()
# Images where digit d is a bright 4x4 patch at its own place; a Flatten + Dense model with
# hand-set weights reads them perfectly (no training).


def _images(labels: np.ndarray) -> np.ndarray:
    return patch_images(labels).astype(np.float32) / 255  # as preprocess scales them


def _register_perfect_champion(registry: Registry, tmp_path: Path) -> int:
    patch_model().save(tmp_path / "model.keras")
    info = registry.register("champion-run", {MODEL_FILE: tmp_path / "model.keras"},
                             {"metrics": {"test_loss": 0.0123}})
    registry.promote(info.version)
    return info.version


def _prepared(store: Store, fresh: bool) -> str:
    """Prepared data with a 200-image benchmark and, if ``fresh``, 400 fresh images from two
    increments (written as preprocess does: prepared.npz, then prepared.json; the gate reads
    only the arrays and the fresh increments' ids)."""
    arrays = {name: np.zeros((0, 28, 28) if name.startswith("x") else 0, dtype=np.float32
                             if name.startswith("x") else np.uint8) for name in PREPARED_ARRAYS}
    y_test = np.repeat(np.arange(10), 20).astype(np.uint8)
    arrays |= {"x_test": _images(y_test), "y_test": y_test}
    meta: dict[str, Any] = {"fingerprint": "f" * 64}
    if fresh:
        arrays |= {"x_fresh": _images(FRESH_Y), "y_fresh": FRESH_Y.astype(np.uint8),
                   "fresh_increment": FRESH_INC.astype(np.int64)}
        meta["fresh_increments"] = list(FRESH_IDS)
    save_npz(store, "runs/r/preprocess/prepared.npz", arrays)
    write_json(store, "runs/r/preprocess/prepared.json", meta)
    return store.uri_for("runs/r/preprocess/prepared.npz")


def _evaluation(store: Store, tmp_path: Path, prepared_uri: str, test_pred: np.ndarray,
                fresh_pred: np.ndarray | None) -> EvaluateResult:
    """What evaluate would return for these predictions (of the data of :func:`_prepared`)."""
    y_test = np.repeat(np.arange(10), 20)
    for name, pred in (("predictions", test_pred), ("fresh_predictions", fresh_pred)):
        if pred is not None:
            np.save(tmp_path / f"{name}.npy", pred.astype(np.int64))
            store.upload_file(tmp_path / f"{name}.npy", f"runs/r/evaluate/{name}.npy")
    return evaluate_result(
        test_accuracy=float((test_pred == y_test).mean()),
        predictions_uri=store.uri_for("runs/r/evaluate/predictions.npy"),
        fresh_accuracy=None if fresh_pred is None else float((fresh_pred == FRESH_Y).mean()),
        fresh_predictions_uri=None if fresh_pred is None
        else store.uri_for("runs/r/evaluate/fresh_predictions.npy"),
        prepared_uri=prepared_uri, result_uri=store.uri_for("runs/r/evaluate/result.json"))


def test_gate_compares_with_the_champion_on_both_sets_and_records_it(
    file_store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mnist_tasks.gate")
    store, registry = file_store, Registry(file_store)
    prepared_uri = _prepared(store, fresh=True)
    version = _register_perfect_champion(registry, tmp_path)
    y_test = np.repeat(np.arange(10), 20)
    # Perfect on the benchmark, but 20 of the 400 fresh images (all in inc-002) wrong.
    evaluation = _evaluation(store, tmp_path, prepared_uri, y_test,
                             wrong(FRESH_Y, np.arange(1, 400, 20)))
    cfg = GateConfig(min_accuracy=0.9, champion_margin=0.01, max_recall_drop=0.5)

    result = gate(evaluation, cfg, registry, store, "r")

    assert result.decision == "REJECT"
    assert (result.champion_version, result.challenger_accuracy,
            result.champion_accuracy) == (version, 1.0, 1.0)
    assert [r for r in result.reasons if "FAIL" in r] == [
        f"champion FAIL: fresh: challenger 0.9500 vs champion v{version} 1.0000 on 400 images "
        "(difference -0.0500, allowed margin 0.0100)"]
    fresh = result.fresh
    assert fresh is not None and fresh.mcnemar is not None
    assert (fresh.n, fresh.challenger_accuracy, fresh.champion_accuracy) == (400, 0.95, 1.0)
    assert (fresh.mcnemar.b, fresh.mcnemar.c) == (20, 0)
    assert fresh.per_increment["inc-002"] == IncrementComparison(n=200, challenger=0.9,
                                                                 champion=1.0)
    assert fresh.per_digit_recall["4"].support == 40
    assert result.evaluation_uri == evaluation.result_uri  # what register reads next
    assert result.challenger.loss == evaluation.test_loss  # for the approval request
    assert result.champion is not None and result.champion.loss == 0.0123  # as registered

    # The decision is one object, written once: decision.json is its JSON.
    assert result.decision_uri == store.uri_for("runs/r/gate/decision.json")
    record = json.loads(store.read_bytes("runs/r/gate/decision.json"))
    assert record == json.loads(json.dumps(to_json(result)))
    assert from_json(GateDecision, record) == result
    assert record["fresh"]["challenger_accuracy"] == 0.95
    assert record["fresh"]["challenger_predictions_uri"] == evaluation.fresh_predictions_uri
    champion_fresh = store.key_of(record["fresh"]["champion_predictions_uri"])
    with store.local_copy(champion_fresh) as path:
        np.testing.assert_array_equal(np.load(path), FRESH_Y)
    assert {c["test_set"] for c in record["checks"]} == {"benchmark", "fresh"}
    assert (f"gate: REJECT (benchmark: challenger 1.0000, champion v{version} 1.0000; fresh: "
            f"challenger 0.9500, champion v{version} 1.0000 on 400 images)") in caplog.text

    # Fresh predictions that do not give the reported fresh accuracy are refused.
    bad = dataclasses.replace(evaluation, fresh_accuracy=0.5)
    with pytest.raises(ValueError, match=r"fresh_predictions\.npy give fresh accuracy 0\.9500"):
        gate(bad, cfg, registry, store, "r")
    # An evaluation without fresh predictions of data that has fresh images: refused.
    stale = dataclasses.replace(evaluation, fresh_predictions_uri=None, fresh_accuracy=None)
    with pytest.raises(ValueError, match="400 fresh images but the evaluation reports no fresh"):
        gate(stale, cfg, registry, store, "r")


def test_gate_without_champion_reports_fresh_accuracy(file_store: Store, tmp_path: Path) -> None:
    store = file_store
    prepared_uri = _prepared(store, fresh=True)
    y_test = np.repeat(np.arange(10), 20)
    evaluation = _evaluation(store, tmp_path, prepared_uri, y_test,
                             wrong(FRESH_Y, np.arange(0, 400, 2)))
    result = gate(evaluation, GateConfig(), Registry(store), store, "r")
    assert result.decision == "PROMOTE"
    assert result.champion_version is None and result.mcnemar is None
    assert result.champion is None
    assert result.fresh is not None and result.fresh.challenger_accuracy == 0.5
    assert result.fresh.champion_accuracy is None and result.fresh.mcnemar is None
    assert result.reasons[-1].startswith("accuracy INFO: fresh: challenger 0.5000 on 400")


def test_gate_without_fresh_data_is_as_before(file_store: Store, tmp_path: Path) -> None:
    store, registry = file_store, Registry(file_store)
    prepared_uri = _prepared(store, fresh=False)
    _register_perfect_champion(registry, tmp_path)
    y_test = np.repeat(np.arange(10), 20)
    evaluation = _evaluation(store, tmp_path, prepared_uri, y_test, None)
    result = gate(evaluation, GateConfig(), registry, store, "r")
    assert result.decision == "PROMOTE" and result.fresh is None
    assert result.reasons[-1] == "champion INFO: fresh: n/a: no fresh data"
    assert not store.exists("runs/r/gate/champion_fresh_predictions.npy")
    assert json.loads(store.read_bytes("runs/r/gate/decision.json"))["fresh"] is None
