"""Gate: PROMOTE or REJECT a freshly evaluated model (the challenger), with reasons.

Three checks, one log line each:

1. **threshold**: the test accuracy is at least ``cfg.min_accuracy``;
2. **champion**: the current champion (registry alias ``champion``) is downloaded and evaluated
   in this run on the same test set; the challenger is rejected if its accuracy is below the
   champion's minus ``cfg.champion_margin``. McNemar's test on the discordant pairs is reported
   alongside (it informs, it does not decide);
3. **per-digit recall**: no digit's recall drops by more than ``cfg.max_recall_drop`` against
   the champion.

Without a champion only the threshold applies, and the decision says so. The decision is
written to ``runs/<run-key>/gate/decision.json``.

Run it alone: ``python -m mnist_tasks gate --evaluation @evaluation.json --prepared URI ...``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnist_tasks.artifacts import NUM_CLASSES, json_default, utc_now
from mnist_tasks.config import GateConfig
from mnist_tasks.registry import CHAMPION, Registry, validate_run_key
from mnist_tasks.storage import Store

log = logging.getLogger(__name__)

PROMOTE = "PROMOTE"
REJECT = "REJECT"
# Up to this many discordant pairs McNemar's test is the exact binomial test (cheap even for
# thousands); beyond it, the chi-square approximation with continuity correction.
MCNEMAR_EXACT_MAX = 1000
# Accuracies are ratios of counts; compare with a tolerance far below one test image.
_EPS = 1e-12


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on paired predictions of the same test images.

    ``b``: images the champion gets right and the challenger wrong; ``c``: the reverse.
    """

    b: int
    c: int
    p_value: float
    method: str
    significant: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Check:
    """One gate check: its name, whether it passed (None: informational or skipped), details."""

    name: str
    passed: bool | None
    detail: str

    def line(self) -> str:
        status = {True: "PASS", False: "FAIL", None: "INFO"}[self.passed]
        return f"{self.name} {status}: {self.detail}"


@dataclass(frozen=True)
class Decision:
    """What the gate decided and why."""

    decision: str
    checks: tuple[Check, ...]
    challenger_accuracy: float
    champion_version: int | None
    champion_accuracy: float | None
    mcnemar: McNemar | None
    recall: dict[str, dict[str, float | None]]  # digit -> challenger / champion / drop

    @property
    def reasons(self) -> list[str]:
        """One line per check, e.g. ``threshold PASS: test accuracy 0.9781 >= 0.9700``."""
        return [c.line() for c in self.checks]


def mcnemar_test(b: int, c: int, significance: float = 0.05) -> McNemar:
    """McNemar's test for two classifiers on the same images.

    Exact two-sided binomial test on ``b`` of ``b + c`` discordant pairs (p = 0.5) when
    ``b + c <= MCNEMAR_EXACT_MAX``, else the chi-square statistic with continuity correction
    ``(|b - c| - 1)^2 / (b + c)`` on one degree of freedom.

    Returns:
        The counts, the p-value, which method was used, and whether p < ``significance``.

    Raises:
        ValueError: for negative counts.
    """
    if b < 0 or c < 0:
        raise ValueError(f"McNemar counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return McNemar(b=0, c=0, p_value=1.0, method="none (no discordant pairs)",
                       significant=False)
    from scipy import stats

    if n <= MCNEMAR_EXACT_MAX:
        p = float(stats.binomtest(b, n, 0.5, alternative="two-sided").pvalue)
        method = "exact binomial"
    else:
        statistic = (abs(b - c) - 1) ** 2 / n
        p = float(stats.chi2.sf(statistic, df=1))
        method = "chi-square with continuity correction"
    p = min(1.0, p)
    return McNemar(b=int(b), c=int(c), p_value=p, method=method, significant=p < significance)


def per_digit_recall(y_true: np.ndarray, y_pred: np.ndarray) -> list[float | None]:
    """Recall of each digit 0-9 (None for a digit absent from ``y_true``)."""
    y_true = np.asarray(y_true).astype(np.int64)
    y_pred = np.asarray(y_pred).astype(np.int64)
    support = np.bincount(y_true, minlength=NUM_CLASSES)
    hits = np.bincount(y_true[y_true == y_pred], minlength=NUM_CLASSES)
    return [float(hits[d] / support[d]) if support[d] else None for d in range(NUM_CLASSES)]


def _labels(name: str, arr: np.ndarray, n: int | None = None) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 1 or (n is not None and len(arr) != n):
        want = f"({n},)" if n is not None else "(N,)"
        raise ValueError(f"{name} has shape {arr.shape}; expected {want} class labels")
    if arr.size and (arr.min() < 0 or arr.max() >= NUM_CLASSES):
        raise ValueError(f"{name} has labels outside 0-{NUM_CLASSES - 1}")
    return arr.astype(np.int64)


