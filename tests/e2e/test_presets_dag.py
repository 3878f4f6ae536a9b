"""The presets no other DAG test runs, trained through the DAG on a subset of the real MNIST.

The DAG's wiring is the same for every preset (the preset is one parameter); every preset's
model is trained by tests/unit/test_train.py, and fast_mlp and seed_mlp run through the whole
DAG in tests/e2e/test_dag_e2e.py and the Celery deployment test. This runs the presets
those don't: cnn (shift augmentation in the input pipeline, batch norm, one-cycle schedule),
seed_wide_mlp (early stopping, a 20 % validation split), and cnn_best and mlp_plus (rotation,
zoom and elastic distortion in the input pipeline).

To stay fast, the source is the first 10,000 training and 2,000 test images of the real
MNIST, written as IDX files (so ``MNIST_CHECKSUMS=off``), and the cnn trains 3 epochs instead
of its 8. That still checks what matters for the cnn: one log line per epoch with its time, a
model that generalises (the gate, set to 95 %, judges its test accuracy on real digits: it
reaches about 97 % here, while a model whose batch-norm statistics had not settled, or
augmentation that garbled the images, scores far lower) and its registration. Its full-data
accuracy (>= 99.55 %) is measured by bench/train.py (docs/benchmarks.md). cnn_best trains 2
epochs (after one its batch-norm statistics still lag: about 20 % validation accuracy, 97 %
after two), seed_wide_mlp and mlp_plus one: wiring checks.

All train in one `airflow dags test` run, as candidates (the ``candidates`` parameter:
docs/candidates.md), which costs one Airflow start-up instead of four. The run goes on with the
convnet that is best by validation accuracy (about 97 % each), which the gate then judges.
"""

from __future__ import annotations

import re
from pathlib import Path

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
MIN_ACCURACY = 0.95


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


def test_every_preset_is_covered_by_a_dag_test() -> None:
    assert set(RUNS) == {p for p in PRESET_NAMES if p not in ("seed_mlp", "fast_mlp")}


def test_presets_train_through_the_dag(
    airflow_home: Path, mnist_subset: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    conf = {"source": str(mnist_subset), "store": store.uri, "min_accuracy": MIN_ACCURACY,
            "candidates": [{"preset": preset, "epochs": epochs}
                           for preset, epochs in RUNS.items()]}
    cli = AirflowCLI(airflow_home, {"MNIST_CHECKSUMS": "off"})
    result = cli.dags_test(conf)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    # One log line per epoch, each with its time (what an operator watches).
    for epochs in set(RUNS.values()):
        for epoch in range(1, epochs + 1):
            assert re.search(rf"epoch {epoch}/{epochs} .* time=\d+\.\ds ", output), epoch
    summary = run_summary(store)
    rows = summary["candidates"]
    assert [(r["preset"], r["epochs"], r["status"]) for r in rows] == [
        (preset, epochs, "trained") for preset, epochs in RUNS.items()]
    assert all(0.2 < r["val_accuracy"] <= 1.0 for r in rows), rows  # better than chance
    chosen = rows[summary["chosen_candidate"]]
    assert chosen["val_accuracy"] == max(r["val_accuracy"] for r in rows), rows
    assert summary["preset"] == chosen["preset"] in ("cnn", "cnn_best"), rows
    assert summary["decision"] == "PROMOTE"
    assert summary["test_accuracy"] >= MIN_ACCURACY
    version = Registry(store).get(summary["version"])
    assert version.metadata["parameters"]["preset"] == chosen["preset"]
    assert [c["preset"] for c in version.metadata["candidates"]] == list(RUNS)
