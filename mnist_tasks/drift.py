"""Drift: the two-sample tests and the per-image input features that increments and the
production monitor compare with a reference, each test with a p-value and an effect size.

Pure NumPy/SciPy (no Keras). Each test returns a :class:`TwoSample`; :func:`holm` corrects the
p-values of several tests for their number::

    mean, area = ink_features(images)                          # per image, float64
    ks = ks_test(mean, reference_mean)                         # D is also the effect size
    rates = chi2_homogeneity(batch_counts, reference_counts)   # effect: total variation
    classes = chi2_goodness_of_fit(counts, base_counts)        # effect: Cramer's V
    mmd = mmd_test(batch_emb, ref_emb, bandwidth=median_bandwidth(ref_emb),
                   permutations=999, rng=np.random.default_rng(0))
    corrected = holm([ks.p_value, rates.p_value, mmd.p_value])

Why these tests and how they are combined: ``docs/monitoring.md`` and ``docs/data.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "TwoSample",
    "chi2_goodness_of_fit",
    "chi2_homogeneity",
    "holm",
    "ink_features",
    "ks_test",
    "median_bandwidth",
    "mmd_test",
]

# Permutations are scored in chunks that double from the first to the last size: an early stop
# wastes little, and (pooled x chunk) float32 matrices stay a few MB.
_FIRST_CHUNK, _LAST_CHUNK = 32, 256
_KS_EXACT_MAX = 4000  # larger samples take the asymptotic KS p-value


def ink_features(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mean intensity (0..1) and stroke area (fraction of pixels >= 128), float64.

    ``images``: uint8, (n, 28, 28) or any (n, ...) shape.
    """
    flat = np.asarray(images, dtype=np.uint8).reshape(len(images), -1)
    if flat.shape[1] == 0:
        return np.zeros(len(images)), np.zeros(len(images))
    mean = flat.mean(axis=1, dtype=np.float64) / 255.0
    area = np.count_nonzero(flat >= 128, axis=1) / flat.shape[1]
    return mean, area.astype(np.float64)


@dataclass(frozen=True)
class TwoSample:
    """One two-sample test's outcome.

    ``statistic`` is the test's own statistic, ``effect_size`` a measure of how different the
    two samples are that does not grow with the sample sizes (for KS both are D), and
    ``details`` a few descriptive figures (means, degrees of freedom) for the report.
    """

    statistic: float
    p_value: float
    effect_size: float
    details: Mapping[str, float] = field(default_factory=dict)


def ks_test(sample: np.ndarray, reference: np.ndarray) -> TwoSample:
    """Two-sample Kolmogorov-Smirnov test; the effect size is D itself (0..1).

    The p-value is scipy's exact one while neither sample has more than 4,000 values, the
    asymptotic one above (they agree there to about 2 % of the p-value, at a fraction of the
    time).

    ``details``: ``batch_mean``, ``reference_mean`` and ``cohens_d`` (the mean difference in
    pooled standard deviations; left out when both samples are constant and differ).

    Raises:
        ValueError: if either sample is empty.
    """
    from scipy import stats

    a = np.asarray(sample, dtype=np.float64).ravel()
    b = np.asarray(reference, dtype=np.float64).ravel()
    if not len(a) or not len(b):
        raise ValueError(f"ks_test needs two non-empty samples; got {len(a)} and {len(b)}")
    # The exact null distribution costs several times the asymptotic one for large samples,
    # where the two agree; scipy's "auto" would take the exact one up to 10,000 values.
    res = stats.ks_2samp(a, b, method="auto" if max(len(a), len(b)) <= _KS_EXACT_MAX else "asymp")
    d_stat = float(res.statistic)
    diff = float(a.mean() - b.mean())
    dof = len(a) + len(b) - 2
    pooled = (math.sqrt(((len(a) - 1) * a.var(ddof=1 if len(a) > 1 else 0)
                         + (len(b) - 1) * b.var(ddof=1 if len(b) > 1 else 0)) / dof)
              if dof > 0 else 0.0)
    details = {"batch_mean": float(a.mean()), "reference_mean": float(b.mean())}
    if pooled > 0 or diff == 0:
        details["cohens_d"] = diff / pooled if pooled > 0 else 0.0
    return TwoSample(statistic=d_stat, p_value=float(res.pvalue), effect_size=d_stat,
                     details=details)


