"""Gate: PROMOTE or REJECT a freshly evaluated model (the challenger), with reasons.

The checks, one reason each, each naming its set of images: the **threshold** on the
benchmark (the fixed MNIST test set); then, with a champion (evaluated in this run on the same
images), the **champion** margin and **per-digit recall** on the benchmark and on the **fresh**
data (the increments' held-out parts), with McNemar's test reported beside. On the small fresh
set a shortfall fails only when McNemar's test says it is not chance, and a digit's recall is
judged only with :data:`MIN_FRESH_SUPPORT` images of it. :func:`decide` is the pure decision;
:func:`gate` loads the predictions, runs the champion, and records the decision once, as
``runs/<run-key>/gate/decision.json``. Design: docs/registry.md (The gate).

Run it alone: ``python -m mnist_tasks gate --evaluation @evaluation.json ...``.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass

import numpy as np

from mnist_tasks.artifacts import (
    NUM_CLASSES,
    Prepared,
    load_keras_model,
    load_prepared,
    predict_classes,
    utc_now,
    write_result,
)
from mnist_tasks.config import GateConfig
from mnist_tasks.registry_api import CHAMPION, ModelRegistry, validate_run_key
from mnist_tasks.results import (
    PROMOTE,
    REJECT,
    Challenger,
    ChampionRecord,
    Check,
    EvaluateResult,
    FreshComparison,
    FreshRecall,
    GateDecision,
    IncrementComparison,
    McNemar,
    RecallChange,
    Verdict,
)
from mnist_tasks.storage import Store

log = logging.getLogger(__name__)

BENCHMARK = "benchmark"  # the fixed MNIST test set: every version is compared on it
FRESH = "fresh"  # the increments' held-out parts: recent images no model was trained on
# On the fresh data, a digit's recall is compared only with at least this many images of it:
# with fewer, one image moves the recall by more than 3 %.
MIN_FRESH_SUPPORT = 30
# Up to this many discordant pairs McNemar's test is the exact binomial test (cheap even for
# thousands); beyond it, the chi-square approximation with continuity correction.
MCNEMAR_EXACT_MAX = 1000
# Accuracies are ratios of counts; compare with a tolerance far below one test image.
_EPS = 1e-12


@dataclass(frozen=True)
class FreshData:
    """The fresh images' labels and both models' predictions on them, for :func:`decide`.

    ``increment``: each image's index into ``increment_ids`` (for per-increment accuracy);
    None to skip the per-increment breakdown.
    """

    y_true: np.ndarray
    challenger_pred: np.ndarray
    champion_pred: np.ndarray | None = None
    increment: np.ndarray | None = None
    increment_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` decided and why; :func:`gate` records it as a
    :class:`~mnist_tasks.results.GateDecision`."""

    decision: Verdict
    checks: tuple[Check, ...]
    challenger_accuracy: float
    champion_version: int | None
    champion_accuracy: float | None
    mcnemar: McNemar | None
    per_digit_recall: dict[str, RecallChange]  # on the benchmark
    fresh: FreshComparison | None = None  # None without fresh data

    @property
    def reasons(self) -> list[str]:
        """One line per check, e.g. ``threshold PASS: benchmark: test accuracy 0.9781 >= ...``."""
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
    fresh: FreshData | None = None,
) -> Decision:
    """The gate's decision; a pure function of its inputs.

    Args:
        cfg: thresholds.
        challenger_accuracy: the challenger's benchmark (test) accuracy, for the threshold.
        y_true: the benchmark labels; needed with a champion.
        challenger_pred: the challenger's predicted classes on the benchmark.
        champion_pred: the champion's predicted classes on the same images; None when there
            is no champion (threshold only).
        champion_version: recorded in the reasons.
        fresh: the fresh data's labels and predictions (the champion's with a champion); None
            or empty when there is none.

    Returns:
        PROMOTE when every check passes, else REJECT, with one reason per check.

    Raises:
        ValueError: for malformed or mismatched inputs.
    """
    if not isinstance(challenger_accuracy, int | float) or not 0 <= challenger_accuracy <= 1:
        raise ValueError(f"challenger test accuracy {challenger_accuracy!r} is not in [0, 1]")
    fresh_y = fresh_ours = fresh_theirs = None
    if fresh is not None and len(np.asarray(fresh.y_true)):
        fresh_y = _labels("fresh labels", fresh.y_true)
        fresh_ours = _labels("challenger fresh predictions", fresh.challenger_pred, len(fresh_y))
        if fresh.champion_pred is not None:
            fresh_theirs = _labels("champion fresh predictions", fresh.champion_pred,
                                   len(fresh_y))
        if champion_pred is not None and fresh_theirs is None:
            raise ValueError("comparing with a champion on fresh data needs its predictions")

    passed_threshold = challenger_accuracy + _EPS >= cfg.min_accuracy
    checks = [Check(
        "threshold",
        passed_threshold,
        f"test accuracy {challenger_accuracy:.4f} {'>=' if passed_threshold else '<'} "
        f"minimum {cfg.min_accuracy:.4f}",
        BENCHMARK,
    )]
    if champion_pred is None:
        checks.append(Check("champion", None, "no champion yet: threshold only"))
        comparison = None
        if fresh_y is not None and fresh_ours is not None:
            comparison = _fresh_comparison(fresh, fresh_y, fresh_ours, None, None, {})
            checks.append(Check(
                "accuracy", None,
                f"challenger {comparison.challenger_accuracy:.4f} on {comparison.n} images"
                f"{_increments_text(comparison)} (not gated: no champion to compare with)",
                FRESH))
        else:
            checks.append(Check("accuracy", None, "n/a: no fresh data", FRESH))
        return Decision(
            decision=PROMOTE if passed_threshold else REJECT,
            checks=tuple(checks),
            challenger_accuracy=float(challenger_accuracy),
            champion_version=None,
            champion_accuracy=None,
            mcnemar=None,
            per_digit_recall={},
            fresh=comparison,
        )

    if y_true is None or challenger_pred is None:
        raise ValueError("comparing with a champion needs y_true and challenger_pred")
    y = _labels("y_true", y_true)
    if len(y) == 0:
        raise ValueError("y_true is empty: no test images to compare on")
    ours = _labels("challenger predictions", challenger_pred, len(y))
    theirs = _labels("champion predictions", champion_pred, len(y))
    name = f"v{champion_version}" if champion_version is not None else "the champion"

    bench = _compare(cfg, BENCHMARK, y, ours, theirs, name, min_support=1,
                     needs_significance=False)
    checks += bench.checks
    comparison = None
    if fresh_y is not None and fresh_ours is not None and fresh_theirs is not None:
        on_fresh = _compare(cfg, FRESH, fresh_y, fresh_ours, fresh_theirs, name,
                            min_support=MIN_FRESH_SUPPORT, needs_significance=True)
        checks += on_fresh.checks
        comparison = _fresh_comparison(fresh, fresh_y, fresh_ours, fresh_theirs,
                                       on_fresh.mcnemar, on_fresh.recall)
    else:
        checks.append(Check("champion", None, "n/a: no fresh data", FRESH))

    passed = all(c.passed is not False for c in checks)
    return Decision(
        decision=PROMOTE if passed else REJECT,
        checks=tuple(checks),
        challenger_accuracy=float(challenger_accuracy),
        champion_version=champion_version,
        champion_accuracy=bench.champion_accuracy,
        mcnemar=bench.mcnemar,
        per_digit_recall={d: RecallChange(r.challenger, r.champion, r.drop)
                          for d, r in bench.recall.items()},
        fresh=comparison,
    )


