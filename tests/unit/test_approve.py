"""The approval step's logic (mnist_tasks.approve): when a person is asked, what the request
shows, how an answer changes the gate's decision, and where it is recorded (the run's files,
the version's metadata, the model card, ``registry list``)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from mnist_tasks import approve
from mnist_tasks.approve import ApprovalError, Response
from mnist_tasks.artifacts import write_result
from mnist_tasks.config import ConfigError, pipeline_config, run_key
from mnist_tasks.model_card import render_model_card
from mnist_tasks.register import build_metadata
from mnist_tasks.registry import Registry
from mnist_tasks.registry_cli import main as registry_main
from mnist_tasks.results import (
    Approval,
    ApproveResult,
    FreshComparison,
    GateDecision,
    IncrementComparison,
    LineageIncrement,
    PreprocessResult,
    QuarantinedIncrement,
    ResultError,
    from_json,
    to_json,
)
from mnist_tasks.storage import LocalStore
from tests.helpers import evaluate_result, gate_decision, lineage, train_result
from tests.helpers import recall_rows as recall

decision = gate_decision  # the gate's decision over champion v3, as approve receives it


# -- when a person is asked ------------------------------------------------------------------


def test_off_never_asks_and_always_always_asks() -> None:
    for verdict in ("PROMOTE", "REJECT"):
        assert approve.needs_approval(decision(verdict), "off") == (False, "approval is off")
        asked, why = approve.needs_approval(decision(verdict), "always")
        assert asked and "always" in why and verdict in why
    assert approve.asks_on_reject("always")
    assert not approve.asks_on_reject("borderline") and not approve.asks_on_reject("off")


def test_borderline_passes_a_clear_win() -> None:
    asked, why = approve.needs_approval(decision(p=0.001, b=40, c=90), "borderline")
    assert not asked
    assert "clearly better than champion v3" in why and "p=0.001" in why


@pytest.mark.parametrize(("p", "b", "c", "expected"), [
    (0.20, 50, 62, "not significantly different from champion v3 at 0.05"),
    (0.01, 90, 40, "significantly worse than champion v3"),  # within the margin, but worse
])
def test_borderline_asks_when_mcnemar_does_not_show_the_challenger_better(
        p: float, b: int, c: int, expected: str) -> None:
    asked, why = approve.needs_approval(decision(p=p, b=b, c=c), "borderline")
    assert asked and why.startswith("borderline: McNemar") and expected in why, why


def test_borderline_asks_when_any_digits_recall_drops() -> None:
    asked, why = approve.needs_approval(decision(per_digit=recall(d3=0.004, d7=0.001)),
                                        "borderline")
    assert asked, why
    assert "recall drops on digit(s) 3 (-0.0040), 7 (-0.0010)" in why and "McNemar" not in why
    assert approve.recall_drops(decision(per_digit=recall(d3=0.004))) == [("3", 0.004)]


def test_borderline_does_not_ask_about_a_reject_or_a_first_model() -> None:
    asked, why = approve.needs_approval(decision("REJECT", p=0.5), "borderline")
    assert not asked and "promotions only" in why
    asked, why = approve.needs_approval(decision(champion=None), "borderline")
    assert not asked and "no champion" in why


def test_bad_mode_or_decision_is_refused_naming_it() -> None:
    with pytest.raises(ApprovalError, match="'approval' = 'sometimes'"):
        approve.needs_approval(decision(), "sometimes")
    # A decision reaches approve only as a GateDecision, rebuilt from the gate's XCom.
    with pytest.raises(ResultError, match=r"GateDecision\.decision: 'MAYBE' is not one of"):
        from_json(GateDecision, {**to_json(decision()), "decision": "MAYBE"})
    with pytest.raises(ApprovalError, match="answer 'Yes'"):
        Response(choice="Yes")


def test_the_approval_params_reach_the_config() -> None:
    cfg = pipeline_config({"store": "/tmp/s", "approval": "borderline",
                           "approval_timeout_minutes": 30})
    assert (cfg.approval.mode, cfg.approval.timeout_minutes) == ("borderline", 30)
    assert pipeline_config({"store": "/tmp/s"}).approval.mode == "off"  # the library's default
    with pytest.raises(ConfigError, match="'approval_timeout_minutes' = 0"):
        pipeline_config({"store": "/tmp/s", "approval_timeout_minutes": 0})


# -- what the request shows ------------------------------------------------------------------


def test_the_request_shows_the_gates_report_in_markdown() -> None:
    gate = dataclasses.replace(decision(p=0.2, b=50, c=62,
                                        per_digit=recall(d3=0.004, d5=0.0000004, d7=0.02)),
                               champion=dataclasses.replace(decision().champion, loss=0.0712))
    _, why = approve.needs_approval(gate, "borderline")
    body = approve.report_markdown(gate, why=why, timeout_minutes=60,
                                   models_url="http://af/models/?dag_id=d&run_id=r")
    assert "### Gate decision: PROMOTE\n\nAsked because borderline: McNemar" in body
    assert "| check | set | result | detail |" in body
    assert "| champion | benchmark | PASS | challenger 0.9812 vs champion v3 0.9762 |" in body
    assert "| | challenger | champion v3 | change |" in body
    assert "| test accuracy | 0.9812 | 0.9762 | +0.0050 |" in body
    assert "| test loss | 0.0610 | 0.0712 | -0.0102 |" in body  # the champion's, registered
    assert "p = **0.2** (exact binomial): b = 50" in body and "not significant at 0.05" in body
    # Only a drop beyond the gate's limit (0.01) is marked; small ones and -0.0000 are not.
    assert "| 7 | 0.9800 | 0.9600 | -0.0200 ⚠ |" in body
    assert "| 3 | 0.9800 | 0.9760 | -0.0040 |" in body
    assert "| 5 | 0.9800 | 0.9800 | -0.0000 |" in body
    assert body.count("⚠") == 2  # the row and its legend
    assert "| 4 | 0.9800 | 0.9820 | +0.0020 |" in body
    assert "[This run's entry on the Models page](http://af/models/?dag_id=d&run_id=r)" in body
    assert "within 60 minutes the request is rejected" in body
    assert "**Approve** registers the model and makes it the champion" in body
    assert approve.request_subject(gate, "mnist-classifier", "manual__1") == (
        "Promote mnist-classifier from run manual__1? (gate: PROMOTE)")


def test_the_request_about_a_reject_explains_the_override() -> None:
    gate = decision("REJECT", champion=None)
    body = approve.report_markdown(gate, why="approval is 'always'", models_url=None,
                                   timeout_minutes=1440)
    assert "### Gate decision: REJECT" in body and "Not run: there is no champion" in body
    assert "overrides the gate" in body and "needs a written reason" in body
    assert "fails this task and promotes nothing" in body
    assert "| test loss | 0.0610 | - | - |" in body
    assert "Models page" not in body
    assert "REJECTED mnist-classifier" in approve.request_subject(gate, "mnist-classifier", "r")


def _run_records(store: LocalStore, *, champion: int | None = 3) -> GateDecision:
    """A run's records as the stages leave them (train, prepared, evaluation, summary) for a
    dataset version with two increments, one drifted and new, and a quarantined one; and the
    gate's decision citing them."""
    runs = f"{store.uri}/runs/r"
    inc = [LineageIncrement("2026-11-20-shop", "a" * 64, 800, 200, drift=True),
           LineageIncrement("2026-11-01-shop", "b" * 64, 400, 100, drift=False)]
    prepared = dataclasses.replace(
        PREPARED, prepared_uri=f"{runs}/preprocess/prepared.npz", n_train=55_200,
        dataset_version="d5e7a1b2c3d4e5f6", increments=("2026-11-01-shop", "2026-11-20-shop"),
        lineage=lineage(dataset_version="d5e7a1b2c3d4e5f6", increments=tuple(inc),
                        quarantined=(QuarantinedIncrement("2026-11-21-bad", ("bad labels",)),)))
    write_result(store, "runs/r/preprocess/prepared.json", prepared)
    write_result(store, "runs/r/train/result.json", train_result(
        preset="fast_mlp", epochs_run=4, params={"preset": "fast_mlp", "epochs": 5}))
    write_result(store, "runs/r/evaluate/result.json", evaluate_result(
        train_uri=f"{runs}/train/result.json"))
    store.write_bytes("runs/r/summary.json", json.dumps({"champion_fresh": {
        "2026-11-20-shop": {"n": 200, "accuracy": 0.91}}}).encode())
    fresh = FreshComparison(
        n=300, challenger_accuracy=0.95, champion_accuracy=0.93, mcnemar=None,
        per_digit_recall={}, per_increment={
            "2026-11-01-shop": IncrementComparison(100, 0.97, 0.97),
            "2026-11-20-shop": IncrementComparison(200, 0.94, 0.91)})
    return decision("REJECT", champion=champion, fresh=fresh,
                    evaluation_uri=f"{runs}/evaluate/result.json",
                    prepared_uri=f"{runs}/preprocess/prepared.npz")