def chi2_homogeneity(counts: np.ndarray, reference_counts: np.ndarray) -> TwoSample:
    """Chi-square test that two count vectors (e.g. predicted classes) share one distribution.

    The effect size is the total variation distance between the two proportion vectors (0..1,
    half the L1 distance). Categories empty in both are left out. ``details``: ``dof`` and
    ``cramers_v``.

    Raises:
        ValueError: if the vectors differ in length, hold a negative count, or one sums to 0.
    """
    from scipy import stats

    a = np.asarray(counts, dtype=np.float64).ravel()
    b = np.asarray(reference_counts, dtype=np.float64).ravel()
    if a.shape != b.shape or (a < 0).any() or (b < 0).any() or a.sum() == 0 or b.sum() == 0:
        raise ValueError(f"chi2_homogeneity needs two non-negative count vectors of one length "
                         f"with positive totals; got {a.tolist()} and {b.tolist()}")
    tvd = float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())
    keep = (a + b) > 0
    if keep.sum() < 2:
        return TwoSample(statistic=0.0, p_value=1.0, effect_size=tvd,
                         details={"dof": 0.0, "cramers_v": 0.0})
    table = np.stack([a[keep], b[keep]])
    chi2, p, dof, _ = stats.chi2_contingency(table, correction=False)
    v = math.sqrt(float(chi2) / table.sum())  # a 2 x k table: min(r, k) - 1 = 1
    return TwoSample(statistic=float(chi2), p_value=float(p), effect_size=tvd,
                     details={"dof": float(dof), "cramers_v": v})


def chi2_goodness_of_fit(counts: np.ndarray, reference_counts: np.ndarray) -> TwoSample:
    """Chi-square goodness of fit of ``counts`` to the reference's proportions, which are taken
    as known (a large reference, e.g. the base training set's class counts).

    The effect size is Cramer's V, ``sqrt(chi2 / (n (k - 1)))`` over the k categories the
    reference has (0..1). A count in a category the reference never has makes chi2 and V
    infinite and the p-value 0; with fewer than two categories the p-value is 1 and V 0.
    ``details``: ``dof``.

    Raises:
        ValueError: if the vectors differ in length, hold a negative count, or the reference
            sums to 0.
    """
    from scipy import stats

    a = np.asarray(counts, dtype=np.float64).ravel()
    b = np.asarray(reference_counts, dtype=np.float64).ravel()
    if a.shape != b.shape or (a < 0).any() or (b < 0).any() or b.sum() == 0:
        raise ValueError(f"chi2_goodness_of_fit needs two non-negative count vectors of one "
                         f"length, the reference's with a positive total; got {a.tolist()} "
                         f"and {b.tolist()}")
    n = float(a.sum())
    expected = n * (b / b.sum())
    present = expected > 0
    k = int(present.sum())
    if np.any(a[~present] > 0):
        chi2 = math.inf
    else:
        chi2 = float((((a[present] - expected[present]) ** 2) / expected[present]).sum())
    p = float(stats.chi2.sf(chi2, k - 1)) if k > 1 else 1.0
    v = math.sqrt(chi2 / (n * (k - 1))) if k > 1 and n else 0.0
    return TwoSample(statistic=chi2, p_value=p, effect_size=v, details={"dof": float(k - 1)})