@dataclass(frozen=True)
class _Comparison:
    checks: list[Check]
    champion_accuracy: float
    mcnemar: McNemar
    recall: dict[str, FreshRecall]


def _compare(cfg: GateConfig, test_set: str, y: np.ndarray, ours: np.ndarray,
             theirs: np.ndarray, name: str, *, min_support: int,
             needs_significance: bool) -> _Comparison:
    """The champion-margin check, McNemar's test and the per-digit recall check on one set.

    A digit's recall is compared only when the set holds at least ``min_support`` images of it.
    With ``needs_significance`` (the fresh data: hundreds of images, not ten thousand), a
    shortfall beyond the margin fails only if McNemar's test finds it significant, for the
    whole set and per digit: on 100 images of a digit the 0.01 recall margin is one image, so
    chance alone would otherwise reject most challengers.
    """
    ours_right, theirs_right = ours == y, theirs == y
    acc_ours = float(ours_right.mean())
    acc_theirs = float(theirs_right.mean())
    test = mcnemar_test(int((theirs_right & ~ours_right).sum()),
                        int((ours_right & ~theirs_right).sum()), cfg.significance)
    beyond = acc_ours + _EPS < acc_theirs - cfg.champion_margin
    chance = beyond and needs_significance and not test.significant
    checks = [Check(
        "champion",
        not beyond or chance,
        f"challenger {acc_ours:.4f} vs champion {name} {acc_theirs:.4f} on {len(y)} images "
        f"(difference {acc_ours - acc_theirs:+.4f}, allowed margin {cfg.champion_margin:.4f}"
        + (f"; beyond it but not significant, p={test.p_value:.4g}" if chance else "") + ")",
        test_set,
    )]
    checks.append(Check(
        "mcnemar",
        None,
        f"{test.method}: b={test.b} (only champion right), c={test.c} (only challenger right), "
        f"p={test.p_value:.4g}: the difference is "
        f"{'' if test.significant else 'not '}significant at {cfg.significance}",
        test_set,
    ))

    support = np.bincount(y, minlength=NUM_CLASSES)
    rec_ours, rec_theirs = per_digit_recall(y, ours), per_digit_recall(y, theirs)
    recall: dict[str, FreshRecall] = {}
    failing, by_chance, checked, skipped = [], [], [], []
    worst: tuple[int, float] | None = None
    for digit in range(NUM_CLASSES):
        r_new, r_old = rec_ours[digit], rec_theirs[digit]
        drop = r_old - r_new if r_new is not None and r_old is not None else None
        gated = drop is not None and bool(support[digit] >= min_support)
        recall[str(digit)] = FreshRecall(challenger=r_new, champion=r_old, drop=drop,
                                         support=int(support[digit]), checked=gated)
        if drop is None or r_new is None or r_old is None:
            continue
        if not gated:
            skipped.append(digit)
            continue
        checked.append(digit)
        if worst is None or drop > worst[1]:
            worst = (digit, drop)
        if drop > cfg.max_recall_drop + _EPS:
            text = f"digit {digit} {r_old:.4f} -> {r_new:.4f} (drop {drop:.4f}"
            if needs_significance:
                mine = y == digit
                per_digit = mcnemar_test(int((theirs_right & ~ours_right & mine).sum()),
                                         int((ours_right & ~theirs_right & mine).sum()),
                                         cfg.significance)
                text += f", p={per_digit.p_value:.4g}"
                if not per_digit.significant:
                    by_chance.append(text + ")")
                    continue
            failing.append(text + ")")
    scope = ""
    if min_support > 1 and checked:
        scope = (f"digits with >= {min_support} images ({_digits(checked)}) checked"
                 + (f", not {_digits(skipped)} (fewer images)" if skipped else "") + "; ")
    if failing:
        detail = (f"recall drops by more than {cfg.max_recall_drop:.4f}"
                  + (" significantly" if needs_significance else "") + ": " + "; ".join(failing))
        passed: bool | None = False
    elif worst is None:
        detail = (f"not checked: no digit has >= {min_support} images "
                  f"({_digits(skipped)} have fewer)" if skipped
                  else "no digit appears in the labels")
        passed = None if skipped else True
    elif by_chance:
        detail = (f"recall drops by more than {cfg.max_recall_drop:.4f} but not significantly "
                  f"at {cfg.significance}: " + "; ".join(by_chance))
        passed = True
    else:
        detail = (f"no digit's recall drops by more than {cfg.max_recall_drop:.4f} "
                  f"(largest change: digit {worst[0]} {-worst[1]:+.4f})")
        passed = True
    checks.append(Check("per-digit recall", passed, scope + detail, test_set))
    return _Comparison(checks=checks, champion_accuracy=acc_theirs, mcnemar=test,
                       recall=recall)