def test_the_request_starts_with_what_was_trained_on_which_data(tmp_path: Any) -> None:
    store = LocalStore(tmp_path)
    gate = _run_records(store)
    trained = approve.what_was_trained(store, gate)
    assert (trained.preset, trained.epochs, trained.epochs_run) == ("fast_mlp", 5, 4)
    assert trained.dataset_version == "d5e7a1b2c3d4e5f6" and trained.drifted == [
        "2026-11-20-shop"]
    assert [(i.id, i.new) for i in trained.increments] == [
        ("2026-11-20-shop", True), ("2026-11-01-shop", False)]
    body = approve.report_markdown(gate, why="approval is 'always'", models_url=None,
                                   timeout_minutes=60, trained=trained)
    assert body.startswith("### What was trained\n\nPreset **fast_mlp**, 5 epochs (4 run), on "
                           "dataset version **`d5e7a1b2c3d4e5f6`** (55,200 training images")
    assert body.index("What was trained") < body.index("Gate decision")
    assert ("| `2026-11-20-shop` | new | 800 | 200 | 0.9400 | 0.9100 | ⚠ drift |" in body)
    assert "| `2026-11-01-shop` | no | 400 | 100 | 0.9700 | 0.9700 | none |" in body
    assert "**⚠ Trained on drifted data**: increment(s) `2026-11-20-shop`" in body
    assert "Quarantined, not trained on: `2026-11-21-bad`." in body
    assert ("| fresh-data accuracy (300 images: 2026-11-01-shop, 2026-11-20-shop) | 0.9500 | "
            "0.9300 | +0.0200 |") in body
    # A first model: every increment is new to it.
    first = approve.what_was_trained(store, _run_records(store, champion=None))
    assert all(i.new for i in first.increments)
    # Without the run's records the request says so, and still shows the gate's report.
    body = approve.report_markdown(gate, why="w", models_url=None, timeout_minutes=60)
    assert body.startswith("### What was trained\n\nThe run's records could not be read")
    assert "| check | set | result | detail |" in body


