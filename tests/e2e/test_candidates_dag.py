"""Candidates through Airflow on the real MNIST: one `airflow dags test` run of three small
candidates (fast_mlp, one epoch each): two that train (different seeds and learning rates) and
one whose override is invalid only at training time (a batch larger than the training set).

The train task is mapped over the three; the failed instance fails at once (no retries) and
the run goes on: select picks the better of the two by validation accuracy, only that one is
evaluated, gated and registered, and the run's report, the version's metadata and its model
card list all three. One run serves every test here (module fixture), also the check of what
an operator reads: a train task's log, the run's note.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mnist_tasks.pipeline import run_summary
from mnist_tasks.registry import Registry
from mnist_tasks.storage import LocalStore
from tests.helpers import AirflowCLI

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# 54,000 training images after the 10 % validation split: a batch of 60,000 cannot be.
CANDIDATES = [
    {"seed": 1, "learning_rate": 0.005},
    {"seed": 2, "learning_rate": 0.0002},
    {"batch_size": 60000},
]


@dataclass(frozen=True)
class Run:
    output: str
    stderr: str
    returncode: int
    store: LocalStore
    summary: dict[str, Any]
    home: Path


@pytest.fixture(scope="module")
def run(airflow_home: Path, mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    store = LocalStore(tmp_path_factory.mktemp("candidates") / "store")
    conf = {"source": str(mnist_dir), "store": store.uri, "preset": "fast_mlp", "epochs": 1,
            "min_accuracy": 0.9, "candidates": CANDIDATES, "min_candidates": 2}
    result = AirflowCLI(airflow_home).dags_test(conf)
    output = result.stdout + result.stderr
    return Run(output, result.stderr, result.returncode, store, run_summary(store), airflow_home)


def _train_instances(home: Path) -> list[tuple[int, str, int]]:
    """(map index, state, try number) of the last run's train instances."""
    with sqlite3.connect(home / "airflow.db") as db:
        (run_id,) = db.execute("select run_id from dag_run where dag_id = 'mnist_training' "
                               "order by id desc limit 1").fetchone()
        return sorted(db.execute("select map_index, state, try_number from task_instance "
                                 "where run_id = ? and task_id = 'train'", (run_id,)))


def test_both_good_candidates_trained_and_the_better_by_validation_accuracy_was_chosen(
    run: Run,
) -> None:
    assert run.returncode == 0, run.output[-6000:]
    rows = run.summary["candidates"]
    assert [r["status"] for r in rows] == ["trained", "trained", "failed"]
    good = rows[:2]
    assert all(0.5 < r["val_accuracy"] <= 1 and r["fit_seconds"] > 0 for r in good)
    assert good[0]["val_accuracy"] != good[1]["val_accuracy"]
    best = max(good, key=lambda r: r["val_accuracy"])
    assert run.summary["chosen_candidate"] == best["candidate"]
    assert [r["chosen"] for r in rows] == [r is best for r in rows]
    # Each candidate trained with its own overrides, into its own files.
    assert [(r["seed"], r["learning_rate"], r["epochs"]) for r in good] == [
        (1, 0.005, 1), (2, 0.0002, 1)]
    for r in good:
        folder = run.store.root / "runs"
        assert list(folder.glob(f"*/candidates/{r['candidate']}/train/model.keras")), r
    print(f"\ncandidates: {[(r['label'], r['val_accuracy'], r['fit_seconds']) for r in rows]}")


def test_only_the_chosen_candidate_is_evaluated_gated_and_registered(run: Run) -> None:
    assert run.summary["decision"] == "PROMOTE", run.output[-6000:]
    chosen = run.summary["chosen_candidate"]
    version = Registry(run.store).get(run.summary["version"])
    meta = version.metadata
    assert f"/candidates/{chosen}/train/model.keras" in meta["sources"]["model_uri"]
    assert meta["parameters"]["seed"] == CANDIDATES[chosen]["seed"]
    # The record lists every candidate, with its validation metrics and training time.
    assert [c["label"] for c in meta["candidates"]] == [r["label"] for r in
                                                         run.summary["candidates"]]
    card = run.store.read_bytes(run.store.key_of(f"{version.uri}/model_card.md")).decode()
    assert "## Candidates" in card
    for row in run.summary["candidates"]:
        assert row["label"] in card
    assert "larger than the 54000 training images" in card