def _digits(digits: list[int]) -> str:
    return ", ".join(str(d) for d in digits)


def _fresh_comparison(fresh: FreshData | None, y: np.ndarray, ours: np.ndarray,
                      theirs: np.ndarray | None, test: McNemar | None,
                      recall: dict[str, FreshRecall]) -> FreshComparison:
    per_increment: dict[str, IncrementComparison] = {}
    if fresh is not None and fresh.increment is not None:
        increment = np.asarray(fresh.increment).astype(np.int64)
        if increment.shape != y.shape:
            raise ValueError(f"fresh increment indices have shape {increment.shape}; "
                             f"expected {y.shape}")
        for index, inc_id in enumerate(fresh.increment_ids):
            mine = increment == index
            n = int(mine.sum())
            per_increment[str(inc_id)] = IncrementComparison(
                n=n,
                challenger=float((ours[mine] == y[mine]).mean()) if n else None,
                champion=(float((theirs[mine] == y[mine]).mean())
                          if n and theirs is not None else None),
            )
    return FreshComparison(
        n=len(y),
        challenger_accuracy=float((ours == y).mean()),
        champion_accuracy=None if theirs is None else float((theirs == y).mean()),
        mcnemar=test,
        per_digit_recall=recall,
        per_increment=per_increment,
    )