# -- applying the answer ---------------------------------------------------------------------

AT = "2026-11-22T04:00:00+00:00"


@pytest.mark.parametrize(("verdict", "choice", "comment", "final", "outcome", "override"), [
    ("PROMOTE", "Approve", "ok", "PROMOTE", "approved", False),
    ("PROMOTE", "Reject", "digit 3 got worse", "REJECT", "rejected", False),
    ("REJECT", "Reject", None, "REJECT", "rejected", False),
    ("REJECT", "Approve", "the threshold is wrong for this data", "PROMOTE", "override", True),
    ("REJECT", "Approve", "   ", "REJECT", "override refused", False),  # no written reason
])
def test_an_answer_decides(verdict: str, choice: str, comment: str | None, final: str,
                           outcome: str, override: bool) -> None:
    gate = decision(verdict)
    response = Response(choice=choice, by="alice", by_id="7", at=AT, comment=comment)
    result = approve.apply_response(gate, response, mode="always", why="asked")
    assert (result.decision, result.gate_decision) == (final, verdict)
    record = result.approval
    assert (record.outcome, record.override, record.by, record.at) == (
        outcome, override, "alice", AT)
    assert record.asked is True and record.answer == choice
    assert record.comment == ((comment or "").strip() or None)
    assert result.decision_uri == gate.decision_uri  # the gate's decision, cited as it was
    if outcome == "override refused":
        assert record.note and "needs a written reason" in record.note