def test_the_failed_candidate_is_named_and_the_run_goes_on(run: Run) -> None:
    # The invalid override fails its own mapped instance, once (no retry), naming it and why.
    assert _train_instances(run.home) == [(0, "success", 1), (1, "success", 1),
                                          (2, "failed", 1)]
    failed = run.summary["candidates"][2]
    assert failed["label"] == "fast_mlp batch_size=60000"
    assert "parameter 'batch_size' = 60000 is invalid: larger than the 54000" in failed["error"]
    assert ("candidate 2 (fast_mlp batch_size=60000) FAILED: ConfigError: parameter "
            "'batch_size' = 60000") in run.output, run.output[-6000:]


def test_the_models_page_shows_the_versions_candidates(run: Run) -> None:
    """The page's row and template, on the registered version (the page itself, in a real
    api-server, is tests/integration/test_models_page.py)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from plugins.mnist_models import TEMPLATE, _version_row

    info = Registry(run.store).get(run.summary["version"])
    row = _version_row(info, champion=info.version)
    assert [c["chosen"] for c in row["candidates"]] == [
        r["chosen"] for r in run.summary["candidates"]]
    env = Environment(loader=FileSystemLoader(TEMPLATE.parent),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    html = env.get_template(TEMPLATE.name).render(
        model_name="m", registry_uri=run.store.uri, rows=[row], champion=info.version,
        selected=row, selected_meta=dict(info.metadata), lineage=None, plots=[],
        card_html=None, run=None, error=None)
    assert 'id="candidates"' in html
    candidates = html.split('id="candidates"', 1)[1].split("</table>", 1)[0]
    assert candidates.count("<td><code>fast_mlp") == 3  # one row per candidate
    assert "chosen" in html and ">failed</span>" in html


def _task_log(output: str, task_id: str, map_index: int = -1) -> list[str]:
    """The lines `airflow dags test` printed while one task instance ran."""
    start = f"[DAG TEST] starting task_id={task_id} map_index={map_index} "
    end = f"[DAG TEST] end task task_id={task_id} map_index={map_index} "
    lines = output.splitlines()
    first = next(i for i, line in enumerate(lines) if start in line)
    last = next(i for i, line in enumerate(lines) if end in line and i > first)
    return lines[first:last + 1]


def test_a_train_log_shows_its_epochs_at_the_top_level_and_no_error(run: Run) -> None:
    """What the UI shows an operator: Airflow folds the lines between ::group:: and
    ::endgroup:: away, and writes a level per line; the epochs must be in view, no line an
    ERROR, and no dump of the returned value."""
    log = _task_log(run.output, "train", 0)
    assert [line for line in log if "[error" in line] == []
    depth, epochs = 0, []
    for line in log:
        # (The task runner closes a group it opened before its log was shown: never below 0.)
        depth = max(0, depth + ("::group::" in line) - ("::endgroup::" in line))
        if "epoch 1/1 " in line:
            epochs.append(depth)
    assert epochs == [0], log
    assert any(line.split("] ", 1)[-1].startswith("SUMMARY train finished in ") for line in log)
    assert "Returned value was" not in run.output
    # A short-circuit task's "Condition result is ..." is the result's one-line summary.
    conditions = [line for task in ("check", "gate") for line in _task_log(run.output, task)
                  if "Condition result is" in line]
    assert len(conditions) == 2 and all(len(line) < 400 for line in conditions), conditions
    assert any("Condition result is gate: decision=PROMOTE" in line for line in conditions)
    # TensorFlow's start-up lines, which a deployed task's stderr would turn into ERROR lines,
    # went to stdout (here, `airflow dags test` runs the tasks in its own process).
    assert "oneDNN custom operations are on" in run.output
    assert "oneDNN" not in run.stderr and "absl::InitializeLog" not in run.stderr, run.stderr
    # The run's note (a DAG callback): what it did, in one line.
    assert re.search(r"RUN NOTE manual__\S+: fast_mlp · 1 epoch · best of 3 candidates · "
                     rf"PROMOTE v{run.summary['version']} \(\d+\.\d\d %\)", run.output)