def _sq_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of x and of y (float32, clipped at 0)."""
    xx = np.einsum("ij,ij->i", x, x)
    yy = np.einsum("ij,ij->i", y, y)
    d2 = xx[:, None] + yy[None, :] - 2.0 * (x @ y.T)
    return np.maximum(d2, 0.0, out=d2)


def median_bandwidth(x: np.ndarray) -> float:
    """The median heuristic: the median Euclidean distance between distinct rows of ``x``.

    Falls back to the mean distance when over half the pairs coincide, and to 1.0 when all
    rows are equal, so the result is always a positive kernel width.

    Raises:
        ValueError: if ``x`` is not 2-D with at least two rows.
    """
    z = np.asarray(x, dtype=np.float32)
    if z.ndim != 2 or len(z) < 2:
        raise ValueError(f"median_bandwidth needs a 2-D array of at least two rows; got shape "
                         f"{z.shape}")
    d2 = _sq_distances(z, z)
    dist = np.sqrt(d2[np.triu_indices(len(z), k=1)].astype(np.float64))
    med = float(np.median(dist))
    if med > 0:
        return med
    mean = float(dist.mean())
    return mean if mean > 0 else 1.0


def mmd_test(sample: np.ndarray, reference: np.ndarray, *, bandwidth: float,
             permutations: int, rng: np.random.Generator, stop_after: int | None = None
             ) -> TwoSample:
    """Kernel two-sample test: the unbiased squared maximum mean discrepancy (MMD²) with an RBF
    kernel ``exp(-|x - y|² / (2 bandwidth²))`` and a permutation p-value.

    The pooled samples are relabelled up to ``permutations`` times (seeded by ``rng``); the
    p-value is ``(1 + #{permuted MMD² >= observed}) / (1 + permutations)``, so it is never
    below ``1 / (1 + permutations)``. With ``stop_after`` = h, relabelling stops as soon as h
    of them reach the observed MMD², with p-value h / (relabellings made) (Besag and Clifford's
    sequential Monte Carlo p-value, exact like the full one): a batch like the reference costs
    a few dozen relabellings instead of all. Cost: one (m + n)² kernel matrix and (m + n)²
    multiply-adds per relabelling; subsample large batches before calling. The effect size is
    MMD² itself (0 for one distribution; at most 2).

    Args:
        sample: the batch, (n, D).
        reference: the reference, (m, D).
        bandwidth: the kernel width, positive (fixed in advance, e.g. the reference's median
            heuristic, so the test stays valid).
        permutations: the most relabellings, >= 1.
        rng: the random generator of the relabellings.
        stop_after: stop early after this many relabellings at least as large as observed;
            None never stops early.

    Returns:
        A :class:`TwoSample`; ``details`` has ``permutations``, the relabellings made. With
        fewer than two rows on either side, MMD² 0 and p-value 1.

    Raises:
        ValueError: for samples of different widths, a non-positive bandwidth, no
            permutations or ``stop_after`` < 1.
    """
    x = np.asarray(sample, dtype=np.float32)
    y = np.asarray(reference, dtype=np.float32)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd_test needs two 2-D samples of one width; got {x.shape} and "
                         f"{y.shape}")
    if not bandwidth > 0 or not math.isfinite(bandwidth):
        raise ValueError(f"mmd_test needs a positive bandwidth; got {bandwidth}")
    if permutations < 1 or (stop_after is not None and stop_after < 1):
        raise ValueError(f"mmd_test needs permutations >= 1 and stop_after >= 1; got "
                         f"{permutations} and {stop_after}")
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        return TwoSample(statistic=0.0, p_value=1.0, effect_size=0.0,
                         details={"bandwidth": bandwidth, "batch_rows": float(n),
                                  "reference_rows": float(m), "permutations": 0.0})
    pooled = np.concatenate([x, y])
    kernel = _sq_distances(pooled, pooled)
    np.fill_diagonal(kernel, 0.0)
    kernel *= np.float32(-0.5 / bandwidth**2)
    np.exp(kernel, out=kernel)  # the diagonal is exactly 1
    row_sums = kernel.sum(axis=1, dtype=np.float64)
    total = float(row_sums.sum())

    def mmd2(groups: np.ndarray) -> np.ndarray:
        # groups: (n + m, k) indicators of the batch's rows; all MMD² from one matrix product.
        kx = (kernel @ groups).astype(np.float64)
        s_xx = np.einsum("ij,ij->j", groups, kx)
        s_x = row_sums @ groups
        s_xy = s_x - s_xx
        s_yy = total - 2.0 * s_x + s_xx
        return ((s_xx - n) / (n * (n - 1)) + (s_yy - m) / (m * (m - 1))
                - 2.0 * s_xy / (n * m))

    observed_groups = np.zeros((n + m, 1), dtype=np.float32)
    observed_groups[:n] = 1.0
    observed = float(mmd2(observed_groups)[0])
    # Float sums in another order differ in the last bits: a relabelling that equals the
    # observed one must count as "at least as large".
    tolerance = 1e-6 * max(1.0, abs(observed))
    exceed = done = 0
    p_value = None
    while done < permutations:
        k = min(max(_FIRST_CHUNK, done), _LAST_CHUNK, permutations - done)
        groups = rng.permuted(np.broadcast_to(observed_groups[:, 0], (k, n + m)), axis=1)
        hits = mmd2(np.ascontiguousarray(groups.T)) >= observed - tolerance
        if stop_after is not None and exceed + int(hits.sum()) >= stop_after:
            done += int(np.flatnonzero(np.cumsum(hits) == stop_after - exceed)[0]) + 1
            p_value = stop_after / done
            break
        exceed += int(hits.sum())
        done += k
    if p_value is None:
        p_value = (1 + exceed) / (1 + permutations)
    return TwoSample(statistic=observed, p_value=p_value, effect_size=observed,
                     details={"bandwidth": bandwidth, "batch_rows": float(n),
                              "reference_rows": float(m), "permutations": float(done)})


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down correction: adjusted p-values, in the input's order.

    Rejecting every test whose adjusted p-value is below alpha keeps the probability of any
    false rejection at most alpha, whatever the dependence between the tests (Holm 1979); it
    rejects everything Bonferroni does, and sometimes more.

    Raises:
        ValueError: for a p-value outside [0, 1] or NaN.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"holm needs p-values in [0, 1]; got {p.tolist()}")
    k = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (k - np.arange(k)) * p[order])
    adjusted = np.empty(k)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted
