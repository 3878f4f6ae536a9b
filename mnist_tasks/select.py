"""Select: of a run's trained candidates, the one that goes on to evaluate, gate and register.

Picks by the **validation accuracy** of the model each candidate saved (never by test
accuracy: the test set is the gate's independent check); ties go to the lower validation loss,
then the lower index, so the same inputs always give the same choice. A failed candidate (its
note from :func:`record_failure`) is listed with why; the run goes on while at least
``min_candidates`` trained, else :class:`SelectionError`. The table of every candidate goes
into the result and ``runs/<run-key>/candidates.json`` (register copies it into the version's
metadata). Design: docs/candidates.md.

Run it alone: ``python -m mnist_tasks select --trained @t0.json --trained @t1.json ...``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence

from mnist_tasks.artifacts import candidates_key, utc_now, write_json
from mnist_tasks.config import Candidate
from mnist_tasks.results import CandidateRow, SelectionRule, SelectResult, TrainResult, to_json
from mnist_tasks.storage import ObjectNotFound, Store

log = logging.getLogger(__name__)

SELECTION_METRIC = "val_accuracy"
TIE_BREAK = ("val_loss (lower)", "candidate index (lower)")


class SelectionError(ValueError):
    """Fewer candidates trained than the run requires (or none at all)."""


def failure_key(run_key: str, index: int) -> str:
    """Where a failed candidate's note is: beside its training files."""
    return f"runs/{run_key}/candidates/{index}/failure.json"


def record_failure(store: Store, run_key: str, candidate: Candidate, error: BaseException,
                   attempt: int | None = None) -> None:
    """Note that ``candidate`` failed, and why (select names it); never raises."""
    note = {"candidate": candidate.index, "label": candidate.label,
            "error": f"{type(error).__name__}: {error}", "attempt": attempt,
            "failed_at": utc_now()}
    try:
        write_json(store, failure_key(run_key, candidate.index), note)
    except Exception as exc:  # the failure itself is what matters: its note is a courtesy
        log.warning("could not note the failure of candidate %d: %s", candidate.index, exc)


def _kept_metrics(result: TrainResult, store: Store) -> tuple[float | None, float | None]:
    """Validation accuracy and loss of the model the candidate saved (see the module doc)."""
    try:
        history = json.loads(store.read_bytes(store.key_of(result.history_uri)))
    except (ObjectNotFound, ValueError) as exc:
        log.warning("candidate %s: no history (%s); using its best val_accuracy",
                    result.candidate, exc)
        return result.best_val_accuracy, None
    accs, losses = history.get("val_accuracy") or [], history.get("val_loss") or []
    if not accs:
        return None, None
    at = len(accs) - 1
    best = result.best_epoch
    if result.stopped_early and best is not None and 1 <= best <= len(accs):
        at = best - 1  # early stopping restored the best epoch's weights
    loss = losses[at] if at < len(losses) else None
    return float(accs[at]), (float(loss) if loss is not None else None)


def _rank(row: CandidateRow) -> tuple[float, float, int]:
    acc, loss = row.val_accuracy, row.val_loss
    return (-(acc if acc is not None else -math.inf),
            loss if loss is not None and math.isfinite(loss) else math.inf,
            row.candidate)


def select(
    trained: Sequence[TrainResult],
    candidates: Sequence[Candidate],
    store: Store,
    run_key: str,
    *,
    min_candidates: int = 1,
) -> SelectResult:
    """Pick the best trained candidate by validation accuracy (see the module doc).

    Args:
        trained: the train results of the candidates that trained (any order; each names its
            ``candidate``; None means 0, a run of one).
        candidates: every candidate of the run, in order.
        store: the run's store (histories, failure notes, ``candidates.json``).
        run_key: the run's key.
        min_candidates: how many must have trained for the run to go on.

    Returns:
        The chosen candidate's model, history and train record (``train_uri``), its index,
        and the table of every candidate (trained or failed, with its validation metrics).

    Raises:
        SelectionError: fewer than ``min_candidates`` candidates trained; names the failed
            ones and why.
    """
    by_index = {r.candidate or 0: r for r in trained}
    unknown = sorted(set(by_index) - {c.index for c in candidates})
    if unknown:
        raise SelectionError(f"train results for unknown candidate(s) {unknown}: the run has "
                             f"{len(candidates)}")
    rows: list[CandidateRow] = []
    for cand in candidates:
        result = by_index.get(cand.index)
        if result is None:
            error = _failure(store, run_key, cand.index)
            log.error("candidate %d (%s) FAILED: %s", cand.index, cand.label, error)
            acc, loss, seconds, epochs = None, None, None, None
        else:
            (acc, loss), error = _kept_metrics(result, store), None
            seconds, epochs = result.fit_seconds, result.epochs_run
        rows.append(CandidateRow(
            candidate=cand.index, label=cand.label, overrides=dict(cand.overrides),
            preset=cand.train.preset, epochs=cand.train.epochs,
            batch_size=cand.train.batch_size, learning_rate=cand.train.learning_rate,
            seed=cand.train.seed, status="trained" if result else "failed",
            val_accuracy=acc, val_loss=loss, fit_seconds=seconds, epochs_run=epochs,
            error=error, chosen=False))
    done = [r for r in rows if r.status == "trained"]
    failed = [r for r in rows if r.status == "failed"]
    if len(done) < max(min_candidates, 1):
        why = "; ".join(f"candidate {r.candidate} ({r.label}): {r.error}" for r in failed)
        raise SelectionError(f"{len(done)} of {len(rows)} candidates trained, fewer than "
                             f"min_candidates={min_candidates}: {why}")
    best = min(done, key=_rank).candidate
    rows = [dataclasses.replace(r, chosen=r.candidate == best) for r in rows]
    for row in rows:
        acc_text = f"{row.val_accuracy:.4f}" if row.val_accuracy is not None else "-"
        secs = f"{row.fit_seconds:.1f} s" if row.fit_seconds is not None else "-"
        log.info("candidate %d %-8s val_accuracy=%s fit=%s %s%s", row.candidate, row.status,
                 acc_text, secs, row.label, "  <- chosen" if row.chosen else "")
    chosen = by_index[best]
    log.info("select: candidate %d (%s) by %s, of %d trained (%d failed)", best,
             next(r.label for r in rows if r.chosen), SELECTION_METRIC, len(done), len(failed))
    rule = SelectionRule(metric=SELECTION_METRIC, tie_break=TIE_BREAK,
                         min_candidates=min_candidates)
    write_json(store, candidates_key(run_key),
               {"candidates": [to_json(r) for r in rows], "chosen_candidate": best,
                **to_json(rule)})
    return SelectResult(model_uri=chosen.model_uri, history_uri=chosen.history_uri,
                        prepared_uri=chosen.prepared_uri, train_uri=chosen.train_uri,
                        preset=chosen.preset, chosen_candidate=best, candidates=tuple(rows),
                        selection=rule)


def _failure(store: Store, run_key: str, index: int) -> str:
    try:
        note = json.loads(store.read_bytes(failure_key(run_key, index)))
    except (ObjectNotFound, ValueError):
        return "no result (the task was killed or never ran; see its log)"
    return str(note.get("error") or "failed")
