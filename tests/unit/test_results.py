"""The stage results' one JSON codec: every result goes to plain JSON and comes back equal, and
a value that is not the result it should be is refused, naming the field."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from mnist_tasks.results import (
    Approval,
    ApproveResult,
    CandidateRow,
    ChampionFresh,
    CheckResult,
    EvaluateResult,
    FreshComparison,
    FreshDigitRecall,
    FreshIncrementMetrics,
    FreshMetrics,
    FreshRecall,
    GateDecision,
    IgnoredIncrement,
    IncrementComparison,
    IncrementRecord,
    IngestResult,
    LineageIncrement,
    McNemar,
    PreprocessResult,
    QuarantinedIncrement,
    RegisterResult,
    ResultError,
    ScoreCommit,
    ScorePlan,
    ScorePrepared,
    ScoreShard,
    SelectionRule,
    SelectResult,
    ShardScored,
    TrainResult,
    from_json,
    to_json,
)
from tests.helpers import (
    check_result,
    evaluate_result,
    gate_decision,
    ingest_result,
    lineage,
    train_result,
)


def _examples() -> list[Any]:
    full_lineage = lineage(
        increments=(LineageIncrement("inc-001", "e" * 64, 40, 10, False),),
        quarantined=(QuarantinedIncrement("inc-bad", ("all blank",)),))
    row = CandidateRow(candidate=0, label="fast_mlp seed=1", overrides={"seed": 1},
                       preset="fast_mlp", epochs=2, batch_size=32, learning_rate=0.002, seed=1,
                       status="trained", val_accuracy=0.95, val_loss=0.2, fit_seconds=1.5,
                       epochs_run=2, error=None, chosen=True)
    fresh = FreshComparison(
        n=200, challenger_accuracy=0.9, champion_accuracy=1.0,
        mcnemar=McNemar(b=20, c=0, p_value=1.9e-6, method="exact binomial", significant=True),
        per_digit_recall={"4": FreshRecall(0.9, 1.0, 0.1, 40, True)},
        per_increment={"inc-002": IncrementComparison(200, 0.9, 1.0)},
        challenger_predictions_uri="file:///p.npy", champion_predictions_uri=None)
    return [
        ingest_result(increments=(IncrementRecord(
            id="inc-001", status="ACCEPTED", reasons=(), counts={"kept": 50}, drift=False,
            payload_sha256="e" * 64, train=40, fresh=10, new=True),),
            increments_ignored=(IgnoredIncrement("inc-002", "no _SUCCESS marker"),),
            increments_changed=({"id": "inc-000", "added": ["x.png"]},),
            increments_source=None),
        check_result(decision="UNCHANGED", covered_by=3, lineage=full_lineage,
                     champion_fresh={"inc-001": ChampionFresh(10, 0.9, 0.98, 0.08, True)},
                     warnings=("FRESH-DATA DROP: ...",)),
        PreprocessResult(
            prepared_uri="file:///p.npz", dataset_uri="file:///d.npz", fingerprint="f" * 64,
            data_sha256="d" * 64, val_fraction=0.1, seed=42, n_train=90, n_val=10, n_test=30,
            n_fresh=10, n_increment_train=40, dataset_version="0123456789abcdef",
            increments=("inc-001",), fresh_increments=("inc-001",), image_shape=(28, 28),
            lineage=full_lineage),
        train_result(best_val_accuracy=0.95, best_epoch=2, candidate=1),
        SelectResult(model_uri="file:///m.keras", history_uri="file:///h.json",
                     prepared_uri="file:///p.npz", train_uri="file:///t.json", preset="fast_mlp",
                     chosen_candidate=0, candidates=(row,),
                     selection=SelectionRule("val_accuracy", ("val_loss (lower)",), 1)),
        evaluate_result(fresh=FreshMetrics(
            n=10, accuracy=0.9, per_increment={"inc-001": FreshIncrementMetrics(10, 0.9)},
            per_digit={"3": FreshDigitRecall(None, 0)}), fresh_accuracy=0.9),
        gate_decision(fresh=fresh),
        gate_decision("REJECT", champion=None),
        ApproveResult(decision="PROMOTE", gate_decision="REJECT", approval=Approval(
            mode="always", asked=True, why="w", answer="Approve", outcome="override",
            override=True, by="alice", comment="ok"), decision_uri="file:///d.json"),
        RegisterResult(model_uri="file:///r/m.keras", version=2, test_accuracy=0.98,
                       champion=True, verified=True, registry_uri="file:///r/000002",
                       decision="PROMOTE", previous_champion=1, promotion_skipped=None),
        ScorePlan(model_version=3, model_uri="file:///r/000003/model.keras",
                  resolved_from="event", batches=("b1", "b2"), skipped={"b0": "already scored"},
                  run_key="run-1", planned_at="2026-12-01T00:00:00+00:00"),
        ScorePrepared(shards=(ScoreShard("b1", 3, "scoring/m/staging/run-1/b1/v000003", 0, 0,
                                         7, "file:///r/000003/model.keras"),),
                      batches=("b1",), rejected={"b2": "no readable image"}),
        ShardScored(batch="b1", index=0, images=7, score_s=0.25),
        ScoreCommit(model_version=3, committed=("b1",), unchanged=(), rejected={}, skipped={},
                    images=7, outputs={"b1": "file:///s/scoring/m/batches/b1/v000003"}),
    ]


@pytest.mark.parametrize("result", _examples(), ids=lambda r: type(r).__name__)
def test_every_result_goes_to_plain_json_and_back(result: Any) -> None:
    data = json.loads(json.dumps(to_json(result), allow_nan=False))
    assert from_json(type(result), data) == result


def test_nested_results_tuples_and_none_have_their_json_shape() -> None:
    data = to_json(gate_decision(champion=None))
    assert data["champion"] is None and data["mcnemar"] is None
    assert data["reasons"][0].startswith("threshold PASS") and isinstance(data["reasons"], list)
    assert data["checks"][0] == {"name": "threshold", "passed": True, "test_set": "benchmark",
                                 "detail": "test accuracy 0.9812 >= minimum 0.9700"}
    assert to_json(train_result())["runtime"]["backend"] == "tensorflow"


def test_a_missing_or_mistyped_field_is_named() -> None:
    data = to_json(train_result())
    del data["model_uri"]
    with pytest.raises(ResultError, match=r"^TrainResult: missing 'model_uri'$"):
        from_json(TrainResult, data)
    bad = {**to_json(train_result()), "epochs_run": "3"}
    with pytest.raises(ResultError, match=r"TrainResult.epochs_run: expected int, got str '3'"):
        from_json(TrainResult, bad)
    bad = to_json(train_result())
    bad["runtime"]["jit_compile"] = 1
    with pytest.raises(ResultError, match=r"TrainResult.runtime.jit_compile: expected bool"):
        from_json(TrainResult, bad)
    with pytest.raises(ResultError, match=r"GateDecision.decision: 'MAYBE' is not one of"):
        from_json(GateDecision, {**to_json(gate_decision()), "decision": "MAYBE"})
    with pytest.raises(ResultError, match="CheckResult: expected an object, got list"):
        from_json(CheckResult, [1, 2])
    with pytest.raises(ResultError, match=r"EvaluateResult.test_accuracy: expected float, got "
                                          "null"):
        from_json(EvaluateResult, {**to_json(evaluate_result()), "test_accuracy": None})


def test_json_numbers_and_unknown_keys() -> None:
    # An int is a float's value too (JSON has one number type); a key it does not know (a
    # record written by a later version) is ignored.
    data = {**to_json(evaluate_result()), "test_accuracy": 1, "written_by": "a later version"}
    result = from_json(EvaluateResult, data)
    assert result.test_accuracy == 1.0 and isinstance(result.test_accuracy, float)
    assert from_json(IngestResult, to_json(ingest_result())) == ingest_result()


def test_arrays_and_numpy_scalars_have_no_json_form() -> None:
    with pytest.raises(TypeError, match=r"test_accuracy: float32"):
        to_json(evaluate_result(test_accuracy=np.float32(0.5)))
    with pytest.raises(TypeError, match="is not a result dataclass"):
        to_json({"model_uri": "x"})
