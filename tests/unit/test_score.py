"""The scoring stage on tiny synthetic data, in local stores: batches of PNG and IDX files
(good and bad), the pinned version, outputs per (batch, version), idempotence, sharding, the
all-or-nothing commit and the operators' report."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from mnist_tasks import config, labeling, score, scoring_index, scoring_monitor
from mnist_tasks.artifacts import load_keras_model
from mnist_tasks.idx import encode_idx
from mnist_tasks.registry import Registry
from mnist_tasks.scoring_batches import list_batches, write_batch
from mnist_tasks.scoring_outputs import output_prefix, read_manifest, read_output
from mnist_tasks.storage import LocalStore, StorageError
from tests.helpers import png, synthetic_digits


@pytest.fixture
def env(tmp_path: Path, model_file: Path) -> tuple[score.ScoringConfig, LocalStore, LocalStore]:
    """A store with a registry holding v1 (champion) and v2 (the same model), a landing area."""
    store, landing = LocalStore(tmp_path / "store"), LocalStore(tmp_path / "landing")
    reg = Registry(store)
    for run in ("run-a", "run-b"):
        reg.register(run, {"model.keras": model_file}, {"metrics": {"test_accuracy": 0.9}})
    reg.promote(1)
    cfg = score.ScoringConfig(landing=landing.uri, shard_size=7, rescore_window=2)
    return cfg, store, landing


def read_predictions(store: LocalStore, cfg: score.ScoringConfig, batch: str,
                     version: int) -> list[dict[str, str]]:
    data = read_output(store, cfg, batch, version, "predictions.csv")
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_png_and_idx_batch_scored_with_bad_files_named(env, model_file: Path) -> None:
    cfg, store, landing = env
    x, _ = synthetic_digits(20, seed=3)
    files = {f"img-{i:02d}.png": png(x[i]) for i in range(8)}
    files["more-idx3-ubyte.gz"] = gzip.compress(encode_idx(x[8:20]))
    files["broken.png"] = png(x[0])[:40]  # truncated
    files["big.png"] = png(np.zeros((32, 32), dtype=np.uint8))  # wrong size
    files["cut-idx3-ubyte"] = encode_idx(x[:5])[:-100]  # truncated IDX
    files["notes.txt"] = b"hello"
    write_batch(landing, "b001", files)

    result = score.score_batches(cfg, store, landing, "run1")

    assert result.committed == ("b001",) and result.model_version == 1
    # What lineage names: the landed batch and the version's model in, the output folder out.
    assert result.inputs == {"b001": landing.uri_for("b001")}
    assert result.model_uri == Registry(store).model_uri(1)
    assert result.outputs == {"b001": store.uri_for("scoring/mnist-classifier/batches/b001/"
                                                    "v000001")}
    rows = read_predictions(store, cfg, "b001", 1)
    assert sorted(r["image_id"] for r in rows) == sorted(
        [f"img-{i:02d}.png" for i in range(8)] + [f"more-idx3-ubyte.gz#{i}" for i in range(12)])
    assert len(rows) == 20 and {r["model_version"] for r in rows} == {"1"}
    # The same predictions as the model on the same pixels, scaled as preprocess does.
    model = load_keras_model(model_file)
    by_id = {r["image_id"]: r for r in rows}
    expected = model.predict(x[:20].astype(np.float32) / 255.0, verbose=0)
    for i in range(20):
        image_id = f"img-{i:02d}.png" if i < 8 else f"more-idx3-ubyte.gz#{i - 8}"
        row = by_id[image_id]
        order = np.argsort(-expected[i])
        assert int(row["predicted"]) == order[0] and int(row["runner_up"]) == order[1]
        assert float(row["probability"]) == pytest.approx(expected[i][order[0]], abs=1e-5)
        assert float(row["probability"]) >= float(row["runner_up_probability"])
    errors = json.loads(read_output(store, cfg, "b001", 1, "errors.json"))
    assert sorted(e["file"] for e in errors) == ["big.png", "broken.png", "cut-idx3-ubyte",
                                                 "notes.txt"]
    assert any("32x32, expected 28x28" in e["error"] for e in errors)
    assert any("truncated" in e["error"] for e in errors if e["file"] == "cut-idx3-ubyte")
    manifest = read_manifest(store, cfg, "b001", 1)
    assert manifest["model_version"] == 1 and manifest["counts"]["images"] == 20
    assert manifest["counts"]["skipped_files"] == 4 and manifest["counts"]["shards"] == 3
    assert len(manifest["input_sha256"]) == 64
    assert sum(manifest["report"]["class_counts"]) == 20
    assert manifest["files"]["predictions.csv"]["size"] == len(
        read_output(store, cfg, "b001", 1, "predictions.csv"))
    # The version's summary has the batch as the Models page shows it.
    assert scoring_index.scored_batches(store)[1] == [{
        "batch": "b001", "images": 20, "skipped_files": 4,
        "low_confidence": manifest["report"]["low_confidence"],
        "divergence_tvd": manifest["report"]["divergence_tvd"],
        "divergence_flagged": manifest["report"]["divergence_flagged"],
        "created_at": manifest["created_at"], "run_id": None,
        "monitor": None, "fired": [], "confidence_ks": None,
        "embedding_mmd": None}]  # v1 here has no monitoring reference
    assert manifest["monitor"] is None
    assert not store.list("scoring/mnist-classifier/staging")  # staging cleared


def test_rerun_does_nothing_and_new_version_writes_beside(env) -> None:
    cfg, store, landing = env
    x, _ = synthetic_digits(5, seed=4)
    write_batch(landing, "b001", {"a-idx3-ubyte": encode_idx(x)})
    score.score_batches(cfg, store, landing, "run1")
    out1 = output_prefix(cfg, "b001", 1)
    before = {k: store.read_bytes(k) for k in store.list(out1)}

    again = score.score_batches(cfg, store, landing, "run2")
    assert again.committed == () and again.skipped == {"b001": "already scored with v1"}

    Registry(store).promote(2)
    third = score.score_batches(cfg, store, landing, "run3")
    assert third.model_version == 2 and third.committed == ("b001",)
    assert {k: store.read_bytes(k) for k in store.list(out1)} == before  # untouched
    assert [r["model_version"] for r in read_predictions(store, cfg, "b001", 2)] == ["2"] * 5
    assert sorted(scoring_index.scored_batches(store)) == [1, 2]


def test_batch_without_marker_is_not_read(env) -> None:
    cfg, store, landing = env
    landing.write_bytes("b009/a-idx3-ubyte", encode_idx(synthetic_digits(3)[0]))
    assert list_batches(landing) == []
    result = score.score_batches(cfg, store, landing, "run1")
    assert result.committed == () and not store.list("scoring/mnist-classifier/batches")


def test_entirely_bad_batch_fails_clearly_and_others_are_scored(env) -> None:
    cfg, store, landing = env
    write_batch(landing, "b001", {"x.png": b"not a png", "y-idx3-ubyte": b"\0\0\x08\x03"})
    write_batch(landing, "b002", {"a-idx3-ubyte": encode_idx(synthetic_digits(4)[0])})
    with pytest.raises(score.BatchRejected, match=r"batch b001 .*no readable image.*x\.png: "
                       r"unreadable PNG.*y-idx3-ubyte"):
        score.score_batches(cfg, store, landing, "run1")
    assert [m["batch"] for m in scoring_index.scored_batches(store)[1]] == ["b002"]
    assert not store.list(output_prefix(cfg, "b001", 1))  # nothing partial
    # A later run does not read the rejected batch again.
    assert score.score_batches(cfg, store, landing, "run2").skipped["b001"].startswith(
        "rejected before")


def test_missing_shard_commits_nothing(env) -> None:
    cfg, store, landing = env
    write_batch(landing, "b001", {"a-idx3-ubyte": encode_idx(synthetic_digits(20)[0])})
    planned = score.plan(cfg, store, landing, "run1")
    prepared = score.prepare(cfg, store, landing, planned)
    assert len(prepared.shards) == 3
    scored = [score.score_shard(cfg, store, s) for s in prepared.shards[:2]]
    with pytest.raises(score.ScoringError, match=r"shard\(s\) \[2\] were not scored"):
        score.commit(cfg, store, planned, prepared, scored)
    assert scoring_index.scored_batches(store) == {}
    assert not store.list(output_prefix(cfg, "b001", 1))
    # The retry scores the missing shard and commits; the staged ones are reused.
    scored.append(score.score_shard(cfg, store, prepared.shards[2]))
    result = score.commit(cfg, store, planned, prepared, scored)
    assert result.committed == ("b001",) and result.images == 20


def test_plan_pins_the_version_for_the_run(env) -> None:
    cfg, store, landing = env
    write_batch(landing, "b001", {"a-idx3-ubyte": encode_idx(synthetic_digits(3)[0])})
    first = score.plan(cfg, store, landing, "run1")
    Registry(store).promote(2)  # the champion moves mid-run
    assert score.plan(cfg, store, landing, "run1").model_version == 1 == first.model_version
    assert score.plan(cfg, store, landing, "run2").model_version == 2


def test_resolve_model_from_event_or_champion(env, tmp_path: Path) -> None:
    _, store, _ = env
    reg = Registry(store)
    assert score.resolve_model(reg).resolved_from == "champion"
    got = score.resolve_model(reg, [{"version": 1}, {"version": 2, "model_uri": reg.model_uri(2)}])
    assert (got.version, got.resolved_from) == (2, "event")
    # An event about another store's registry is ignored.
    other = {"version": 2, "model_uri": "s3://elsewhere/registry/x/versions/000002/model.keras"}
    assert score.resolve_model(reg, [other]).version == 1
    with pytest.raises(score.ScoringError, match="version 7"):
        score.resolve_model(reg, [{"version": 7}])
    with pytest.raises(score.NoChampion, match="no champion"):
        score.resolve_model(Registry(LocalStore(tmp_path / "empty")))


def test_rescore_window_limits_a_champion_change(env) -> None:
    cfg, store, landing = env  # window 2
    for b in ("b001", "b002", "b003"):
        write_batch(landing, b, {"a-idx3-ubyte": encode_idx(synthetic_digits(2)[0])})
    assert score.score_batches(cfg, store, landing, "r1").committed == ("b001", "b002", "b003")
    Registry(store).promote(2)
    assert score.score_batches(cfg, store, landing, "r2").committed == ("b002", "b003")


def test_class_report_flags_divergence() -> None:
    cfg = score.ScoringConfig(landing="/x", divergence_threshold=0.2, confidence_threshold=0.6)
    balanced = scoring_monitor.class_report(np.arange(100) % 10, np.full(100, 0.9), cfg)
    assert not balanced.divergence_flagged and balanced.low_confidence == 0
    skewed = scoring_monitor.class_report(np.zeros(100, dtype=np.uint8),
                                np.r_[np.full(30, 0.5), np.full(70, 0.99)], cfg)
    assert skewed.divergence_flagged and skewed.divergence_tvd > 0.85
    assert skewed.low_confidence == 30


@pytest.mark.parametrize(("var", "value", "match"), [
    ("MNIST_SCORING_SHARD_SIZE", "0", "shard_size=0"),
    ("MNIST_SCORING_SHARD_SIZE", "ten", "MNIST_SCORING_SHARD_SIZE='ten'"),
    ("MNIST_SCORING_CONFIDENCE_THRESHOLD", "1.5", "confidence_threshold=1.5"),
])
def test_scoring_config_names_the_bad_setting(var: str, value: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        config.scoring_config({var: value}, "s3://b/p")
    cfg = config.scoring_config({}, "s3://b/p")
    assert cfg.landing == "s3://b/p/landing"


def test_cli_scores_a_named_batch_and_errors_in_one_line(env, capsys) -> None:
    from mnist_tasks.__main__ import main

    _, store, landing = env
    write_batch(landing, "b001", {"a-idx3-ubyte": encode_idx(synthetic_digits(4)[0])})
    args = ["score", "--store", store.uri, "--landing", landing.uri]
    assert main([*args, "--batch", "b001", "--version", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["committed"] == ["b001"] and result["model_version"] == 2
    assert main([*args, "--batch", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: batch(es) nope not found in {landing.uri} (or without their "
                   "_SUCCESS marker)"]


def _idx_batch(landing: LocalStore, batch: str, n: int = 2, marker: bool = True) -> None:
    files = {"a-idx3-ubyte": encode_idx(synthetic_digits(n)[0])}
    if marker:
        write_batch(landing, batch, files)
    else:
        landing.write_bytes(f"{batch}/a-idx3-ubyte", files["a-idx3-ubyte"])


def _record(store: LocalStore) -> dict:
    return json.loads(store.read_bytes("scoring/mnist-classifier/landing.json"))


def test_interval_runs_look_only_after_the_watermark_and_sweeps_find_the_rest(env) -> None:
    cfg, store, landing = env  # window 2
    for b in ("b001", "b002", "b003", "b004"):
        _idx_batch(landing, b)
    assert score.score_batches(cfg, store, landing, "r1").committed == (
        "b001", "b002", "b003", "b004")
    # Up to just before the re-score window (what comes after it is tracked, and so are the
    # batches this very run was about to decide).
    assert _record(store)["watermark"] == "b002"

    _idx_batch(landing, "b0015")  # lands late, with an id before the watermark
    _idx_batch(landing, "b005")
    assert score.score_batches(cfg, store, landing, "r2").committed == ("b005",)
    record = _record(store)
    assert (record["watermark"], record["tracked"]) == ("b003", ["b004", "b005"])
    # A registry event's run lists every folder: the late batch is scored then.
    events = [{"version": 1}]
    assert score.score_batches(cfg, store, landing, "r3", events=events).committed == (
        "b0015",)
    # So does the first landing check a day after the last sweep.
    _idx_batch(landing, "b0001")
    state = scoring_index.look_at_landing(store, landing, cfg.model_name, window=2,
                                          sweep=False)
    assert "b0001" not in state.complete and not state.swept
    later = (datetime.fromisoformat(_record(store)["swept_at"]) + timedelta(hours=25))
    state = scoring_index.look_at_landing(store, landing, cfg.model_name, window=2,
                                          sweep=False, now=later.isoformat())
    assert state.swept and "b0001" in state.complete
    assert not state.outputs.decided("b0001") and state.outputs.decided("b0015")


def test_an_undecided_folder_never_holds_the_watermark_back(env) -> None:
    cfg, store, landing = env
    cfg = dataclasses.replace(cfg, rescore_window=0)
    _idx_batch(landing, "b001")
    _idx_batch(landing, "b002", marker=False)  # still being uploaded
    _idx_batch(landing, "b003")
    assert score.score_batches(cfg, store, landing, "r1").committed == ("b001", "b003")
    record = _record(store)
    assert record["watermark"] == "b003" and "b002" in record["tracked"]
    landing.write_marker("b002")  # the upload completes
    assert score.score_batches(cfg, store, landing, "r2").committed == ("b002",)
    assert score.score_batches(cfg, store, landing, "r3").committed == ()
    assert _record(store)["tracked"] == []  # every folder decided, none after the watermark


def test_an_unchanged_local_landing_is_not_even_listed(env) -> None:
    cfg, store, landing = env

    class Counting(LocalStore):
        listings = 0

        def list_children(self, prefix: str = "", *, start_after: str | None = None
                          ) -> list[str]:
            Counting.listings += 1
            return super().list_children(prefix, start_after=start_after)

    counted = Counting(landing.root)
    for b in ("b001", "b002", "b003"):
        _idx_batch(landing, b)
    old = time.time() - 60
    os.utime(landing.root, (old, old))  # long unchanged: its mtime token is trusted
    score.score_batches(cfg, store, counted, "r1")  # the first look is a sweep
    before = Counting.listings
    assert score.score_batches(cfg, store, counted, "r2").committed == ()
    assert Counting.listings == before
    _idx_batch(landing, "b004")  # a new folder moves the token: listed (after the watermark)
    assert score.score_batches(cfg, store, counted, "r3").committed == ("b004",)
    assert Counting.listings == before + 1


def test_a_commit_that_stopped_before_its_summary_is_made_good(env, capsys) -> None:
    from mnist_tasks.__main__ import main

    cfg, store, landing = env
    _idx_batch(landing, "b001")
    _idx_batch(landing, "b002")
    score.score_batches(cfg, store, landing, "r1")
    summary = "scoring/mnist-classifier/summaries/v000001.json"
    store.delete(summary)  # as if the commit had stopped right after the manifest
    assert scoring_index.scored_batches(store) == {}
    again = score.commit_batch(cfg, store, "b001", 1, "staging-is-gone")  # the task's retry
    assert not again.committed
    assert [r["batch"] for r in scoring_index.scored_batches(store)[1]] == ["b001"]
    # Outputs committed before there were summaries: an operator's command adds them.
    assert main(["score", "--store", store.uri, "--landing", landing.uri,
                 "--rebuild-summaries"]) == 0
    assert json.loads(capsys.readouterr().out) == {"summaries": {"v1": 1}}
    assert [r["batch"] for r in scoring_index.scored_batches(store)[1]] == ["b001", "b002"]
    store.write_bytes(summary, b"{not json")
    assert scoring_index.scored_batches(store) == {}  # a damaged summary is logged and left out
    with pytest.raises(StorageError, match="--rebuild-summaries"):
        scoring_index.record_scored(store, [read_manifest(store, cfg, "b001", 1)])


def test_a_run_whose_later_batch_fails_still_lists_the_ones_it_committed(env) -> None:
    cfg, store, landing = env  # shard size 7
    _idx_batch(landing, "b001", n=3)
    _idx_batch(landing, "b002", n=10)  # two shards
    planned = score.plan(cfg, store, landing, "run1")
    prepared = score.prepare(cfg, store, landing, planned)
    scored = [score.score_shard(cfg, store, s) for s in prepared.shards[:-1]]
    with pytest.raises(score.ScoringError, match=r"b002 v1: shard\(s\) \[1\]"):
        score.commit(cfg, store, planned, prepared, scored)
    assert [r["batch"] for r in scoring_index.scored_batches(store)[1]] == ["b001"]


def test_batches_are_checked_against_the_versions_monitoring_reference(
    tmp_path: Path, model_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A version registered with its reference: a batch like its validation data is OK, an
    inverted one is flagged, in the manifest, the summary and the log."""
    from mnist_tasks.monitor import REFERENCE_FILE, Forward, Reference

    store, landing = LocalStore(tmp_path / "store"), LocalStore(tmp_path / "landing")
    model = load_keras_model(model_file)
    x_val, _ = synthetic_digits(600, seed=40)
    reference = Reference.build(*Forward(model)(x_val), x_val, model_version=1,
                                benchmark_accuracy=0.9)
    reg = Registry(store)
    reg.register("run-a", {"model.keras": model_file, REFERENCE_FILE: reference.to_bytes()},
                 {"metrics": {"test_accuracy": 0.9}})
    reg.promote(1)
    x, _ = synthetic_digits(400, seed=41)
    write_batch(landing, "clean", {"a-idx3-ubyte": encode_idx(x)})
    write_batch(landing, "inverted", {"a-idx3-ubyte": encode_idx(255 - x)})
    cfg = score.ScoringConfig(landing=landing.uri, shard_size=150)
    caplog.set_level("INFO")
    score.score_batches(cfg, store, landing, "run1")
    clean = read_manifest(store, cfg, "clean", 1)["monitor"]
    inverted = read_manifest(store, cfg, "inverted", 1)["monitor"]
    assert clean["status"] == "OK" and clean["n_images"] == 400 and clean["fired"] == []
    assert inverted["status"] in ("WARN", "ALARM") and "mean_intensity" in inverted["fired"]
    rows = {r["batch"]: r for r in scoring_index.scored_batches(store)[1]}
    assert rows["inverted"]["monitor"] == inverted["status"]
    assert rows["inverted"]["fired"] == inverted["fired"]
    assert any(r.getMessage().startswith(f"MONITOR {inverted['status']} batch inverted")
               for r in caplog.records)


