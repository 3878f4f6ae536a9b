"""Candidates through Airflow, on a subset of the real MNIST: one `airflow dags test` run whose
candidates are the presets no other DAG test runs, plus one whose override is invalid only at
training time.

The DAG's wiring is the same for every preset (the preset is one parameter); every preset's
model is trained by tests/unit/test_train.py, and fast_mlp and seed_mlp run through the whole
DAG in tests/e2e/test_dag_e2e.py and the Celery deployment test. Here the others train as the
candidates of one run: cnn (shift augmentation in the input pipeline, batch norm, one-cycle
schedule), seed_wide_mlp (early stopping, a 20 % validation split), cnn_best and mlp_plus
(rotation, zoom and elastic distortion in the input pipeline); and a fifth, fast_mlp with a
batch larger than the training set, fails its own mapped train instance at once (no retries).
The run goes on: select picks the best by validation accuracy, only that one is evaluated,
gated and registered, and the run's report, the version's metadata and its model card list all
five. One run serves every test here (module fixture), also the check of what an operator
reads: a train task's log, the run's note.

To stay fast, the source is the first 10,000 training and 2,000 test images of the real
MNIST, written as IDX files (so ``MNIST_CHECKSUMS=off``), and the cnn trains 3 epochs instead
of its 9. That still checks what matters for the cnn: one log line per epoch with its time, a
model that generalises (the gate, set to 95 %, judges its test accuracy on real digits: it
reaches about 97 % here, while a model whose batch-norm statistics had not settled, or
augmentation that garbled the images, scores far lower) and its registration. Its full-data
accuracy is measured by bench/train.py (docs/benchmarks.md). cnn_best trains 2 epochs (after
one its batch-norm statistics still lag: about 20 % validation accuracy, 97 % after two),
seed_wide_mlp and mlp_plus one: wiring checks.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mnist_tasks.config import PRESET_NAMES
from mnist_tasks.pipeline import run_summary
from mnist_tasks.registry import Registry
from mnist_tasks.storage import LocalStore
from tests.helpers import AirflowCLI, write_folder

pytestmark = [pytest.mark.slow, pytest.mark.integration]

N_TRAIN, N_TEST = 10_000, 2_000
# preset -> epochs, one candidate each; a convnet is the best, which the gate judges
RUNS = {"cnn": 3, "seed_wide_mlp": 1, "cnn_best": 2, "mlp_plus": 1}
# ... and one that fails at training time: 9,000 training images cannot make a batch of 20,000.
FAILING = {"preset": "fast_mlp", "epochs": 1, "batch_size": 20_000}
CANDIDATES = [{"preset": preset, "epochs": epochs} for preset, epochs in RUNS.items()] + [FAILING]
MIN_ACCURACY = 0.95


@dataclass(frozen=True)
class Run:
    output: str
    stderr: str
    returncode: int
    store: LocalStore
    summary: dict[str, Any]
    home: Path


@pytest.fixture(scope="module")
def mnist_subset(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first N_TRAIN training and N_TEST test images of the real MNIST, as IDX files."""
    from mnist_tasks.config import MNIST_FILES
    from mnist_tasks.idx import decompress, parse_idx

    arrays = {}
    for name, role, n in (("x_train", "train_images", N_TRAIN), ("y_train", "train_labels",
                          N_TRAIN), ("x_test", "test_images", N_TEST),
                          ("y_test", "test_labels", N_TEST)):
        path = mnist_dir / MNIST_FILES[role]
        arrays[name] = parse_idx(decompress(path.read_bytes(), source=str(path)),
                                 source=str(path))[:n]
    return write_folder(tmp_path_factory.mktemp("mnist-subset"), arrays)


