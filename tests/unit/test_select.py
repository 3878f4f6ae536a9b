"""Select: the best candidate by validation accuracy, deterministic ties, failures named, and
``min_candidates``. Train results are built by hand (no training): select reads only a
result's ``history_uri`` and the failure notes."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from mnist_tasks.config import Candidate, ConfigError, pipeline_config, train_config
from mnist_tasks.results import TrainResult, to_json
from mnist_tasks.select import SelectionError, failure_key, record_failure, select
from mnist_tasks.storage import LocalStore
from tests.helpers import train_result

RUN = "run-1"


def _store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def _candidates(n: int) -> tuple[Candidate, ...]:
    return tuple(Candidate(i, {"seed": i + 1}, train_config("fast_mlp", epochs=2, seed=i + 1))
                 for i in range(n))


def _trained(store: LocalStore, index: int, val_acc: list[float], val_loss: list[float],
             **extra: Any) -> TrainResult:
    key = f"runs/{RUN}/candidates/{index}/train/history.json"
    store.write_bytes(key, json.dumps({"epoch": list(range(1, len(val_acc) + 1)),
                                       "val_accuracy": val_acc, "val_loss": val_loss}).encode())
    return train_result(candidate=index, model_uri=store.uri_for(key.replace("history.json",
                                                                             "model.keras")),
                        history_uri=store.uri_for(key), prepared_uri="file:///p",
                        train_uri=store.uri_for(key.replace("history.json", "result.json")),
                        fit_seconds=1.5, epochs_run=len(val_acc),
                        best_val_accuracy=max(val_acc), **extra)


def test_the_best_validation_accuracy_of_the_kept_model_wins(tmp_path: Path) -> None:
    store = _store(tmp_path)
    # Candidate 0 peaked higher (0.97) but its kept (last-epoch) model is worse than 1's.
    trained = [_trained(store, 0, [0.97, 0.95], [0.1, 0.2]),
               _trained(store, 1, [0.90, 0.96], [0.3, 0.15]),
               _trained(store, 2, [0.80, 0.85], [0.5, 0.4])]
    result = select(list(reversed(trained)), _candidates(3), store, RUN)
    assert result.chosen_candidate == 1 and result.model_uri == trained[1].model_uri
    assert result.train_uri == trained[1].train_uri  # the chosen candidate's train record
    rows = result.candidates
    assert [(r.candidate, r.val_accuracy, r.chosen) for r in rows] == [
        (0, 0.95, False), (1, 0.96, True), (2, 0.85, False)]
    assert rows[1].val_loss == 0.15 and rows[1].fit_seconds == 1.5
    assert rows[1].seed == 2 and rows[1].label == "fast_mlp seed=2"
    # The table is also in the store, for the run's record.
    saved = json.loads(store.read_bytes(f"runs/{RUN}/candidates.json"))
    assert saved["chosen_candidate"] == 1 and saved["metric"] == "val_accuracy"
    assert saved["candidates"] == [to_json(r) for r in rows]


def test_early_stopping_uses_the_restored_best_epoch(tmp_path: Path) -> None:
    store = _store(tmp_path)
    trained = [_trained(store, 0, [0.95, 0.94], [0.1, 0.2]),
               _trained(store, 1, [0.97, 0.90], [0.1, 0.4], stopped_early=True, best_epoch=1)]
    assert select(trained, _candidates(2), store, RUN).chosen_candidate == 1


@pytest.mark.parametrize(
    ("accs", "losses", "chosen"),
    [
        ([0.95, 0.95, 0.95], [0.2, 0.1, 0.1], 1),  # equal accuracy: lower loss, then index
        ([0.95, 0.95], [0.2, 0.2], 0),  # all equal: the lower index
        ([0.95, 0.95], [float("nan"), 0.3], 1),  # a NaN loss never wins a tie
    ],
)
def test_ties_break_deterministically(tmp_path: Path, accs: list[float], losses: list[float],
                                      chosen: int) -> None:
    store = _store(tmp_path)
    trained = [_trained(store, i, [a], [loss]) for i, (a, loss) in enumerate(zip(accs, losses,
                                                                                 strict=True))]
    for order in (trained, list(reversed(trained))):
        assert select(order, _candidates(len(accs)), store, RUN).chosen_candidate == chosen


def test_a_failed_candidate_is_named_with_why_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(tmp_path)
    cands = _candidates(3)
    record_failure(store, RUN, cands[1], ConfigError("parameter 'batch_size' = 9 is invalid"))
    trained = [_trained(store, 0, [0.9], [0.3])]  # candidate 2: no note (killed)
    with caplog.at_level(logging.ERROR, logger="mnist_tasks.select"):
        result = select(trained, cands, store, RUN)
    assert result.chosen_candidate == 0
    rows = result.candidates
    assert [r.status for r in rows] == ["trained", "failed", "failed"]
    assert rows[1].error == "ConfigError: parameter 'batch_size' = 9 is invalid"
    assert rows[2].error and "killed or never ran" in rows[2].error
    assert ("candidate 1 (fast_mlp seed=2) FAILED: ConfigError: parameter 'batch_size'"
            in caplog.text)


def test_fewer_than_min_candidates_fails_naming_the_failures(tmp_path: Path) -> None:
    store = _store(tmp_path)
    cands = _candidates(3)
    record_failure(store, RUN, cands[2], RuntimeError("out of memory"))
    trained = [_trained(store, 0, [0.9], [0.3])]
    with pytest.raises(SelectionError, match=r"1 of 3 candidates trained, fewer than "
                       r"min_candidates=2: .*candidate 2 \(fast_mlp seed=3\): RuntimeError: "
                       r"out of memory"):
        select(trained, cands, store, RUN, min_candidates=2)
    with pytest.raises(SelectionError, match="0 of 3 candidates trained"):
        select([], cands, store, RUN)
    assert not store.exists(f"runs/{RUN}/candidates.json")


def test_a_run_of_one_passes_its_result_through(tmp_path: Path) -> None:
    store = _store(tmp_path)
    result = dataclasses.replace(_trained(store, 0, [0.9], [0.3]), candidate=None)
    cands = pipeline_config({"store": "/s"}).candidate_list
    out = select([result], cands, store, RUN)
    assert out.chosen_candidate == 0 and out.model_uri == result.model_uri
    assert len(out.candidates) == 1 and out.candidates[0].label == "seed_mlp"


def test_a_result_for_an_unknown_candidate_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(SelectionError, match=r"unknown candidate\(s\) \[5\]"):
        select([_trained(store, 5, [0.9], [0.3])], _candidates(2), store, RUN)


def test_the_failure_note_is_beside_the_candidates_files(tmp_path: Path) -> None:
    store = _store(tmp_path)
    record_failure(store, RUN, _candidates(1)[0], ValueError("x"), attempt=2)
    note = json.loads(store.read_bytes(failure_key(RUN, 0)))
    assert (note["candidate"], note["attempt"], note["error"]) == (0, 2, "ValueError: x")


def test_the_model_card_lists_the_candidates_and_the_failed_ones(tmp_path: Path) -> None:
    from mnist_tasks.model_card import render_model_card

    store = _store(tmp_path)
    cands = _candidates(3)
    record_failure(store, RUN, cands[2], ConfigError("parameter 'batch_size' = 9 | *x*"))
    rows = [to_json(r) for r in select([_trained(store, 0, [0.9], [0.3]),
                                         _trained(store, 1, [0.95], [0.2])],
                                        cands, store, RUN).candidates]

    def card(candidates: list[dict[str, Any]]) -> str:
        return render_model_card(model_name="m", version=1, created_at="2026-11-22T00:00:00",
                                 model_uri="file:///m", store_uri="file:///s",
                                 metadata={"candidates": candidates}, metrics=None)

    text = card(rows)
    assert "## Candidates" in text and "This run trained 3 candidates" in text
    assert "| 1 | fast_mlp seed=2 | trained | 0.9500 | 0.2000 | 1.5000 | 1 | yes |" in text
    assert "| 2 | fast_mlp seed=3 | failed | - | - | - | - |  |" in text
    # The error is data: one code span, its Markdown table bar made harmless.
    assert "- 2 (fast\\_mlp seed=3): `ConfigError: parameter 'batch_size' = 9 | *x*`" in text
    assert "## Candidates" not in card(rows[:1])  # a run of one has no such section