def test_a_timeout_applies_the_default_answer_reject() -> None:
    response = Response(choice=approve.DEFAULT_ANSWER, at=AT, timed_out=True)
    result = approve.apply_response(decision("PROMOTE"), response, mode="borderline", why="w")
    assert result.decision == "REJECT"
    assert (result.approval.outcome, result.approval.by) == ("timed out", None)
    assert approve.DEFAULT_ANSWER == "Reject"


def test_not_asked_passes_the_decision_on() -> None:
    result = approve.not_asked(decision(), "off", "approval is off")
    assert result == ApproveResult(
        decision="PROMOTE", gate_decision="PROMOTE", decision_uri=decision().decision_uri,
        approval=Approval(mode="off", asked=False, why="approval is off"))


# -- recording -------------------------------------------------------------------------------


def test_record_writes_the_runs_approval_and_the_pipeline_its_summary(tmp_path: Any) -> None:
    from mnist_tasks.pipeline import Pipeline, run_summary

    store = LocalStore(tmp_path)
    run_id = "manual__2026-11-22T04:00:00+00:00"
    store.write_bytes(f"runs/{run_key(run_id)}/summary.json",
                      json.dumps({"run_id": run_id, "decision": "PROMOTE"}).encode())
    final = approve.apply_response(decision(), Response(choice="Reject", by="bob", at=AT),
                                   mode="always", why="w")
    uri = Pipeline(pipeline_config({"store": store.uri}), run_id).record_approval(final)
    assert uri.endswith(f"runs/{run_key(run_id)}/approval.json")
    saved = json.loads(store.read_bytes(f"runs/{run_key(run_id)}/approval.json"))
    assert (saved["decision"], saved["gate_decision"], saved["approval"]["by"]) == (
        "REJECT", "PROMOTE", "bob")
    summary = run_summary(store, run_id)
    assert summary["decision"] == "REJECT" and summary["approval"]["outcome"] == "rejected"
    # approve.record writes the approval alone: the Pipeline is the summary's one writer.
    approve.record(store, "other-run", final)
    assert store.list(f"runs/{run_key('other-run')}") == [
        f"runs/{run_key('other-run')}/approval.json"]


PREPARED = PreprocessResult(
    prepared_uri="file:///s/runs/r/preprocess/prepared.npz", dataset_uri="file:///d.npz",
    fingerprint="f" * 64, data_sha256="d" * 64, val_fraction=0.1, seed=42, n_train=90,
    n_val=10, n_test=30, n_fresh=0, n_increment_train=0, dataset_version="0123456789abcdef",
    increments=(), fresh_increments=(), image_shape=(28, 28), lineage=None)


def _metadata(final: ApproveResult) -> dict[str, Any]:
    gate = decision(final.gate_decision)
    return build_metadata(run_key="r", trained=train_result(), evaluation=evaluate_result(),
                          decision=gate, approved=final, prepared=PREPARED, candidates=[],
                          metrics={}, dag_id="d", run_id="r", code_version=None)


def override() -> ApproveResult:
    return approve.apply_response(
        decision("REJECT"), Response(choice="Approve", by="alice", by_id="7", at=AT,
                                     comment="the | threshold is wrong"),
        mode="always", why="approval is 'always'")


def test_the_metadata_keeps_the_gates_verdict_and_the_override() -> None:
    metadata = _metadata(override())
    assert metadata["gate"]["decision"] == "REJECT"
    assert metadata["approval"]["override"] is True
    assert metadata["approval"]["comment"] == "the | threshold is wrong"
    plain = _metadata(approve.not_asked(decision(), "off", "approval is off"))
    assert plain["gate"]["decision"] == "PROMOTE" and plain["approval"]["asked"] is False


