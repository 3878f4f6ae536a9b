"""The scoring DAG through Airflow (`airflow dags test`) with the S3 store over HTTP, on real MNIST.

Two fast_mlp models are trained on a slice of the real training set and registered in an S3
registry; version 1 is the champion. Two batches land: 2,000 real MNIST test images as a
gzipped IDX file, and 40 real test images as PNG files beside four bad files.

1. The DAG scores both with v1: the predictions exist (one row per image, model version 1), the
   accuracy against the known labels equals v1's accuracy on those images computed here
   independently, the bad files are skipped and named, and the manifest records counts, the
   version, the input SHA-256 and timings. The 2,000 images are scored in four mapped shards.
2. v2 is promoted, and a batch whose every file is bad lands: the run re-scores the two
   batches into second outputs beside the first (untouched), with v2's accuracy; the bad batch
   leaves no shard to score, and the commit, after committing the other two, fails the run
   with a message naming the batch and its files; nothing of it is written. (One run for both:
   each `airflow dags test` costs about 20 CPU seconds of start-up.)
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks import score, scoring_index
from mnist_tasks.idx import decompress, encode_idx, parse_idx
from mnist_tasks.registry import Registry
from mnist_tasks.scoring_batches import write_batch
from mnist_tasks.scoring_outputs import read_manifest, read_output
from mnist_tasks.storage import S3Store
from tests.helpers import TEST_BUCKET, AirflowCLI, png

pytestmark = [pytest.mark.slow, pytest.mark.integration]

N_BIG, N_PNG = 2000, 40


def _read_idx(path: Path) -> np.ndarray:
    return parse_idx(decompress(path.read_bytes(), source=str(path)), source=str(path))


def _train(x: np.ndarray, y: np.ndarray, seed: int, path: Path) -> Path:
    from mnist_tasks.config import train_config
    from mnist_tasks.train import fit_arrays

    cfg = train_config("fast_mlp", epochs=1, seed=seed)
    fit = fit_arrays(cfg, x.astype(np.float32) / 255.0, y)
    fit.model.save(path)
    return path


def _accuracy(model_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """The model's accuracy computed here, the way anyone would: load, scale, predict."""
    from mnist_tasks.artifacts import load_keras_model

    probs = load_keras_model(model_path).predict(x.astype(np.float32) / 255.0, verbose=0)
    return float((probs.argmax(axis=1) == y).mean())


def _rows(store: S3Store, batch: str, version: int) -> list[dict[str, str]]:
    cfg = score.ScoringConfig(landing="unused")
    data = read_output(store, cfg, batch, version, "predictions.csv")  # SHA-256 checked
    return list(csv.DictReader(io.StringIO(data.decode())))


def _manifest(store: S3Store, batch: str, version: int) -> dict[str, Any]:
    return read_manifest(store, score.ScoringConfig(landing="unused"), batch, version)


