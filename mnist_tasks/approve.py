"""Approve: a person's decision between the gate and register (the ``approval`` parameter).

Pure logic, no Airflow: the DAG's ``approve`` task (an ``ApprovalOperator``, in
``dags/mnist_airflow/approval.py``) asks :func:`needs_approval` whether the gate's decision
waits for a person; :func:`what_was_trained` reads what the run trained on which data, and
:func:`request_subject` and :func:`report_markdown` make the request (that first, then the
gate's checks and metrics); :func:`apply_response` turns the answer into the final decision
(an override of a REJECT needs a written reason), :func:`not_asked` passes the decision on,
and :func:`record` writes ``runs/<run-key>/approval.json``. Modes: ``off`` (no one is asked),
``borderline`` (a PROMOTE that McNemar's test does not show clearly better, or with a digit's
recall dropping), ``always`` (every decision; a REJECT may be overridden). Design:
docs/approval.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from mnist_tasks.artifacts import prepared_record_uri, read_json, read_result, utc_now
from mnist_tasks.config import APPROVAL_MODES, run_key
from mnist_tasks.results import (
    PROMOTE,
    REJECT,
    Approval,
    ApproveResult,
    EvaluateResult,
    GateDecision,
    PreprocessResult,
    TrainResult,
    Verdict,
    to_json,
)
from mnist_tasks.storage import ObjectNotFound, Store

# The answers: the labels of Airflow's ApprovalOperator (the glue checks they match).
APPROVE = "Approve"
DENY = "Reject"
OPTIONS = (APPROVE, DENY)
DEFAULT_ANSWER = DENY  # what a request that times out decides
COMMENT = "comment"  # the request form's one field: the approver's comment (the override reason)
# How the approval record names each outcome (metadata, model card, Models page, registry list).
APPROVED, REJECTED, OVERRIDE, TIMED_OUT, REFUSED = (
    "approved", "rejected", "override", "timed out", "override refused")


class ApprovalError(ValueError):
    """A decision or an answer that the approval step cannot use; names what is wrong."""


@dataclass(frozen=True)
class TrainedIncrement:
    """An increment of the dataset version the model was trained on, and how the challenger
    and the champion did on its fresh part (None: not measured)."""

    id: str
    train: int  # images in the training pool
    fresh: int  # images held out as its fresh part
    drift: bool  # accepted with a drift warning
    new: bool | None  # not in the champion's training data (None: not known)
    challenger: float | None
    champion: float | None


@dataclass(frozen=True)
class Trained:
    """What a request is about: the model trained, and the data it was trained on."""

    preset: str
    epochs: int | None  # as configured (early stopping may run fewer)
    epochs_run: int
    dataset_version: str | None
    n_train: int
    increments: tuple[TrainedIncrement, ...]
    quarantined: tuple[str, ...]

    @property
    def drifted(self) -> list[str]:
        return [inc.id for inc in self.increments if inc.drift]


@dataclass(frozen=True)
class Response:
    """A person's answer to a request, or the timeout's default (``timed_out``, no one)."""

    choice: str
    by: str | None = None  # the user's name; None on a timeout
    by_id: str | None = None
    at: str | None = None  # ISO time (UTC)
    comment: str | None = None
    timed_out: bool = False

    def __post_init__(self) -> None:
        if self.choice not in OPTIONS:
            raise ApprovalError(f"answer {self.choice!r} is not one of {', '.join(OPTIONS)}")


def _mode(mode: str) -> str:
    if mode not in APPROVAL_MODES:
        raise ApprovalError(f"parameter 'approval' = {mode!r} is invalid: must be one of "
                            f"{', '.join(APPROVAL_MODES)}")
    return mode


def asks_on_reject(mode: str) -> bool:
    """Whether a REJECT goes to a person (who may override it): only with ``always``."""
    return _mode(mode) == "always"


def recall_drops(decision: GateDecision) -> list[tuple[str, float]]:
    """The digits whose benchmark recall is lower than the champion's: (digit, drop > 0)."""
    return [(digit, row.drop) for digit, row in sorted(decision.per_digit_recall.items())
            if row.drop is not None and row.drop > 0]