def _increments_text(comparison: FreshComparison) -> str:
    if not comparison.per_increment:
        return ""
    return " (" + ", ".join(
        f"{inc_id} {'n/a' if m.challenger is None else format(m.challenger, '.4f')}"
        for inc_id, m in comparison.per_increment.items()) + ")"


def _registered_loss(registry: ModelRegistry, version: int) -> float | None:
    """The champion's test loss as registered: the benchmark is fixed, so it is the loss the
    challenger's is compared with (None for a version registered without one)."""
    loss = (registry.get(version).metadata.get("metrics") or {}).get("test_loss")
    return float(loss) if isinstance(loss, int | float) and not isinstance(loss, bool) else None


def _load_array(store: Store, uri: str) -> np.ndarray:
    with store.local_copy(store.key_of(uri)) as path:
        return np.load(path, allow_pickle=False)


def gate(
    evaluation: EvaluateResult,
    cfg: GateConfig,
    registry: ModelRegistry,
    store: Store,
    run_key: str,
) -> GateDecision:
    """Decide whether the evaluated model may become the champion; record why.

    Args:
        evaluation: what the evaluate stage returned: the benchmark accuracy and predictions,
            the fresh ones when there is fresh data, and the prepared data (its
            ``x_test``/``y_test`` are the benchmark, its ``x_fresh``/``y_fresh`` the fresh data).
        cfg: the gate thresholds.
        registry: where the champion is looked up.
        store: the store holding the run's artifacts.
        run_key: the run's key; the decision goes to ``runs/<run-key>/gate/decision.json``.

    Returns:
        The decision, written once to ``decision.json`` (``decision_uri``): PROMOTE or REJECT,
        one reason per check (each naming its set), the champion compared with (None without
        one), McNemar's test and the per-digit recall on the benchmark, the same on the fresh
        data (None without fresh data), and the evaluation it judged (``evaluation_uri``).

    Raises:
        ValueError: if the predictions do not match the prepared data or the reported
            accuracies, or the evaluation has no fresh predictions for prepared fresh data.
        ObjectNotFound: if the prepared data or predictions are missing.
        RegistryError: if the champion cannot be fetched intact.
    """
    run_key = validate_run_key(run_key)
    prepared_uri = evaluation.prepared_uri
    accuracy = evaluation.test_accuracy
    fresh_uri = evaluation.fresh_predictions_uri
    champion_version = registry.get_alias(CHAMPION)
    champion_pred = y_test = challenger_pred = None
    fresh: FreshData | None = None
    if champion_version is None:
        log.info("gate: no champion in %s yet: threshold only", registry.uri)
    if champion_version is not None or fresh_uri is not None:
        prepared = load_prepared(prepared_uri, store)
        if fresh_uri is not None:
            fresh = _fresh_data(evaluation, fresh_uri, prepared, store)
        elif len(prepared.y_fresh):
            raise ValueError(
                f"{prepared_uri} holds {len(prepared.y_fresh)} fresh images but the evaluation "
                "reports no fresh predictions: it was made by an older evaluate stage or from "
                "other data; evaluate the model again")
    if champion_version is not None:
        y_test = prepared.y_test
        challenger_pred = _load_array(store, evaluation.predictions_uri)
        _labels(f"predictions {evaluation.predictions_uri}", challenger_pred, len(y_test))
        _same_accuracy(challenger_pred, y_test, accuracy, "test", evaluation.predictions_uri,
                       prepared_uri)
        with tempfile.TemporaryDirectory(prefix="mnist-champion-") as tmp:
            model_path = registry.fetch_model(champion_version, tmp)
            champion = load_keras_model(model_path)
            log.info("gate: evaluating champion v%d on the %d test images%s of this run",
                     champion_version, len(y_test),
                     f" and {len(fresh.y_true)} fresh images" if fresh else "")
            champion_pred = np.asarray(predict_classes(champion, prepared.x_test))
            if fresh is not None:
                fresh = dataclasses.replace(fresh, champion_pred=np.asarray(
                    predict_classes(champion, prepared.x_fresh)))

    result = decide(cfg, accuracy, y_true=y_test, challenger_pred=challenger_pred,
                    champion_pred=champion_pred, champion_version=champion_version,
                    fresh=fresh)

    prefix = f"runs/{run_key}/gate"
    saved = {"champion_predictions.npy": champion_pred,
             "champion_fresh_predictions.npy": fresh.champion_pred if fresh else None}
    with tempfile.TemporaryDirectory(prefix="mnist-gate-") as tmp:
        for name, pred in saved.items():
            if pred is not None:
                np.save(f"{tmp}/{name}", pred.astype(np.int64))
                store.upload_file(f"{tmp}/{name}", f"{prefix}/{name}")
    fresh_record = None
    if result.fresh is not None:
        fresh_record = dataclasses.replace(
            result.fresh, challenger_predictions_uri=fresh_uri,
            champion_predictions_uri=(store.uri_for(f"{prefix}/champion_fresh_predictions.npy")
                                      if champion_version is not None else None))
    decision_key = f"{prefix}/decision.json"
    decision = GateDecision(
        decision=result.decision,
        reasons=tuple(result.reasons),
        checks=result.checks,
        challenger=Challenger(accuracy=result.challenger_accuracy, loss=evaluation.test_loss,
                              run_key=run_key, predictions_uri=evaluation.predictions_uri),
        champion=None if champion_version is None or result.champion_accuracy is None
        else ChampionRecord(
            version=champion_version,
            accuracy=result.champion_accuracy,
            model_uri=registry.model_uri(champion_version),
            predictions_uri=store.uri_for(f"{prefix}/champion_predictions.npy"),
            loss=_registered_loss(registry, champion_version),
        ),
        mcnemar=result.mcnemar,
        per_digit_recall=result.per_digit_recall,
        fresh=fresh_record,
        config=dataclasses.asdict(cfg),
        decided_at=utc_now(),
        decision_uri=store.uri_for(decision_key),
        evaluation_uri=evaluation.result_uri,
        prepared_uri=prepared_uri,
    )
    write_result(store, decision_key, decision)

    log.info("gate: %s (%s)", result.decision, _summary(result))
    for check in result.checks:
        level = logging.WARNING if check.passed is False else logging.INFO
        log.log(level, "gate: %s", check.line())
    return decision


