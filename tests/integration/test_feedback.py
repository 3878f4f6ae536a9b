"""Labels that come back: feedback merged with every version's predictions, the live accuracy
and its alarm, the increment made from the batch's own pixels, and bad feedback named."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from mnist_tasks import feedback as fb
from mnist_tasks import score
from mnist_tasks.increment_files import discover
from mnist_tasks.increments import IncrementPolicy, Reference, check_all
from mnist_tasks.registry import Registry
from mnist_tasks.scoring_batches import write_batch
from mnist_tasks.scoring_outputs import PREDICTIONS, read_output
from mnist_tasks.storage import LocalStore
from tests.helpers import png, synthetic_digits

pytestmark = pytest.mark.integration

N = 120


@pytest.fixture
def scored(tmp_path: Path, model_file: Path) -> dict:
    """A batch of N digits scored with v1 and v2 (the same model), and an empty source."""
    store, landing = LocalStore(tmp_path / "store"), LocalStore(tmp_path / "landing")
    feedback, source = LocalStore(tmp_path / "feedback"), LocalStore(tmp_path / "source")
    reg = Registry(store)
    for run in ("run-a", "run-b"):
        reg.register(run, {"model.keras": model_file}, {"metrics": {"test_accuracy": 0.9}})
    reg.promote(1)
    x, y = synthetic_digits(N, seed=21)
    write_batch(landing, "b1", {f"img-{i:03d}.png": png(x[i]) for i in range(N)})
    cfg = score.ScoringConfig(landing=landing.uri, rescore_window=0)
    score.score_batches(cfg, store, landing, "run-1", batches=["b1"])
    score.score_batches(cfg, store, landing, "run-2", batches=["b1"],
                        events=[{"version": 2}])
    rows = {v: {r["image_id"]: int(r["predicted"]) for r in csv.DictReader(io.StringIO(
        read_output(store, cfg, "b1", v, PREDICTIONS).decode()))} for v in (1, 2)}
    return {"store": store, "landing": landing, "feedback": feedback, "source": source,
            "x": x, "y": y, "predicted": rows}


def land(feedback: LocalStore, batch: str, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = feedback.root / batch / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    feedback.write_marker(batch)


def test_feedback_gives_every_version_its_live_accuracy_and_lands_an_increment(
    scored: dict,
) -> None:
    y = scored["y"]
    body = "image_id,label\n" + "".join(f"img-{i:03d}.png,{y[i]}\n" for i in range(100))
    land(scored["feedback"], "b1", {"labels.csv": body})
    cfg = fb.FeedbackConfig(min_labels=10)
    report = fb.process_batch(cfg, scored["store"], scored["feedback"], scored["landing"], "b1",
                              source=scored["source"], benchmarks={1: 0.9, 2: 0.9})
    assert [v.version for v in report.versions] == [1, 2]
    for live in report.versions:
        pred = scored["predicted"][live.version]
        expected = np.mean([pred[f"img-{i:03d}.png"] == y[i] for i in range(100)])
        assert live.labelled == 100 and live.accuracy == pytest.approx(expected)
        assert live.interval[0] <= live.accuracy <= live.interval[1]
    assert report.labels == 100 and report.refused == () and report.duplicates == 0
    # What lineage names: the labels and each version's output in; the report and increment out.
    store = scored["store"]
    assert report.feedback_uri == scored["feedback"].uri_for("b1")
    assert report.scored_uris == tuple(
        store.uri_for(f"scoring/mnist-classifier/batches/b1/v{v:06d}") for v in (1, 2))
    assert store.exists(store.key_of(report.report_uri))
    assert report.increment_uri == scored["source"].uri_for(f"increments/{report.increment}")

    # The increment: the batch's own pixels with the labels, found and accepted like any other.
    [ref] = discover(scored["source"].uri).complete
    assert ref.id == report.increment and ref.id.startswith("feedback-b1-")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    [checked] = check_all([ref], Reference.build(base, np.arange(50) % 10, base[:5]),
                          IncrementPolicy())
    assert checked.status == "ACCEPTED" and checked.counts["received"] == 100

    # Landed twice: the same report, no second increment.
    again = fb.process_batch(cfg, scored["store"], scored["feedback"], scored["landing"], "b1",
                             source=scored["source"], benchmarks={1: 0.9, 2: 0.9})
    assert again == report
    assert len(discover(scored["source"].uri).complete) == 1
    assert len(scored["store"].list("scoring/mnist-classifier/feedback")) == 1


def test_a_champion_far_below_its_benchmark_raises_an_alarm(scored: dict) -> None:
    pred = scored["predicted"][1]
    # Labels that disagree with the model on 60 of 100 images: live accuracy 40 %.
    labels = {f"img-{i:03d}.png": (pred[f"img-{i:03d}.png"] + (1 if i < 60 else 0)) % 10
              for i in range(100)}
    land(scored["feedback"], "b1",
         {"a.csv": "image_id,label\n" + "".join(f"{k},{v}\n" for k, v in labels.items())})
    report = fb.process_batch(fb.FeedbackConfig(), scored["store"], scored["feedback"],
                              scored["landing"], "b1", benchmarks={1: 0.98, 2: 0.98})
    assert report.status == "ALARM"
    assert all(v.status == "ALARM" and v.accuracy == pytest.approx(0.4) for v in report.versions)
    assert report.versions[0].p_value is not None and report.versions[0].p_value < 1e-6
    assert "FEEDBACK ALARM batch b1" in report.summary_line()


def test_bad_rows_are_refused_and_named_and_the_rest_is_used(scored: dict) -> None:
    y = scored["y"]
    good = "".join(f"img-{i:03d}.png,{y[i]}\n" for i in range(60))
    land(scored["feedback"], "b1", {
        "one.csv": "image_id,label\n" + good + "img-000.png,3\nnope.png,4\nimg-061.png,12\n"
                   "img-062.png\n",
        "two.csv": "label,image_id,comment\n7,img-070.png,ok\n",
    })
    report = fb.process_batch(fb.FeedbackConfig(min_labels=10), scored["store"],
                              scored["feedback"], scored["landing"], "b1")
    assert report.labels == 61 and report.duplicates == 1 and report.refused_total == 4
    problems = {(p.file, p.line): p.problem for p in report.refused}
    assert "duplicate image_id 'img-000.png' (first at one.csv:2)" in problems[("one.csv", 62)]
    assert problems[("one.csv", 63)] == "image_id 'nope.png' is not an image of batch b1"
    assert problems[("one.csv", 64)] == "label '12' is not a digit 0..9"
    assert problems[("one.csv", 65)] == "1 column(s), expected 2"


@pytest.mark.parametrize(("files", "message"), [
    ({"x.csv": "id,digit\na,1\n"}, r"x\.csv: the header id,digit has no image_id or label"),
    ({"notes.txt": "hello"}, r"no \.csv file"),
    ({"x.csv": "image_id,label\nnope.png,1\n"}, r"no row names an image of the batch"),
    ({"x.csv": b"\xff\xfe".decode("latin-1")}, r"x\.csv: the header"),
])
def test_unusable_feedback_is_refused_naming_the_file(scored: dict, files: dict[str, str],
                                                      message: str) -> None:
    land(scored["feedback"], "b1", files)
    with pytest.raises(fb.FeedbackError, match=message):
        fb.process_batch(fb.FeedbackConfig(), scored["store"], scored["feedback"],
                         scored["landing"], "b1")
    assert not scored["store"].list("scoring/mnist-classifier/feedback")  # nothing written


def test_feedback_for_a_batch_never_scored_or_without_its_marker(scored: dict) -> None:
    land(scored["feedback"], "other", {"x.csv": "image_id,label\na.png,1\n"})
    with pytest.raises(fb.FeedbackError, match=r"batch 'other': the batch was never scored"):
        fb.process_batch(fb.FeedbackConfig(), scored["store"], scored["feedback"],
                         scored["landing"], "other")
    (scored["feedback"].root / "late").mkdir()
    (scored["feedback"].root / "late" / "x.csv").write_text("image_id,label\n")
    with pytest.raises(fb.FeedbackError, match=r"late: no _SUCCESS marker yet"):
        fb.process_batch(fb.FeedbackConfig(), scored["store"], scored["feedback"],
                         scored["landing"], "late")
    assert fb.pending_batches(scored["feedback"]) == ["other"]


def test_the_feedback_command_line(scored: dict) -> None:
    import json
    import subprocess
    import sys

    y = scored["y"]
    land(scored["feedback"], "b1", {"l.csv": "image_id,label\n" + "".join(
        f"img-{i:03d}.png,{y[i]}\n" for i in range(60))})
    cmd = [sys.executable, "-m", "mnist_tasks", "feedback", "--store", scored["store"].uri,
           "--feedback", scored["feedback"].uri, "--landing", scored["landing"].uri,
           "--source", str(scored["source"].root)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    [report] = result["processed"]
    assert report["batch"] == "b1" and report["labels"] == 60
    assert [v["version"] for v in report["versions"]] == [1, 2]
    assert (scored["source"].root / "increments" / report["increment"] / "_SUCCESS").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(again.stdout.strip().splitlines()[-1])["processed"] == []
    bad = subprocess.run([*cmd[:-2], "--feedback", "/data/../etc"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