@pytest.fixture(scope="module")
def run(airflow_home: Path, mnist_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    store = LocalStore(tmp_path_factory.mktemp("candidates") / "store")
    conf = {"source": str(mnist_subset), "store": store.uri, "min_accuracy": MIN_ACCURACY,
            "candidates": CANDIDATES, "min_candidates": len(RUNS)}
    result = AirflowCLI(airflow_home, {"MNIST_CHECKSUMS": "off"}).dags_test(conf)
    output = result.stdout + result.stderr
    return Run(output, result.stderr, result.returncode, store, run_summary(store), airflow_home)


def _train_instances(home: Path) -> list[tuple[int, str, int]]:
    """(map index, state, try number) of the last run's train instances."""
    with sqlite3.connect(home / "airflow.db") as db:
        (run_id,) = db.execute("select run_id from dag_run where dag_id = 'mnist_training' "
                               "order by id desc limit 1").fetchone()
        return sorted(db.execute("select map_index, state, try_number from task_instance "
                                 "where run_id = ? and task_id = 'train'", (run_id,)))


def test_every_preset_is_covered_by_a_dag_test() -> None:
    assert set(RUNS) == {p for p in PRESET_NAMES if p not in ("seed_mlp", "fast_mlp")}


def test_every_preset_trained_and_the_best_by_validation_accuracy_was_chosen(run: Run) -> None:
    assert run.returncode == 0, run.output[-6000:]
    # One log line per epoch, each with its time (what an operator watches).
    for epochs in set(RUNS.values()):
        for epoch in range(1, epochs + 1):
            assert re.search(rf"epoch {epoch}/{epochs} .* time=\d+\.\ds ", run.output), epoch
    rows = run.summary["candidates"]
    assert [(r["preset"], r["epochs"], r["status"]) for r in rows] == [
        *((preset, epochs, "trained") for preset, epochs in RUNS.items()),
        ("fast_mlp", 1, "failed")]
    trained = rows[:len(RUNS)]
    assert all(0.2 < r["val_accuracy"] <= 1.0 and r["fit_seconds"] > 0 for r in trained), rows
    best = max(trained, key=lambda r: r["val_accuracy"])
    assert run.summary["chosen_candidate"] == best["candidate"]
    assert [r["chosen"] for r in rows] == [r is best for r in rows]
    assert run.summary["preset"] == best["preset"] in ("cnn", "cnn_best"), rows
    # Each candidate trained into its own files.
    for r in trained:
        assert list((run.store.root / "runs").glob(
            f"*/candidates/{r['candidate']}/train/model.keras")), r
    print(f"\ncandidates: {[(r['label'], r.get('val_accuracy')) for r in rows]}")


def test_only_the_chosen_candidate_is_evaluated_gated_and_registered(run: Run) -> None:
    assert run.summary["decision"] == "PROMOTE", run.output[-6000:]
    assert run.summary["test_accuracy"] >= MIN_ACCURACY
    chosen = run.summary["chosen_candidate"]
    version = Registry(run.store).get(run.summary["version"])
    meta = version.metadata
    assert f"/candidates/{chosen}/train/model.keras" in meta["sources"]["model_uri"]
    assert meta["parameters"]["preset"] == CANDIDATES[chosen]["preset"]
    # The record lists every candidate, with its validation metrics and training time.
    assert [c["label"] for c in meta["candidates"]] == [r["label"] for r in
                                                         run.summary["candidates"]]
    assert [c["preset"] for c in meta["candidates"]] == [c["preset"] for c in CANDIDATES]
    card = run.store.read_bytes(run.store.key_of(f"{version.uri}/model_card.md")).decode()
    assert "## Candidates" in card
    for row in run.summary["candidates"]:
        assert row["label"] in card
    assert re.search(r"larger than the \d+ training images", card), card


def test_the_failed_candidate_is_named_and_the_run_goes_on(run: Run) -> None:
    # The invalid override fails its own mapped instance, once (no retry), naming it and why.
    n = len(RUNS)
    assert _train_instances(run.home) == [*((i, "success", 1) for i in range(n)),
                                          (n, "failed", 1)]
    failed = run.summary["candidates"][n]
    assert failed["label"] == "fast_mlp epochs=1 batch_size=20000"
    assert re.search(r"parameter 'batch_size' = 20000 is invalid: larger than the \d+ "
                     "training images", failed["error"]), failed
    assert (f"candidate {n} (fast_mlp epochs=1 batch_size=20000) FAILED: ConfigError: "
            "parameter 'batch_size' = 20000") in run.output, run.output[-6000:]


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
    for r in run.summary["candidates"]:  # one row per candidate
        assert candidates.count(f"<td><code>{r['label']}</code>") == 1, r["label"]
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
    log = _task_log(run.output, "train", 0)  # the cnn's: 3 epochs
    assert [line for line in log if "[error" in line] == []
    depth, epochs = 0, []
    for line in log:
        # (The task runner closes a group it opened before its log was shown: never below 0.)
        depth = max(0, depth + ("::group::" in line) - ("::endgroup::" in line))
        if re.search(r"epoch [123]/3 ", line):
            epochs.append(depth)
    assert epochs == [0, 0, 0], log
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
    assert re.search(rf"RUN NOTE manual__\S+: {run.summary['preset']} · \d epochs? · best of "
                     rf"{len(CANDIDATES)} candidates · PROMOTE v{run.summary['version']} "
                     r"\(\d+\.\d\d %\)", run.output), run.output[-3000:]