def test_scoring_dag_scores_with_the_champion_and_rescores_after_a_promotion(
    s3_env: str, mnist_dir: Path, airflow_home: Path, tmp_path: Path,
) -> None:
    x_train = _read_idx(mnist_dir / "train-images-idx3-ubyte.gz")[:12000]
    y_train = _read_idx(mnist_dir / "train-labels-idx1-ubyte.gz")[:12000]
    x_test = _read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    y_test = _read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    store = S3Store(TEST_BUCKET, "store")
    registry = Registry(store)
    models = {}
    for version, seed in ((1, 1), (2, 2)):
        models[version] = _train(x_train, y_train, seed, tmp_path / f"m{version}.keras")
        info = registry.register(f"e2e-{version}", {"model.keras": models[version]},
                                 {"metrics": {"test_accuracy": None}})
        assert info.version == version
    registry.promote(1)

    landing = S3Store(TEST_BUCKET, "store/landing")
    big_x, big_y = x_test[:N_BIG], y_test[:N_BIG]
    write_batch(landing, "2026-11-22-a", {
        "images-idx3-ubyte.gz": gzip.compress(encode_idx(big_x), mtime=0)})
    png_x, png_y = x_test[N_BIG:N_BIG + N_PNG], y_test[N_BIG:N_BIG + N_PNG]
    files = {f"digit-{i:03d}.png": png(png_x[i]) for i in range(N_PNG)}
    files.update({
        "cut.png": png(png_x[0])[:60],  # truncated
        "wide.png": png(np.zeros((28, 40), dtype=np.uint8)),  # wrong size
        "half-idx3-ubyte": encode_idx(png_x[:10])[:-300],  # truncated IDX
        "scan.jpg": b"\xff\xd8\xff\xe0 not a png",
    })
    write_batch(landing, "2026-11-22-b", files)

    airflow = AirflowCLI(airflow_home, {
        "MNIST_STORE": store.uri,
        "MNIST_SCORING_SHARD_SIZE": "500",
    })
    first = airflow("dags", "test", "mnist_batch_scoring")
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-5000:]
    assert "MODEL VERSION mnist-classifier v1 pinned for this run (from the champion" in log

    # 1. Predictions with v1: one row per image, accuracy = v1's, computed independently.
    rows = _rows(store, "2026-11-22-a", 1)
    assert [r["image_id"] for r in rows] == [f"images-idx3-ubyte.gz#{i}" for i in range(N_BIG)]
    assert {r["model_version"] for r in rows} == {"1"}
    predicted = np.array([int(r["predicted"]) for r in rows])
    acc_v1 = _accuracy(models[1], big_x, big_y)
    assert float((predicted == big_y).mean()) == pytest.approx(acc_v1, abs=1e-9)
    assert acc_v1 > 0.8  # a real model on real digits, not a constant
    manifest = _manifest(store, "2026-11-22-a", 1)
    assert manifest["model_version"] == 1 and manifest["counts"]["images"] == N_BIG
    assert manifest["counts"]["shards"] == 4 and manifest["timing"]["images_per_s"] > 0
    assert len(manifest["input_sha256"]) == 64
    assert "SCORED batch 2026-11-22-a with mnist-classifier v1: 2000 image(s)" in log

    png_rows = _rows(store, "2026-11-22-b", 1)
    assert len(png_rows) == N_PNG
    by_id = {r["image_id"]: int(r["predicted"]) for r in png_rows}
    png_pred = np.array([by_id[f"digit-{i:03d}.png"] for i in range(N_PNG)])
    assert float((png_pred == png_y).mean()) == pytest.approx(
        _accuracy(models[1], png_x, png_y), abs=1e-9)
    errors = json.loads(read_output(store, score.ScoringConfig(landing="-"),
                                          "2026-11-22-b", 1, "errors.json"))
    assert sorted(e["file"] for e in errors) == ["cut.png", "half-idx3-ubyte", "scan.jpg",
                                                 "wide.png"]
    assert any("40x28, expected 28x28" in e["error"] for e in errors)

    # 2. Promote v2: both batches re-scored, beside the first outputs (untouched); a batch of
    #    nothing but bad files: no shard to score, and the run fails naming it.
    registry.promote(2)
    v1_objects = {k: store.read_bytes(k) for k in store.list("scoring")
                  if "/v000001/" in k}
    write_batch(landing, "2026-11-22-c", {"x.png": b"garbage", "y.png": b"\x89PNG\r\n"})
    second = airflow("dags", "test", "mnist_batch_scoring")
    log = second.stdout + second.stderr
    assert second.returncode != 0, log[-5000:]
    assert "batch 2026-11-22-c" in log and "no readable image, nothing scored" in log
    assert "x.png: unreadable PNG" in log
    assert not store.list("scoring/mnist-classifier/batches/2026-11-22-c/v000002")
    assert "MODEL VERSION mnist-classifier v2 pinned" in log
    rows2 = _rows(store, "2026-11-22-a", 2)
    assert {r["model_version"] for r in rows2} == {"2"}
    predicted2 = np.array([int(r["predicted"]) for r in rows2])
    assert float((predicted2 == big_y).mean()) == pytest.approx(
        _accuracy(models[2], big_x, big_y), abs=1e-9)
    assert len(_rows(store, "2026-11-22-b", 2)) == N_PNG
    assert {k: store.read_bytes(k) for k in store.list("scoring") if "/v000001/" in k} \
        == v1_objects
    assert sorted(m["batch"] for m in scoring_index.scored_batches(store)[2]) == [
        "2026-11-22-a", "2026-11-22-b"]

