"""The Markdown model card."""

from __future__ import annotations

from typing import Any

from mnist_tasks.model_card import render_model_card

METRICS: dict[str, Any] = {
    "test_accuracy": 0.9781,
    "test_loss": 0.0712,
    "n_test": 10000,
    "per_digit": {str(d): {"precision": 0.97 + d / 1000, "recall": 0.99 - d / 100, "f1": 0.98,
                           "support": 1000} for d in range(10)},
    "macro_avg": {"precision": 0.978, "recall": 0.977, "f1": 0.977},
    "weighted_avg": {"precision": 0.978, "recall": 0.978, "f1": 0.978},
    "most_confused_pairs": [{"true": 4, "predicted": 9, "count": 17},
                            {"true": 7, "predicted": 2, "count": 11}],
}
METADATA: dict[str, Any] = {
    "run_key": "manual__2026-11-21",
    "run": {"dag_id": "mnist_training", "run_id": "manual__2026-11-21"},
    "code_version": "0123abcd",
    "packages": {"keras": "3.15.1", "numpy": "2.4.0", "python": "3.11.9"},
    "dataset": {"fingerprint": "f" * 64, "data_sha256": "d" * 64, "n_train": 54000,
                "n_val": 6000, "n_test": 10000, "val_fraction": 0.1, "seed": 42},
    "parameters": {"preset": "seed_mlp", "epochs": 10, "learning_rate": 0.001,
                   "note": "a|b"},
    "training": {"epochs_run": 10, "device": "CPU",
                 "runtime": {"backend": "tensorflow", "jit_compile": False}},
    "gate": {"decision": "PROMOTE", "champion_version": 3,
             "reasons": ["threshold PASS: test accuracy 0.9781 >= minimum 0.9700"]},
}


def render(metadata: dict[str, Any] = METADATA, metrics: dict[str, Any] | None = METRICS) -> str:
    return render_model_card(
        model_name="mnist-classifier", version=4, created_at="2026-11-21T10:00:00.000+00:00",
        model_uri="s3://bucket/mnist/registry/mnist-classifier/versions/000004/model.keras",
        store_uri="s3://bucket/mnist", metadata=metadata, metrics=metrics,
    )


def test_full_card() -> None:
    card = render()
    assert card.startswith("# Model card: mnist-classifier v4\n")
    for heading in ("## Data", "## Recipe and parameters", "## Metrics (test set)",
                    "### Per digit", "## Gate", "## Known weaknesses",
                    "## Intended use and limitations", "## How to load it"):
        assert f"\n{heading}\n" in card
    assert "f" * 64 in card and "0123abcd" in card and "manual__2026-11-21" in card
    assert "| learning_rate | 0.0010 |" in card
    assert "| runtime | backend=tensorflow, jit_compile=false |" in card
    assert "| note | a\\|b |" in card  # pipes escaped inside table cells
    for digit in range(10):
        assert f"\n| {digit} | " in card
    assert "| 9 | 0.9790 | 0.9000 | 0.9800 | 1000 |" in card
    assert "- 4 → 9: 17 images" in card
    assert "Lowest recall: digit 9 (0.9000), digit 8 (0.9100), digit 7 (0.9200)." in card
    assert "Decision: **PROMOTE** (champion at the time: v3)" in card
    assert 'keras.saving.load_model("mnist-classifier-v4/model.keras", safe_mode=True)' in card
    assert ("python -m mnist_tasks.registry --store s3://bucket/mnist --model-name "
            "mnist-classifier download 4 ./mnist-classifier-v4") in card
    assert "Accuracy 0.9781, loss 0.0712, on 10000 test images." in card


def test_card_with_missing_information() -> None:
    card = render(metadata={}, metrics=None)
    assert "No training parameters were recorded." in card
    assert "No per-digit evaluation was recorded." in card
    assert "Decision: **-** (no champion at the time)" in card
    assert "safe_mode=True" in card


def test_card_is_deterministic() -> None:
    assert render() == render()
