"""Reproducibility: the same seed and preset on the CPU give the same model in two processes.

Each run is its own Python process (fresh TensorFlow state), as two Airflow task attempts are.
Plus, on real MNIST (slow): the fast_mlp preset reaches its goal of 97.5 % test accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks.storage import LocalStore
from tests.helpers import make_prepared

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
import numpy as np
from mnist_tasks.config import train_config
from mnist_tasks.artifacts import load_model_from_store, load_prepared, predict_proba
from mnist_tasks.results import to_json
from mnist_tasks.storage import open_store
from mnist_tasks.train import train
store = open_store(sys.argv[2])
cfg = train_config(sys.argv[4], epochs=2, batch_size=32, seed=int(sys.argv[5]))
result = train(sys.argv[1], cfg, store, sys.argv[3])
model = load_model_from_store(store, result.model_uri)
proba = predict_proba(model, load_prepared(sys.argv[1], store).x_test)
history = json.loads(store.read_bytes(store.key_of(result.history_uri)))
print(json.dumps({"history": history, "proba": proba.tolist(), "result": to_json(result)}))
"""


def _train_in_subprocess(store: LocalStore, prepared_uri: str, run_key: str, preset: str,
                         seed: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, prepared_uri, store.uri, run_key, preset, str(seed)],
        capture_output=True, env=env, cwd=REPO, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return dict(json.loads(proc.stdout.decode().strip().splitlines()[-1]))


@pytest.mark.parametrize("preset", ["seed_mlp", pytest.param("cnn", marks=pytest.mark.slow)])
def test_same_seed_same_preset_gives_identical_results_in_two_processes(
    tmp_path: Path, preset: str
) -> None:
    store = LocalStore(tmp_path / "store")
    prepared_uri = make_prepared(store, "data-run", n_train=300, n_test=100)
    a = _train_in_subprocess(store, prepared_uri, "a", preset, seed=3)
    b = _train_in_subprocess(store, prepared_uri, "b", preset, seed=3)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert a["history"][key] == b["history"][key], key
    np.testing.assert_array_equal(np.array(a["proba"]), np.array(b["proba"]))
    assert a["result"]["runtime"]["deterministic"] is True
    assert a["result"]["best_val_accuracy"] == b["result"]["best_val_accuracy"]

    if preset == "seed_mlp":  # once is enough to show the seed matters
        c = _train_in_subprocess(store, prepared_uri, "c", preset, seed=4)
        assert c["history"]["loss"] != a["history"]["loss"]


@pytest.mark.slow
def test_fast_mlp_reaches_its_goal_on_real_mnist(mnist_dir: Path, tmp_path: Path) -> None:
    from mnist_tasks.artifacts import predict_classes
    from mnist_tasks.config import train_config
    from mnist_tasks.train import fit_arrays

    data = _full_mnist(mnist_dir)
    cfg = train_config("fast_mlp")
    fit = fit_arrays(cfg, data["x_train"], data["y_train"], data["x_val"], data["y_val"])
    accuracy = float(np.mean(predict_classes(fit.model, data["x_test"]) == data["y_test"]))
    assert fit.epochs_run == cfg.epochs
    assert accuracy >= 0.975, f"fast_mlp test accuracy {accuracy:.4f} < 0.975"


def _full_mnist(mnist_dir: Path) -> dict[str, np.ndarray]:
    """Real MNIST, scaled and split as the preprocess stage does (10 % validation, seed 42)."""
    from mnist_tasks.config import MNIST_FILES
    from mnist_tasks.idx import decompress, parse_idx
    from mnist_tasks.preprocess import split_indices

    def read(role: str) -> np.ndarray:
        path = mnist_dir / MNIST_FILES[role]
        return np.array(parse_idx(decompress(path.read_bytes(), source=str(path)),
                                  source=str(path)))

    x, y = read("train_images").astype(np.float32) / 255, read("train_labels")
    train_idx, val_idx = split_indices(len(y), 0.1, 42)
    return {"x_train": x[train_idx], "y_train": y[train_idx], "x_val": x[val_idx],
            "y_val": y[val_idx], "x_test": read("test_images").astype(np.float32) / 255,
            "y_test": read("test_labels")}