def needs_approval(decision: GateDecision, mode: str) -> tuple[bool, str]:
    """Whether the gate's ``decision`` waits for a person under ``mode``, and why (one line).

    ``borderline`` asks about a PROMOTE over a champion unless McNemar's test finds the
    challenger significantly better (more images only it gets right, p < the gate's
    significance) and no digit's benchmark recall drops. A first model (no champion) and a
    REJECT are not asked about in ``borderline``.

    Raises:
        ApprovalError: for an unknown mode.
    """
    mode, verdict = _mode(mode), decision.decision
    if mode == "off":
        return False, "approval is off"
    if mode == "always":
        return True, f"approval is 'always': every gate decision is reviewed ({verdict})"
    if verdict == REJECT:
        return False, "the gate rejected the model; 'borderline' reviews promotions only"
    champion, test = decision.champion_version, decision.mcnemar
    if champion is None or test is None:
        return False, "no champion to compare with: the threshold decides"
    why = []
    p, alpha = test.p_value, decision.significance
    better = test.significant and test.c > test.b
    if not better:
        worse = test.significant
        why.append(f"McNemar p={_num(p, '.4g')}: the challenger is "
                   + ("significantly worse than" if worse else "not significantly different from")
                   + f" champion v{champion} at {alpha}")
    drops = recall_drops(decision)
    if drops:
        why.append("recall drops on digit(s) "
                   + ", ".join(f"{d} (-{drop:.4f})" for d, drop in drops))
    if why:
        return True, "borderline: " + "; ".join(why)
    return False, (f"clearly better than champion v{champion} (McNemar p={_num(p, '.4g')}) and "
                   "no digit's recall drops")


def _num(value: Any, fmt: str = ".4f") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return "-"
    return format(value, fmt)


def _signed(value: Any) -> str:
    return _num(value, "+.4f")


def _cell(value: Any) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def what_was_trained(store: Store, decision: GateDecision) -> Trained:
    """What the gate judged, from the run's records: the train record (preset, epochs), the
    prepared data's record (dataset version, increments, drift, quarantines), the gate's
    per-increment fresh comparison, and the run summary (which increments check found new to
    the champion).

    Raises:
        ObjectNotFound: if a record is missing.
        ValueError: if a record is not what its stage writes.
    """
    evaluation = read_result(store, decision.evaluation_uri, EvaluateResult)
    if evaluation.train_uri is None:
        raise ValueError(f"{decision.evaluation_uri}: evaluated a model with no train record")
    trained = read_result(store, evaluation.train_uri, TrainResult)
    prepared = read_result(store, prepared_record_uri(decision.prepared_uri), PreprocessResult)
    try:
        summary = read_json(store, f"runs/{decision.challenger.run_key}/summary.json")
    except ObjectNotFound:
        summary = {}
    checked = summary.get("champion_fresh") if isinstance(summary, dict) else None
    scores = decision.fresh.per_increment if decision.fresh else {}
    lineage = prepared.lineage
    increments = tuple(
        TrainedIncrement(
            id=inc.id, train=inc.train, fresh=inc.fresh, drift=inc.drift,
            new=(True if decision.champion is None else
                 inc.id in checked if isinstance(checked, dict) else None),
            challenger=scores[inc.id].challenger if inc.id in scores else None,
            champion=scores[inc.id].champion if inc.id in scores else None)
        for inc in (lineage.increments if lineage else ()))
    epochs = trained.params.get("epochs")
    return Trained(
        preset=trained.preset, epochs=epochs if _is_num(epochs) else None,
        epochs_run=trained.epochs_run, dataset_version=prepared.dataset_version,
        n_train=prepared.n_train, increments=increments,
        quarantined=tuple(q.id for q in lineage.quarantined) if lineage else ())