def test_the_model_card_shows_who_decided_when_and_why() -> None:
    metadata = _metadata(override())
    card = render_model_card(model_name="m", version=2, created_at=AT, model_uri="file:///m",
                             store_uri="file:///s", metadata=metadata, metrics={})
    assert "| Approval | OVERRIDE of the gate's REJECT by alice at " in card
    assert "\n## Approval\n" in card and "**Override**: the gate REJECTED this model" in card
    assert "| Reason | the / threshold is wrong |" in card  # a '|' cannot break the table
    assert "| By | alice (id 7) |" in card
    card = render_model_card(model_name="m", version=2, created_at=AT, model_uri="file:///m",
                             store_uri="file:///s", metadata=_metadata(
                                 approve.not_asked(decision(), "off", "approval is off")),
                             metrics={})
    assert "No one was asked (approval mode `off`): approval is off." in card
    assert "| Approval |" not in card


def test_registry_list_shows_an_override_visibly(tmp_path: Any,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    registry = Registry(LocalStore(tmp_path))
    approved = approve.apply_response(decision(), Response(choice="Approve", by="bob", at=AT),
                                      mode="always", why="w")
    for i, final in enumerate((approved, override()), start=1):
        registry.register(f"run-{i}", {"model.keras": b"w", "metrics.json": b"{}"},
                          _metadata(final))
    assert registry_main(["--store", str(tmp_path), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[5:7] == ["GATE", "APPROVAL"]
    assert "PROMOTE" in lines[1] and "approved by bob" in lines[1]
    assert "REJECT" in lines[2] and "OVERRIDE by alice" in lines[2]
    assert (f"v2 OVERRIDE of the gate's REJECT by alice at {AT}: the | threshold is wrong"
            in lines)
    assert registry_main(["--store", str(tmp_path), "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["override"] for r in rows] == [False, True]
    assert rows[1]["approval"]["by"] == "alice"


def test_the_models_page_shows_the_approval_and_marks_an_override() -> None:
    """The page's template (rendered as the plugin does) with an overridden version selected."""
    from pathlib import Path

    from jinja2 import Environment, FileSystemLoader, select_autoescape

    folder = Path(__file__).resolve().parents[2] / "plugins" / "templates"
    env = Environment(loader=FileSystemLoader(folder), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    metadata = _metadata(override())
    row = {"version": 2, "created": AT, "test_accuracy": 0.96, "fresh_accuracy": None,
           "dataset_version": None, "gate_decision": "REJECT", "approval": "OVERRIDE by alice",
           "override": True, "run_id": "r", "run_key": "r", "champion": True, "files": [],
           "viewable": []}
    html = env.get_template("mnist_models.html").render(
        model_name="m", registry_uri="file:///s", rows=[row], champion=2, selected=row,
        selected_meta=metadata, lineage=None, plots=[], card_html=None, run=None, error=None)
    assert "<th>Approval</th>" in html
    assert "title=\"promoted over the gate's REJECT\">OVERRIDE by alice</span>" in html
    detail = html[html.index('id="approval"'):]
    detail = " ".join(detail[:detail.index("</dd>")].split())
    assert "OVERRIDE</span> of the gate's REJECT by alice at 2026-11-22T04:00:00+00:00" in detail
    assert "the | threshold is wrong" in detail

    rejected = approve.apply_response(decision(), Response(choice="Reject", by="bob", at=AT),
                                      mode="always", why="w")
    html = env.get_template("mnist_models.html").render(
        model_name="m", registry_uri="file:///s", rows=[], champion=None, selected=None,
        selected_meta={}, lineage=None, plots=[], card_html=None, error=None,
        run={"run_id": "r", "version": None, "decision": "REJECT", "reasons": [],
             "test_accuracy": None, "covered_by": None,
             "approval": to_json(rejected.approval)})
    banner = " ".join(html[html.index('id="run-banner"'):].split("</p>")[0].split())
    assert "not promoted at the approval step" in banner
    assert "Approval: <b>rejected</b> by bob" in banner
