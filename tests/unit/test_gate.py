"""The gate's pure decision: threshold, champion margin, McNemar's test, per-digit recall."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from mnist_tasks.config import GateConfig
from mnist_tasks.gate import MCNEMAR_EXACT_MAX, decide, mcnemar_test, per_digit_recall

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
    assert passed.reasons == ["threshold PASS: test accuracy 0.9750 >= minimum 0.9700",
                              "champion INFO: no champion yet: threshold only"]
    assert passed.mcnemar is None and passed.champion_version is None
    failed = decide(cfg, 0.96)
    assert failed.decision == "REJECT"
    assert failed.reasons[0] == "threshold FAIL: test accuracy 0.9600 < minimum 0.9700"


def test_clearly_worse_challenger_is_rejected_with_mcnemar() -> None:
    cfg = GateConfig(min_accuracy=0.5)
    champion = wrong(Y, [0, 1])  # 0.998
    challenger = wrong(Y, np.arange(0, 1000, 20))  # 0.95: 50 wrong, spread over all digits
    result = decide(cfg, 0.95, y_true=Y, challenger_pred=challenger, champion_pred=champion,
                    champion_version=4)
    assert result.decision == "REJECT"
    assert result.champion_accuracy == pytest.approx(0.998)
    by_name = {c.name: c for c in result.checks}
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
    assert result.recall["3"]["drop"] == pytest.approx(0.04)
    assert result.recall["0"] == {"challenger": 1.0, "champion": 1.0, "drop": 0.0}
    assert result.recall["1"]["drop"] == pytest.approx(-0.01)  # the challenger is better there


def test_better_challenger_is_promoted() -> None:
    cfg = GateConfig()
    champion = wrong(Y, np.arange(0, 1000, 40))  # 0.975
    challenger = wrong(Y, [0])  # 0.999
    result = decide(cfg, 0.999, y_true=Y, challenger_pred=challenger, champion_pred=champion,
                    champion_version=2)
    assert result.decision == "PROMOTE"
    assert all(c.passed is not False for c in result.checks)
    assert "largest change" in result.reasons[-1]
    assert result.mcnemar is not None and (result.mcnemar.b, result.mcnemar.c) == (0, 24)


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