def trained_markdown(trained: Trained | None, champion: int | None) -> list[str]:
    """The request's opening: what was trained, on which data, and how it did on each
    increment's fresh part against the champion."""
    out = ["### What was trained", ""]
    if trained is None:
        return [*out, "The run's records could not be read: see the approve task's log.", ""]
    epochs = (f"{trained.epochs} epoch{'' if trained.epochs == 1 else 's'}"
              if trained.epochs is not None else "? epochs") + (
        f" ({trained.epochs_run} run)" if trained.epochs_run != trained.epochs else "")
    out.append(f"Preset **{_cell(trained.preset)}**, {epochs}, on dataset version "
               f"**`{_cell(trained.dataset_version or '-')}`** ({trained.n_train:,} training "
               "images: the MNIST training set"
               + (f" and {len(trained.increments)} increment(s))." if trained.increments
                  else " alone, no increments)."))
    if trained.increments:
        who = f"champion v{champion}" if champion is not None else "champion"
        out += ["", f"| increment | new | train images | fresh images | challenger on its "
                    f"fresh part | {who} | drift |", "|---|---|---|---|---|---|---|"]
        for inc in trained.increments:
            new = {True: "new", False: "no", None: "?"}[inc.new]
            out.append(f"| `{_cell(inc.id)}` | {new} | {inc.train:,} | {inc.fresh:,} | "
                       f"{_num(inc.challenger)} | {_num(inc.champion)} | "
                       f"{'⚠ drift' if inc.drift else 'none'} |")
    if trained.drifted:
        out += ["", "**⚠ Trained on drifted data**: increment(s) "
                + ", ".join(f"`{_cell(i)}`" for i in trained.drifted)
                + " were accepted with a drift warning."]
    if trained.quarantined:
        out += ["", "Quarantined, not trained on: "
                + ", ".join(f"`{_cell(i)}`" for i in trained.quarantined) + "."]
    return [*out, ""]


def checks_markdown(decision: GateDecision) -> list[str]:
    """The gate's checks as a PASS/FAIL table (INFO: informational or skipped)."""
    out = ["| check | set | result | detail |", "|---|---|---|---|"]
    for check in decision.checks:
        result = {True: "PASS", False: "**FAIL**", None: "INFO"}[check.passed]
        out.append(f"| {_cell(check.name)} | {_cell(check.test_set or '-')} | {result} | "
                   f"{_cell(check.detail)} |")
    return out


def request_subject(decision: GateDecision, model_name: str, run_id: str) -> str:
    """The request's headline, e.g. ``Promote mnist-classifier from run X? (gate: PROMOTE)``."""
    if decision.decision == REJECT:
        return (f"The gate REJECTED {model_name} from run {run_id}: override? (Approve "
                "promotes it anyway and needs a written reason)")
    return f"Promote {model_name} from run {run_id}? (gate: PROMOTE)"


def report_markdown(decision: GateDecision, *, why: str, models_url: str | None,
                    timeout_minutes: float, trained: Trained | None = None) -> str:
    """The request for the person: what was trained on which data (``trained``, from
    :func:`what_was_trained`), the gate's decision and its checks (PASS/FAIL), metrics,
    McNemar's test, per-digit recall changes (⚠ where a drop broke the gate's limit), a link to
    the run's entry on the Models page, and what each answer does."""
    verdict, champion = decision.decision, decision.champion_version
    ours, theirs = decision.challenger_accuracy, decision.champion_accuracy
    out = trained_markdown(trained, champion)
    out += [f"### Gate decision: {verdict}", "", f"Asked because {_cell(why)}.", ""]
    out += checks_markdown(decision)
    champion_loss = decision.champion.loss if decision.champion else None
    out += ["", "### Metrics (benchmark: the MNIST test set)", "",
            "| | challenger | " + (f"champion v{champion}" if champion is not None
                                   else "champion") + " | change |",
            "|---|---|---|---|",
            f"| test accuracy | {_num(ours)} | {_num(theirs)} | {_change(ours, theirs)} |",
            f"| test loss | {_num(decision.challenger.loss)} | {_num(champion_loss)} | "
            f"{_change(decision.challenger.loss, champion_loss)} |"]
    fresh = decision.fresh
    if fresh is not None:
        a, b = fresh.challenger_accuracy, fresh.champion_accuracy
        sets = ", ".join(fresh.per_increment) or "the increments"
        out.append(f"| fresh-data accuracy ({fresh.n:,} images: {_cell(sets)}) | {_num(a)} | "
                   f"{_num(b)} | {_change(a, b)} |")
    test = decision.mcnemar
    out += ["", "### McNemar's test", ""]
    if test is not None:
        out.append(f"p = **{_num(test.p_value, '.4g')}** ({_cell(test.method)}): "
                   f"b = {test.b} images only the champion gets right, c = {test.c} "
                   f"only the challenger; the difference is "
                   f"{'' if test.significant else 'not '}significant at "
                   f"{decision.significance}.")
    else:
        out.append("Not run: there is no champion to compare with.")
    recall = decision.per_digit_recall
    limit = float(decision.config.get("max_recall_drop", 0.01))
    out += ["", "### Per-digit recall (benchmark)", ""]
    if recall:
        out += ["| digit | champion | challenger | change |", "|---|---|---|---|"]
        for digit, row in sorted(recall.items()):
            drop = row.drop
            change = _signed(-drop) if drop is not None else "-"
            mark = " ⚠" if drop is not None and drop > limit + 1e-12 else ""
            out.append(f"| {digit} | {_num(row.champion)} | {_num(row.challenger)} | "
                       f"{change}{mark} |")
        out += ["", f"⚠: recall dropped by more than the gate's limit ({limit:.4f})."]
    else:
        out.append("No champion to compare with.")
    if models_url:
        out += ["", f"[This run's entry on the Models page]({models_url}): the version it "
                    "registers, its plots and model card (after registration)."]
    out += ["", "### Your answer", ""]
    if verdict == PROMOTE:
        out.append(f"**{APPROVE}** registers the model and makes it the champion; **{DENY}** "
                   "registers nothing and keeps the champion.")
    else:
        out.append(f"**{APPROVE}** overrides the gate: the model is registered and made the "
                   f"champion, recorded as an override. An override needs a written reason: "
                   f"the form asks for a *{COMMENT}* before either answer, and an Approve "
                   f"without one fails this task and promotes nothing. **{DENY}** keeps the "
                   "gate's REJECT.")
    out.append(f"Your name, the time and your {COMMENT} are recorded with the version. Without "
               f"an answer within {_num(timeout_minutes, 'g')} minutes the request is "
               "rejected.")
    return "\n".join(out)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _change(new: Any, old: Any) -> str:
    """``new - old`` with its sign, or ``-`` unless both are numbers."""
    return _signed(float(new) - float(old)) if _is_num(new) and _is_num(old) else "-"