def decide(
    cfg: GateConfig,
    challenger_accuracy: float,
    *,
    y_true: np.ndarray | None = None,
    challenger_pred: np.ndarray | None = None,
    champion_pred: np.ndarray | None = None,
    champion_version: int | None = None,
) -> Decision:
    """The gate's decision; a pure function of its inputs.

    Args:
        cfg: thresholds.
        challenger_accuracy: the challenger's test accuracy (for the threshold check).
        y_true: the test labels; needed with a champion.
        challenger_pred: the challenger's predicted classes on the test set.
        champion_pred: the champion's predicted classes on the same images; None when there
            is no champion (threshold only).
        champion_version: recorded in the reasons.

    Returns:
        PROMOTE when every check passes, else REJECT, with one reason per check.

    Raises:
        ValueError: for malformed or mismatched inputs.
    """
    if not isinstance(challenger_accuracy, int | float) or not 0 <= challenger_accuracy <= 1:
        raise ValueError(f"challenger test accuracy {challenger_accuracy!r} is not in [0, 1]")
    checks = [Check(
        "threshold",
        challenger_accuracy + _EPS >= cfg.min_accuracy,
        f"test accuracy {challenger_accuracy:.4f} "
        f"{'>=' if challenger_accuracy + _EPS >= cfg.min_accuracy else '<'} "
        f"minimum {cfg.min_accuracy:.4f}",
    )]
    if champion_pred is None:
        checks.append(Check("champion", None, "no champion yet: threshold only"))
        return Decision(
            decision=PROMOTE if checks[0].passed else REJECT,
            checks=tuple(checks),
            challenger_accuracy=float(challenger_accuracy),
            champion_version=None,
            champion_accuracy=None,
            mcnemar=None,
            recall={},
        )

    if y_true is None or challenger_pred is None:
        raise ValueError("comparing with a champion needs y_true and challenger_pred")
    y = _labels("y_true", y_true)
    if len(y) == 0:
        raise ValueError("y_true is empty: no test images to compare on")
    ours = _labels("challenger predictions", challenger_pred, len(y))
    theirs = _labels("champion predictions", champion_pred, len(y))
    ours_right, theirs_right = ours == y, theirs == y
    acc_ours = float(ours_right.mean())
    acc_theirs = float(theirs_right.mean())
    name = f"v{champion_version}" if champion_version is not None else "the champion"

    floor = acc_theirs - cfg.champion_margin
    checks.append(Check(
        "champion",
        acc_ours + _EPS >= floor,
        f"challenger {acc_ours:.4f} vs champion {name} {acc_theirs:.4f} "
        f"(difference {acc_ours - acc_theirs:+.4f}, allowed margin {cfg.champion_margin:.4f})",
    ))

    test = mcnemar_test(int((theirs_right & ~ours_right).sum()),
                        int((ours_right & ~theirs_right).sum()), cfg.significance)
    checks.append(Check(
        "mcnemar",
        None,
        f"{test.method}: b={test.b} (only champion right), c={test.c} (only challenger right), "
        f"p={test.p_value:.4g}: the difference is "
        f"{'' if test.significant else 'not '}significant at {cfg.significance}",
    ))

    rec_ours, rec_theirs = per_digit_recall(y, ours), per_digit_recall(y, theirs)
    recall: dict[str, dict[str, float | None]] = {}
    failing, worst = [], None
    for digit in range(NUM_CLASSES):
        r_new, r_old = rec_ours[digit], rec_theirs[digit]
        drop = r_old - r_new if r_new is not None and r_old is not None else None
        recall[str(digit)] = {"challenger": r_new, "champion": r_old, "drop": drop}
        if drop is None:
            continue
        if worst is None or drop > worst[1]:
            worst = (digit, drop)
        if drop > cfg.max_recall_drop + _EPS:
            failing.append(f"digit {digit} {r_old:.4f} -> {r_new:.4f} (drop {drop:.4f})")
    if failing:
        detail = (f"recall drops by more than {cfg.max_recall_drop:.4f}: " + "; ".join(failing))
    elif worst is None:
        detail = "no digit appears in the test labels"
    else:
        detail = (f"no digit's recall drops by more than {cfg.max_recall_drop:.4f} "
                  f"(largest change: digit {worst[0]} {-worst[1]:+.4f})")
    checks.append(Check("per-digit recall", not failing, detail))

    passed = all(c.passed is not False for c in checks)
    return Decision(
        decision=PROMOTE if passed else REJECT,
        checks=tuple(checks),
        challenger_accuracy=float(challenger_accuracy),
        champion_version=champion_version,
        champion_accuracy=acc_theirs,
        mcnemar=test,
        recall=recall,
    )


def _load_array(store: Store, uri: str) -> np.ndarray:
    with store.local_copy(store.key_of(uri)) as path:
        return np.load(path, allow_pickle=False)


