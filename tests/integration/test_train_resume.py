"""Resume after a crash, against file:// and S3 over HTTP.

Most tests crash the training deterministically: the train stage's ``on_checkpoint`` hook
raises :class:`tests.helpers.SimulatedCrash` right after the checkpoint of epoch N is complete
in the store (no signal racing the training loop). One test is the real thing: train in a
subprocess, SIGKILL it after epoch 2, run it again. The killed process loses at most the epoch it
was in; the second run resumes from the last complete checkpoint and ends with the same number of
epochs and about the same accuracy as an uninterrupted run (real MNIST, a 5,000-image subset).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks import train as train_mod
from mnist_tasks.artifacts import save_npz
from mnist_tasks.config import MNIST_FILES, PreprocessConfig
from mnist_tasks.idx import decompress, parse_idx
from mnist_tasks.preprocess import preprocess
from mnist_tasks.results import TrainResult, from_json
from mnist_tasks.storage import LocalStore, Store
from tests.helpers import RUN, make_prepared, small_cfg, train_until_crash

# ---------------------------------------------------------------------------- a simulated crash


def test_train_resumes_from_the_last_complete_checkpoint(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mnist_tasks.train")
    prepared_uri = make_prepared(store)
    cfg = small_cfg(epochs=4)
    train_until_crash(2, prepared_uri, cfg, store)
    ckpt = f"runs/{RUN}/train/checkpoints"
    marker = json.loads(store.read_bytes(f"{ckpt}/checkpoint.json"))
    assert marker["epoch"] == 2
    # Only the latest checkpoint is kept.
    assert store.list(ckpt) == [f"{ckpt}/checkpoint.json", f"{ckpt}/epoch-0002/model.keras"]
    assert not store.exists(f"runs/{RUN}/train/result.json")

    caplog.clear()
    result = train_mod.train(prepared_uri, cfg, store, RUN)
    assert result.resumed_from_epoch == 2
    assert result.epochs_run == 4
    assert f"resuming from epoch 2 of 4 ({store.uri_for(f'{ckpt}/epoch-0002/model.keras')})" \
        in caplog.text
    assert "epoch 3/4" in caplog.text and "epoch 1/4" not in caplog.text
    history = json.loads(store.read_bytes(store.key_of(result.history_uri)))
    assert history["epoch"] == [1, 2, 3, 4]
    assert history["epoch"][:2] == marker["history"]["epoch"]
    assert history["loss"][:2] == marker["history"]["loss"]
    assert store.list(ckpt) == []


def test_each_checkpoint_is_reported_and_a_retry_checks_the_report(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """What the DAG keeps in Airflow's task state store: one record per checkpoint."""
    caplog.set_level(logging.INFO, logger="mnist_tasks.train")
    prepared_uri = make_prepared(store)
    cfg = small_cfg(epochs=4)
    reports: list[dict[str, Any]] = []
    # Dies after storing the checkpoint of epoch 3, before reporting it.
    train_until_crash(3, prepared_uri, cfg, store, on_checkpoint=reports.append)
    marker_uri = store.uri_for(f"runs/{RUN}/train/checkpoints/checkpoint.json")
    assert [(r["epoch"], r["epochs"], r["checkpoint_uri"]) for r in reports] == [
        (1, 4, marker_uri), (2, 4, marker_uri)]
    assert all(r["saved_at"].endswith("Z") for r in reports)

    caplog.clear()
    result = train_mod.train(prepared_uri, cfg, store, RUN, on_checkpoint=reports.append,
                             previous=reports[-1])
    assert result.resumed_from_epoch == 3
    assert ("the store holds epoch 3, newer than the 2 the previous attempt reported: "
            "resuming from epoch 3") in caplog.text
    assert [r["epoch"] for r in reports] == [1, 2, 4]