def not_asked(decision: GateDecision, mode: str, why: str) -> ApproveResult:
    """The gate's decision passed on, noting that no one was asked and why."""
    return ApproveResult(decision=decision.decision, gate_decision=decision.decision,
                         approval=Approval(mode=_mode(mode), asked=False, why=why),
                         decision_uri=decision.decision_uri)


def apply_response(decision: GateDecision, response: Response, *, mode: str,
                   why: str) -> ApproveResult:
    """The final decision after a person's answer (or the timeout's default).

    * PROMOTE + Approve: PROMOTE, ``approved``; PROMOTE + Reject: REJECT, ``rejected``;
    * REJECT + Reject: REJECT, ``rejected``; REJECT + Approve with a comment: PROMOTE, an
      ``override`` (the comment is its reason); REJECT + Approve without one: REJECT,
      ``override refused``;
    * a timeout: REJECT, ``timed out`` (the default answer).

    Returns:
        The final ``decision``, the gate's own (``gate_decision``), and the ``approval``
        record: who answered what, when, with which comment, and the outcome.
    """
    verdict = decision.decision
    comment = (response.comment or "").strip() or None
    override = False
    final: Verdict
    if response.timed_out:
        final, outcome = REJECT, TIMED_OUT
        note = "no answer before the timeout: the default answer (reject) applies"
    elif response.choice == DENY:
        final, outcome = REJECT, REJECTED
        note = f"{response.by or 'the approver'} rejected the gate's {verdict}"
    elif verdict == PROMOTE:
        final, outcome = PROMOTE, APPROVED
        note = f"{response.by or 'the approver'} approved the promotion"
    elif comment:
        final, outcome, override = PROMOTE, OVERRIDE, True
        note = f"{response.by or 'the approver'} overrode the gate's REJECT: {comment}"
    else:
        final, outcome = REJECT, REFUSED
        note = ("an override of the gate's REJECT needs a written reason (the request's "
                f"{COMMENT!r}); none was given, so the REJECT stands")
    approval = Approval(
        mode=_mode(mode), asked=True, why=why, answer=response.choice, outcome=outcome,
        override=override, by=response.by, by_id=response.by_id, at=response.at,
        comment=comment, timed_out=response.timed_out, note=note)
    return ApproveResult(decision=final, gate_decision=verdict, approval=approval,
                         decision_uri=decision.decision_uri)


def record(store: Store, run_id: str, result: ApproveResult) -> str:
    """Write the approval (and the final decision) of run ``run_id`` to ``approval.json`` in
    the run's folder; returns its URI."""
    key = f"runs/{run_key(run_id)}/approval.json"
    body = {"run_id": run_id, "decision": result.decision,
            "gate_decision": result.gate_decision, "approval": to_json(result.approval),
            "recorded_at": utc_now()}
    store.write_bytes(key, json.dumps(body, indent=2).encode())
    return store.uri_for(key)