def gate(
    evaluation: Mapping[str, Any],
    cfg: GateConfig,
    registry: Registry,
    prepared_uri: str,
    store: Store,
    run_key: str,
) -> dict[str, Any]:
    """Decide whether the evaluated model may become the champion; record why.

    Args:
        evaluation: what the evaluate stage returned (``test_accuracy``, ``predictions_uri``).
        cfg: the gate thresholds.
        registry: where the champion is looked up.
        prepared_uri: the prepared data; its ``x_test``/``y_test`` are the shared test set.
        store: the store holding the run's artifacts.
        run_key: the run's key; the decision goes to ``runs/<run-key>/gate/decision.json``.

    Returns:
        ``decision`` (PROMOTE/REJECT), ``reasons`` (one line per check), ``decision_uri``,
        ``champion_version`` (or None), ``mcnemar`` (``p_value``, ``b``, ``c``, ``method``,
        ``significant``; None without champion), ``challenger_accuracy``,
        ``champion_accuracy`` (or None).

    Raises:
        KeyError: if ``evaluation`` lacks ``test_accuracy`` (or, with a champion,
            ``predictions_uri``).
        ValueError: if the predictions do not match the test set or the reported accuracy.
        ObjectNotFound: if the prepared data or predictions are missing.
        RegistryError: if the champion cannot be fetched intact.
    """
    run_key = validate_run_key(run_key)
    accuracy = float(evaluation["test_accuracy"])
    champion_version = registry.get_alias(CHAMPION)
    champion_pred = y_test = challenger_pred = None
    if champion_version is None:
        log.info("gate: no champion in %s yet: threshold only", registry.uri)
    else:
        from mnist_tasks.artifacts import load_keras_model, load_prepared, predict_classes

        prepared = load_prepared(prepared_uri, store)
        y_test = prepared.y_test
        challenger_pred = _load_array(store, evaluation["predictions_uri"])
        _labels(f"predictions {evaluation['predictions_uri']}", challenger_pred, len(y_test))
        # The evaluated accuracy and the stored predictions must describe the same images.
        recomputed = float((challenger_pred.astype(np.int64) == y_test).mean())
        if abs(recomputed - accuracy) * len(y_test) > 0.5:
            raise ValueError(
                f"predictions {evaluation['predictions_uri']} give test accuracy "
                f"{recomputed:.4f} on {prepared_uri}, but evaluation reports {accuracy:.4f}: "
                "they come from different data or models"
            )
        with tempfile.TemporaryDirectory(prefix="mnist-champion-") as tmp:
            model_path = registry.fetch_model(champion_version, tmp)
            champion = load_keras_model(model_path)
            log.info("gate: evaluating champion v%d on the %d test images of this run",
                     champion_version, len(y_test))
            champion_pred = np.asarray(predict_classes(champion, prepared.x_test))

    result = decide(cfg, accuracy, y_true=y_test, challenger_pred=challenger_pred,
                    champion_pred=champion_pred, champion_version=champion_version)

    prefix = f"runs/{run_key}/gate"
    if champion_pred is not None:
        with tempfile.TemporaryDirectory(prefix="mnist-gate-") as tmp:
            path = f"{tmp}/champion_predictions.npy"
            np.save(path, champion_pred.astype(np.int64))
            store.upload_file(path, f"{prefix}/champion_predictions.npy")
    record = {
        "decision": result.decision,
        "reasons": result.reasons,
        "checks": [dataclasses.asdict(c) for c in result.checks],
        "challenger": {
            "accuracy": result.challenger_accuracy,
            "run_key": run_key,
            "predictions_uri": evaluation.get("predictions_uri"),
        },
        "champion": None if champion_version is None else {
            "version": champion_version,
            "accuracy": result.champion_accuracy,
            "model_uri": registry.model_uri(champion_version),
            "predictions_uri": store.uri_for(f"{prefix}/champion_predictions.npy"),
        },
        "mcnemar": result.mcnemar.as_dict() if result.mcnemar else None,
        "per_digit_recall": result.recall,
        "config": dataclasses.asdict(cfg),
        "decided_at": utc_now(),
    }
    decision_key = f"{prefix}/decision.json"
    store.write_bytes(decision_key, json.dumps(record, indent=2, default=json_default).encode())

    log.info("gate: %s (challenger %.4f%s)", result.decision, accuracy,
             "" if champion_version is None
             else f", champion v{champion_version} {result.champion_accuracy:.4f}")
    for check in result.checks:
        level = logging.WARNING if check.passed is False else logging.INFO
        log.log(level, "gate: %s", check.line())
    mcnemar = None
    if result.mcnemar is not None:
        mcnemar = {k: getattr(result.mcnemar, k)
                   for k in ("p_value", "b", "c", "method", "significant")}
    return {
        "decision": result.decision,
        "reasons": result.reasons,
        "decision_uri": store.uri_for(decision_key),
        "champion_version": champion_version,
        "mcnemar": mcnemar,
        "challenger_accuracy": result.challenger_accuracy,
        "champion_accuracy": result.champion_accuracy,
    }