def test_the_least_confident_images_are_exported_for_labelling(env) -> None:
    cfg, store, landing = env
    x, _ = synthetic_digits(30, seed=8)
    write_batch(landing, "b1", {"a-idx3-ubyte": encode_idx(x)})
    cfg = score.ScoringConfig(landing=cfg.landing, label_queue=5)
    score.score_batches(cfg, store, landing, "run1")
    prefix = labeling.label_queue_prefix(cfg, "b1", 1)
    rows = list(csv.DictReader(io.StringIO(store.read_bytes(f"{prefix}/queue.csv").decode())))
    predictions = {r["image_id"]: float(r["probability"]) for r in read_predictions(
        store, cfg, "b1", 1)}
    assert [r["image_id"] for r in rows] == sorted(predictions, key=predictions.get)[:5]
    for r in rows:  # each PNG is the image as scored
        from PIL import Image

        with Image.open(io.BytesIO(store.read_bytes(f"{prefix}/{r['file']}"))) as img:
            assert np.array_equal(np.asarray(img), x[int(r["image_id"].split("#")[1])])
    tasks = json.loads(store.read_bytes(f"{prefix}/label-studio.json"))
    assert [t["data"]["image_id"] for t in tasks] == [r["image_id"] for r in rows]
    assert tasks[0]["predictions"][0]["result"][0]["value"]["choices"] == [rows[0]["predicted"]]
    # None when the setting is 0.
    write_batch(landing, "b2", {"a-idx3-ubyte": encode_idx(x)})
    score.score_batches(score.ScoringConfig(landing=cfg.landing, label_queue=0), store,
                        landing, "run2")
    assert not store.list(labeling.label_queue_prefix(cfg, "b2", 1))