def _fresh_data(evaluation: EvaluateResult, uri: str, prepared: Prepared,
                store: Store) -> FreshData:
    """The fresh labels, the challenger's fresh predictions and the increments, checked."""
    y_fresh = np.asarray(prepared.y_fresh).astype(np.int64)
    pred = _load_array(store, uri)
    _labels(f"fresh predictions {uri}", pred, len(y_fresh))
    if evaluation.fresh_accuracy is not None:
        _same_accuracy(pred, y_fresh, evaluation.fresh_accuracy, "fresh", uri,
                       evaluation.prepared_uri)
    return FreshData(
        y_true=y_fresh,
        challenger_pred=pred,
        increment=np.asarray(prepared.fresh_increment).astype(np.int64),
        increment_ids=tuple(str(i) for i in prepared.meta.get("fresh_increments") or ()),
    )


def _same_accuracy(pred: np.ndarray, y: np.ndarray, reported: float, what: str, uri: str,
                   prepared_uri: str) -> None:
    """The evaluated accuracy and the stored predictions must describe the same images."""
    recomputed = float((pred.astype(np.int64) == y).mean()) if len(y) else 0.0
    if abs(recomputed - reported) * len(y) > 0.5:
        raise ValueError(
            f"predictions {uri} give {what} accuracy {recomputed:.4f} on {prepared_uri}, but "
            f"evaluation reports {reported:.4f}: they come from different data or models"
        )


def _summary(result: Decision) -> str:
    """``challenger 0.9781, champion v3 0.9770; fresh: challenger 0.9400, champion 0.9500 on
    500 images`` (the parts that apply)."""
    text = f"benchmark: challenger {result.challenger_accuracy:.4f}"
    if result.champion_version is not None and result.champion_accuracy is not None:
        text += f", champion v{result.champion_version} {result.champion_accuracy:.4f}"
    fresh = result.fresh
    if fresh is None:
        return text + "; fresh: no fresh data"
    text += f"; fresh: challenger {fresh.challenger_accuracy:.4f}"
    if fresh.champion_accuracy is not None:
        text += f", champion v{result.champion_version} {fresh.champion_accuracy:.4f}"
    return text + f" on {fresh.n} images"
