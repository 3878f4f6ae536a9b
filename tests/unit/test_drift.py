"""mnist_tasks.drift: the two-sample tests and the ink features, on small synthetic samples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mnist_tasks import drift


def test_holm_matches_the_textbook_example() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone
    assert drift.holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx(
        [0.03, 0.06, 0.06, 0.02])
    assert drift.holm([0.5, 0.9]).tolist() == [1.0, 1.0]
    assert drift.holm([]).tolist() == []
    with pytest.raises(ValueError, match="p-values in"):
        drift.holm([0.1, 1.2])


def test_holm_is_never_below_bonferroni_divided_nor_above_it() -> None:
    p = np.random.default_rng(0).random(7) / 10
    adjusted = drift.holm(p)
    assert (adjusted >= p).all() and (adjusted <= np.minimum(1, 7 * p) + 1e-12).all()


def test_mmd_separates_shifted_samples_and_not_equal_ones() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (200, 8))
    same = rng.normal(0, 1, (200, 8))
    moved = rng.normal(0.5, 1, (200, 8))
    bw = drift.median_bandwidth(ref)
    null = drift.mmd_test(same, ref, bandwidth=bw, permutations=199,
                          rng=np.random.default_rng(1))
    alt = drift.mmd_test(moved, ref, bandwidth=bw, permutations=199,
                         rng=np.random.default_rng(1))
    assert null.p_value > 0.05 and abs(null.effect_size) < 0.01
    assert alt.p_value == 1 / 200 and alt.effect_size > 0.05
    assert alt.details["permutations"] == 199


def test_mmd_stops_early_with_the_sequential_p_value() -> None:
    rng = np.random.default_rng(2)
    ref, same = rng.normal(0, 1, (100, 4)), rng.normal(0, 1, (100, 4))
    bw = drift.median_bandwidth(ref)
    full = drift.mmd_test(same, ref, bandwidth=bw, permutations=999,
                          rng=np.random.default_rng(3))
    early = drift.mmd_test(same, ref, bandwidth=bw, permutations=999,
                           rng=np.random.default_rng(3), stop_after=10)
    made = early.details["permutations"]
    assert made < 999 and early.p_value == pytest.approx(10 / made)
    assert early.statistic == full.statistic
    # The same seed and chunks: the early run saw the full run's first relabellings.
    assert full.p_value > 0.05 and early.p_value > 0.05


def test_mmd_of_one_row_is_no_evidence() -> None:
    res = drift.mmd_test(np.ones((1, 3)), np.zeros((5, 3)), bandwidth=1.0,
                         permutations=9, rng=np.random.default_rng(0))
    assert (res.statistic, res.p_value) == (0.0, 1.0)


def test_median_bandwidth_is_positive_even_for_equal_rows() -> None:
    assert drift.median_bandwidth(np.zeros((5, 3))) == 1.0
    assert drift.median_bandwidth(np.array([[0.0], [3.0]])) == pytest.approx(3.0)


def test_ks_and_chi2_effect_sizes() -> None:
    ks = drift.ks_test(np.zeros(50), np.ones(50))
    assert ks.effect_size == 1.0 and ks.p_value < 1e-10 and "cohens_d" not in ks.details
    rates = drift.chi2_homogeneity(np.array([10, 0, 0]), np.array([5, 5, 0]))
    assert rates.effect_size == pytest.approx(0.5) and rates.details["dof"] == 1
    with pytest.raises(ValueError, match="count vectors"):
        drift.chi2_homogeneity(np.array([1, 2]), np.array([1, 2, 3]))


def test_ks_p_value_is_exact_up_to_4000_values_and_asymptotic_above() -> None:
    rng = np.random.default_rng(4)
    small, big = rng.normal(0, 1, 300), rng.normal(0.05, 1, 4001)
    exact = stats.ks_2samp(small, big[:4000], method="exact").pvalue
    asymp = stats.ks_2samp(small, big, method="asymp").pvalue
    assert drift.ks_test(small, big[:4000]).p_value == exact
    assert drift.ks_test(small, big).p_value == asymp
    res = drift.ks_test(small, big)
    assert res.details["batch_mean"] == pytest.approx(small.mean())
    assert res.details["reference_mean"] == pytest.approx(big.mean())


def test_chi2_goodness_of_fit_against_the_reference_proportions() -> None:
    counts, reference = np.array([30, 50, 20]), np.array([300, 400, 300])
    res = drift.chi2_goodness_of_fit(counts, reference)
    expected = stats.chisquare(counts, 100 * reference / reference.sum())
    assert res.statistic == pytest.approx(expected.statistic)
    assert res.p_value == pytest.approx(expected.pvalue)
    assert res.effect_size == pytest.approx(np.sqrt(expected.statistic / (100 * 2)))
    assert res.details["dof"] == 2
    unseen = drift.chi2_goodness_of_fit(np.array([5, 5, 1]), np.array([10, 10, 0]))
    assert (unseen.statistic, unseen.p_value, unseen.effect_size) == (np.inf, 0.0, np.inf)
    one = drift.chi2_goodness_of_fit(np.array([4, 0]), np.array([9, 0]))
    assert (one.p_value, one.effect_size) == (1.0, 0.0)
    with pytest.raises(ValueError, match="count vectors"):
        drift.chi2_goodness_of_fit(np.array([1, 2]), np.array([0, 0]))


def test_ink_features_are_mean_intensity_and_stroke_area() -> None:
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[0, :14] = 255  # half the pixels, full ink
    images[1] = 127  # faint everywhere: no stroke
    mean, area = drift.ink_features(images)
    assert mean.tolist() == pytest.approx([0.5, 127 / 255])
    assert area.tolist() == [0.5, 0.0]
    assert mean.dtype == area.dtype == np.float64
