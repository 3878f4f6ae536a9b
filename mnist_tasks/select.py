"""Select: of a run's trained candidates, the one that goes on to evaluate, gate and register.

A run may train several candidates (the ``candidates`` trigger parameter, see
``docs/candidates.md``); each train task returns its result, and a failed one may leave a note
(:func:`record_failure`). :func:`select` reads what there is and picks:

* by **validation accuracy** of the model each candidate saved (the last epoch's, or the best
  epoch's when early stopping restored it), measured on the validation split every candidate
  shares. Never by test accuracy: the test set is what the gate judges the chosen model on
  (and compares with the champion on); choosing on it would leak the test set into the choice,
  so the reported test accuracy of the winner would be biased upwards (the best of K noisy
  estimates), and the gate would no longer be an independent check;
* ties (equal validation accuracy: it moves in steps of 1/n_val) go to the lower validation
  loss, then to the lower candidate index: the same inputs always give the same choice.

A candidate that failed is listed with why; the run goes on while at least ``min_candidates``
trained, else :class:`SelectionError`. The table of every candidate (validation metrics,
training time, status) goes into the result (``candidates``), and so into the run's report, the
version's metadata and model card, and the Models page; it is also written to
``runs/<run-key>/candidates.json``.

Run it alone: ``python -m mnist_tasks select --trained @t0.json --trained @t1.json ...``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mnist_tasks.artifacts import utc_now, write_json
from mnist_tasks.config import Candidate
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


def _kept_metrics(result: Mapping[str, Any], store: Store) -> tuple[float | None, float | None]:
    """Validation accuracy and loss of the model the candidate saved (see the module doc)."""
    try:
        history = json.loads(store.read_bytes(store.key_of(str(result["history_uri"]))))
    except (KeyError, ObjectNotFound, ValueError) as exc:
        log.warning("candidate %s: no history (%s); using its best val_accuracy",
                    result.get("candidate"), exc)
        return result.get("best_val_accuracy"), None
    accs, losses = history.get("val_accuracy") or [], history.get("val_loss") or []
    if not accs:
        return None, None
    at = len(accs) - 1
    best = result.get("best_epoch")
    if result.get("stopped_early") and isinstance(best, int) and 1 <= best <= len(accs):
        at = best - 1  # early stopping restored the best epoch's weights
    loss = losses[at] if at < len(losses) else None
    return float(accs[at]), (float(loss) if loss is not None else None)


def _rank(row: Mapping[str, Any]) -> tuple[float, float, int]:
    acc, loss = row.get("val_accuracy"), row.get("val_loss")
    return (-(acc if acc is not None else -math.inf),
            loss if loss is not None and math.isfinite(loss) else math.inf,
            int(row["candidate"]))


def select(
    trained: Sequence[Mapping[str, Any]],
    candidates: Sequence[Candidate],
    store: Store,
    run_key: str,
    *,
    min_candidates: int = 1,
) -> dict[str, Any]:
    """Pick the best trained candidate by validation accuracy (see the module doc).

    Args:
        trained: the train results of the candidates that trained (any order; each names its
            ``candidate``; None means 0, a run of one).
        candidates: every candidate of the run, in order.
        store: the run's store (histories, failure notes, ``candidates.json``).
        run_key: the run's key.
        min_candidates: how many must have trained for the run to go on.

    Returns:
        The chosen candidate's train result, plus ``chosen_candidate`` (its index),
        ``candidates`` (one row per candidate: ``candidate``, ``label``, ``overrides``,
        ``preset``, ``epochs``, ``batch_size``, ``learning_rate``, ``seed``, ``status``
        (``trained`` / ``failed``), ``val_accuracy``, ``val_loss``, ``fit_seconds``,
        ``epochs_run``, ``error``, ``chosen``) and ``selection`` (metric and tie-break).

    Raises:
        SelectionError: fewer than ``min_candidates`` candidates trained; names the failed
            ones and why.
    """
    by_index: dict[int, Mapping[str, Any]] = {}
    for done_result in trained:
        index = done_result.get("candidate")
        by_index[int(index) if index is not None else 0] = done_result
    unknown = sorted(set(by_index) - {c.index for c in candidates})
    if unknown:
        raise SelectionError(f"train results for unknown candidate(s) {unknown}: the run has "
                             f"{len(candidates)}")
    rows: list[dict[str, Any]] = []
    for cand in candidates:
        row: dict[str, Any] = {
            "candidate": cand.index, "label": cand.label, "overrides": dict(cand.overrides),
            **{k: getattr(cand.train, k) for k in ("preset", "epochs", "batch_size",
                                                   "learning_rate", "seed")},
        }
        result = by_index.get(cand.index)
        if result is None:
            row.update(status="failed", val_accuracy=None, val_loss=None, fit_seconds=None,
                       epochs_run=None, error=_failure(store, run_key, cand.index))
            log.error("candidate %d (%s) FAILED: %s", cand.index, cand.label, row["error"])
        else:
            acc, loss = _kept_metrics(result, store)
            row.update(status="trained", val_accuracy=acc, val_loss=loss,
                       fit_seconds=result.get("fit_seconds"), epochs_run=result.get("epochs_run"),
                       error=None)
        rows.append(row)
    done = [r for r in rows if r["status"] == "trained"]
    failed = [r for r in rows if r["status"] == "failed"]
    if len(done) < max(min_candidates, 1):
        why = "; ".join(f"candidate {r['candidate']} ({r['label']}): {r['error']}"
                        for r in failed)
        raise SelectionError(f"{len(done)} of {len(rows)} candidates trained, fewer than "
                             f"min_candidates={min_candidates}: {why}")
    best = min(done, key=_rank)
    best["chosen"] = True
    for row in rows:
        row.setdefault("chosen", False)
    for row in rows:
        acc_text = f"{row['val_accuracy']:.4f}" if row["val_accuracy"] is not None else "-"
        secs = f"{row['fit_seconds']:.1f} s" if row["fit_seconds"] is not None else "-"
        log.info("candidate %d %-8s val_accuracy=%s fit=%s %s%s", row["candidate"],
                 row["status"], acc_text, secs, row["label"],
                 "  <- chosen" if row["chosen"] else "")
    log.info("select: candidate %d (%s) by %s, of %d trained (%d failed)", best["candidate"],
             best["label"], SELECTION_METRIC, len(done), len(failed))
    selection = {"metric": SELECTION_METRIC, "tie_break": list(TIE_BREAK),
                 "min_candidates": min_candidates}
    write_json(store, f"runs/{run_key}/candidates.json",
               {"candidates": rows, "chosen_candidate": best["candidate"], **selection})
    return {**by_index[best["candidate"]], "chosen_candidate": best["candidate"],
            "candidates": rows, "selection": selection}


def _failure(store: Store, run_key: str, index: int) -> str:
    try:
        note = json.loads(store.read_bytes(failure_key(run_key, index)))
    except (ObjectNotFound, ValueError):
        return "no result (the task was killed or never ran; see its log)"
    return str(note.get("error") or "failed")