def test_a_reported_checkpoint_that_is_gone_is_a_warning_and_a_fresh_start(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mnist_tasks.train")
    prepared_uri = make_prepared(store)
    previous = {"epoch": 2, "epochs": 2, "checkpoint_uri": "s3://gone/checkpoint.json"}
    result = train_mod.train(prepared_uri, small_cfg(epochs=2), store, RUN, previous=previous)
    assert result.resumed_from_epoch == 0 and result.epochs_run == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("reported epoch 2 as checkpointed (s3://gone/checkpoint.json), but no usable "
               "checkpoint is in the store now: training from scratch" in r.getMessage()
               for r in warnings)


def test_a_failing_progress_report_does_not_stop_training(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(record: dict[str, Any]) -> None:
        raise ConnectionError("api server unreachable")

    result = train_mod.train(make_prepared(store), small_cfg(epochs=2), store, RUN,
                             on_checkpoint=broken)
    assert result.epochs_run == 2
    assert "could not record the progress of epoch 1: api server unreachable" in caplog.text
    assert "could not record the progress of epoch 2: api server unreachable" in caplog.text


def test_a_half_written_checkpoint_is_not_trusted(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mnist_tasks.train")
    prepared_uri = make_prepared(store)
    cfg = small_cfg(epochs=3)
    train_until_crash(1, prepared_uri, cfg, store)
    ckpt = f"runs/{RUN}/train/checkpoints"
    # A crash while uploading epoch 2: its model file is there, the marker still says 1.
    store.write_bytes(f"{ckpt}/epoch-0002/model.keras", b"partial")
    result = train_mod.train(prepared_uri, cfg, store, RUN)
    assert result.resumed_from_epoch == 1
    assert result.epochs_run == 3



def test_a_checkpoint_of_other_parameters_is_ignored(
    file_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mnist_tasks.train")
    prepared_uri = make_prepared(file_store)
    train_until_crash(1, prepared_uri, small_cfg(epochs=3), file_store)
    result = train_mod.train(prepared_uri, small_cfg(epochs=2, learning_rate=2e-3),
                             file_store, RUN)
    assert result.resumed_from_epoch == 0
    assert result.epochs_run == 2
    assert "made with other parameters or data" in caplog.text


def test_an_unreadable_checkpoint_marker_means_a_fresh_start(
    file_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mnist_tasks.train")
    prepared_uri = make_prepared(file_store)
    file_store.write_bytes(f"runs/{RUN}/train/checkpoints/checkpoint.json", b"{not json")
    result = train_mod.train(prepared_uri, small_cfg(epochs=1), file_store, RUN)
    assert result.resumed_from_epoch == 0
    assert "ignoring unreadable checkpoint marker" in caplog.text


def test_early_stopping_state_survives_a_resume_through_the_store(
    file_store: Store,
) -> None:
    prepared_uri = make_prepared(file_store)
    cfg = small_cfg("seed_wide_mlp", epochs=3, early_stopping_patience=5)
    train_until_crash(2, prepared_uri, cfg, file_store)
    marker = json.loads(file_store.read_bytes(f"runs/{RUN}/train/checkpoints/checkpoint.json"))
    assert marker["early_stopping"]["best"] == pytest.approx(min(marker["history"]["val_loss"]))
    assert marker["best_weights_key"].endswith("epoch-0002/best_weights.npz")
    result = train_mod.train(prepared_uri, cfg, file_store, RUN)
    assert result.resumed_from_epoch == 2 and result.epochs_run == 3
    history = json.loads(file_store.read_bytes(file_store.key_of(result.history_uri)))
    assert result.best_epoch == int(np.argmin(history["val_loss"])) + 1


# ---------------------------------------------------------------------------- a real SIGKILL

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 5
N_TRAIN, N_TEST = 5000, 1000
KILL_RUN = "resume-run"

# The training job, as a task runner would start it (its own process, its own store handle).
# Like the DAG's train task with Airflow's task state store, it notes each checkpoint in a
# record that outlives the process (a JSON file here), and hands the last one to a retry.
SCRIPT = f"""
import json, logging, os, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from mnist_tasks.config import train_config
from mnist_tasks.results import to_json
from mnist_tasks.storage import open_store
from mnist_tasks.train import train
notes = sys.argv[4]
previous = json.load(open(notes)) if os.path.exists(notes) else None
def note(progress):
    with open(notes + ".tmp", "w") as f:
        json.dump(progress, f)
    os.replace(notes + ".tmp", notes)
cfg = train_config("seed_mlp", epochs={EPOCHS}, batch_size=32)
print(json.dumps(to_json(train(sys.argv[1], cfg, open_store(sys.argv[2]), sys.argv[3],
                               on_checkpoint=note, previous=previous))))
"""
EPOCH_DONE = re.compile(r"^epoch (\d+)/(\d+) ", re.MULTILINE)


def _mnist_subset(mnist_dir: Path) -> dict[str, np.ndarray]:
    def read(role: str, n: int) -> np.ndarray:
        path = mnist_dir / MNIST_FILES[role]
        payload = decompress(path.read_bytes(), source=str(path))
        return np.array(parse_idx(payload, source=str(path))[:n])

    return {"x_train": read("train_images", N_TRAIN), "y_train": read("train_labels", N_TRAIN),
            "x_test": read("test_images", N_TEST), "y_test": read("test_labels", N_TEST)}


def _prepare(store: Store, arrays: dict[str, np.ndarray]) -> str:
    save_npz(store, "data/mnist.npz", arrays)
    result = preprocess(store.uri_for("data/mnist.npz"), PreprocessConfig(), store, KILL_RUN)
    return result.prepared_uri


def _start(prepared_uri: str, store: Store, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", SCRIPT, prepared_uri, store.uri, KILL_RUN,
             str(log_path.parent / "progress.json")],
            stdout=subprocess.PIPE, stderr=log, env=env, cwd=REPO,
        )


def _run(prepared_uri: str, store: Store, log_path: Path) -> TrainResult:
    proc = _start(prepared_uri, store, log_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    return from_json(TrainResult, json.loads(out.decode().strip().splitlines()[-1]))


def _epochs_logged(log_path: Path) -> list[int]:
    return [int(m.group(1)) for m in EPOCH_DONE.finditer(log_path.read_text(errors="replace"))]


@pytest.fixture(scope="module")
def subset(mnist_dir: Path) -> dict[str, np.ndarray]:
    return _mnist_subset(mnist_dir)


@pytest.fixture(scope="module")
def uninterrupted(subset: dict[str, np.ndarray],
                  tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The same job run without a crash, for comparison."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    store = LocalStore(tmp / "store")
    result = _run(_prepare(store, subset), store, tmp / "train.log")
    assert result.resumed_from_epoch == 0 and result.epochs_run == EPOCHS
    return result


@pytest.mark.slow
def test_training_killed_after_epoch_two_resumes_and_matches_an_uninterrupted_run(
    file_store: LocalStore, subset: dict[str, np.ndarray], uninterrupted: TrainResult,
    tmp_path: Path,
) -> None:
    store = file_store
    prepared_uri = _prepare(store, subset)

    first_log = tmp_path / "first.log"
    proc = _start(prepared_uri, store, first_log)
    deadline = time.monotonic() + 240
    while 2 not in _epochs_logged(first_log):
        assert proc.poll() is None, "training ended before epoch 2:\n" + first_log.read_text()
        assert time.monotonic() < deadline, "no 'epoch 2/' line within 240 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no cleanup, no atexit: a crashed worker
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_before_kill = max(_epochs_logged(first_log))
    assert 2 <= done_before_kill < EPOCHS
    assert not store.exists(f"runs/{KILL_RUN}/train/result.json")

    noted = json.loads((tmp_path / "progress.json").read_text())

    second_log = tmp_path / "second.log"
    result = _run(prepared_uri, store, second_log)
    text = second_log.read_text()

    resumed = result.resumed_from_epoch
    # The log line of an epoch comes after its checkpoint: at most the epoch in flight is lost.
    assert done_before_kill <= resumed <= done_before_kill + 1
    ckpt_uri = store.uri_for(f"runs/{KILL_RUN}/train/checkpoints/epoch-{resumed:04d}/model.keras")
    assert f"resuming from epoch {resumed} of {EPOCHS} ({ckpt_uri})" in text
    # The note of the killed attempt agrees with the store, or trails it by the epoch whose
    # checkpoint was stored just before the kill; the retry says which.
    assert noted["epochs"] == EPOCHS
    if noted["epoch"] == resumed:
        assert f"the previous attempt reported epoch {resumed} as checkpointed" in text
    else:
        assert noted["epoch"] == resumed - 1
        assert f"the store holds epoch {resumed}, newer than the {resumed - 1}" in text
    assert _epochs_logged(second_log) == list(range(resumed + 1, EPOCHS + 1))
    assert result.epochs_run == EPOCHS

    history = json.loads(store.read_bytes(store.key_of(result.history_uri)))
    assert history["epoch"] == list(range(1, EPOCHS + 1))
    assert history["resumed_from_epoch"] == resumed
    final = history["val_accuracy"][-1]
    assert final > 0.9
    ref = json.loads((Path(uninterrupted.history_uri.removeprefix("file://"))).read_text())
    assert abs(final - ref["val_accuracy"][-1]) < 0.02
    assert store.list(f"runs/{KILL_RUN}/train/checkpoints") == []

    # And the finished run is not trained a third time.
    third_log = tmp_path / "third.log"
    assert _run(prepared_uri, store, third_log) == result
    assert _epochs_logged(third_log) == []
