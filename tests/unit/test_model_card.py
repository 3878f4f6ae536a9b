"""The Markdown model card."""

from __future__ import annotations

from typing import Any

from mnist_tasks.model_card import lineage_summary, render_model_card

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


# ---------------------------------------------------------------------------- data lineage

LINEAGE: dict[str, Any] = {
    "dataset_version": "ds-3f2a9c01",
    "inputs_key": "0123456789abcdef",
    "code_fingerprint": "c" * 64,
    "increments": [
        {"id": "2026-11-20", "payload_sha256": "a" * 64, "train": 4000, "fresh": 1000,
         "drift": True},
        {"id": "inc_002", "payload_sha256": "b" * 64, "counts": {"train": 400, "fresh": 100}},
    ],
    "quarantined": [
        {"id": "bad-gzip", "reasons": ["bad-gzip/images-idx3-ubyte.gz: truncated gzip"]},
        {"id": "evil", "reasons": ["<script>alert(1)</script> [x](javascript:alert(1))"]},
        "no-reasons",
    ],
}
GATE_FRESH: dict[str, Any] = {
    "n": 1100, "challenger_accuracy": 0.961, "champion_accuracy": 0.95,
    "mcnemar": {"b": 3, "c": 15, "p_value": 0.008, "method": "exact binomial",
                "significant": True},
    "per_digit_recall": {},
    "per_increment": {"2026-11-20": {"n": 1000, "challenger": 0.962, "champion": 0.951},
                      "inc_002": {"n": 100, "challenger": 0.95, "champion": 0.94}},
}


def with_lineage(gate_fresh: dict[str, Any] | None = GATE_FRESH) -> dict[str, Any]:
    return {**METADATA, "lineage": LINEAGE,
            "gate": {**METADATA["gate"], "fresh": gate_fresh}}


def test_card_shows_the_data_lineage_and_fresh_accuracy() -> None:
    card = render(with_lineage())
    data = card[card.index("\n## Data\n"):card.index("\n## Recipe and parameters\n")]
    for heading in ("### Lineage", "### Increments", "### Quarantined increments"):
        assert f"\n{heading}\n" in data
    assert "| Dataset version | `ds-3f2a9c01` |" in data
    assert "| Inputs key (data, preprocessing, training, code) | `0123456789abcdef` |" in data
    assert f"| Code fingerprint | `{'c' * 64}` |" in data
    assert f"| 2026-11-20 | 4000 | 1000 | 0.9620 | 0.9510 | yes | `{'a' * 64}` |" in data
    # the id's underscore escaped (no emphasis); counts from a "counts" dict too
    assert f"| inc\\_002 | 400 | 100 | 0.9500 | 0.9400 | - | `{'b' * 64}` |" in data
    assert ("Fresh-data accuracy: 0.9610 on 1100 images; the champion at the time (v3): "
            "0.9500.") in data
    assert "- bad-gzip: bad-gzip/images-idx3-ubyte.gz: truncated gzip" in data
    assert "- no-reasons: no reason recorded" in data
    # Reasons come from uploaded files: shown as text, never as markup or a link.
    evil = next(line for line in data.splitlines() if line.startswith("- evil:"))
    assert "<script>" not in evil and "](" not in evil and "\\<script\\>" in evil
    # the summary table at the top
    assert "| Fresh-data accuracy | 0.9610 on 1100 images |" in card
    assert "| Dataset version | `ds-3f2a9c01` |" in card.split("## Data")[0]


def test_card_lineage_without_fresh_data_champion_or_increments() -> None:
    base_only = {**METADATA, "lineage": {"dataset_version": "ds-base", "increments": [],
                                         "quarantined": [], "inputs_key": "k",
                                         "code_fingerprint": "f"},
                 "gate": {"decision": "PROMOTE", "champion_version": None, "fresh": None}}
    card = render(base_only)
    assert "None: the base MNIST training set only." in card
    assert "### Quarantined increments\n\nNone." in card
    assert "Fresh-data accuracy" not in card
    first = render({**METADATA, "lineage": LINEAGE,
                    "gate": {"decision": "PROMOTE", "champion_version": None,
                             "fresh": {**GATE_FRESH, "champion_accuracy": None}}})
    assert ("Fresh-data accuracy: 0.9610 on 1100 images; there was no champion to compare "
            "with.") in first


def test_card_without_lineage_has_no_lineage_sections() -> None:
    card = render()
    assert "### Lineage" not in card and "### Increments" not in card
    assert "Fresh-data accuracy" not in card and "Dataset version" not in card


def test_lineage_summary_is_what_the_models_page_shows() -> None:
    summary = lineage_summary(with_lineage())
    assert summary is not None
    assert summary["dataset_version"] == "ds-3f2a9c01"
    assert summary["increments"][1] == {"id": "inc_002", "payload_sha256": "b" * 64,
                                        "train": 400, "fresh": 100, "accuracy": 0.95,
                                        "champion_accuracy": 0.94, "drift": None}
    assert summary["quarantined"][2] == {"id": "no-reasons", "reasons": []}
    assert summary["fresh"] == {"n": 1100, "accuracy": 0.961, "champion_accuracy": 0.95,
                                "champion_version": 3}
    assert lineage_summary(METADATA) is None
    # Without the gate's record, this model's fresh accuracy comes from metrics.json.
    metrics = {"fresh": {"n": 1100, "accuracy": 0.9, "per_increment": {
        "2026-11-20": {"n": 1000, "accuracy": 0.91}}}}
    from_metrics = lineage_summary({"lineage": LINEAGE}, metrics)
    assert from_metrics is not None
    assert from_metrics["fresh"] == {"n": 1100, "accuracy": 0.9, "champion_accuracy": None,
                                     "champion_version": None}
    assert from_metrics["increments"][0]["accuracy"] == 0.91
    # Malformed parts are shown as missing, not trusted.
    odd = lineage_summary({"lineage": {"increments": [{"id": "x", "train": "many",
                                                       "counts": [1]}],
                                       "quarantined": [{"id": "q", "reasons": "one"}]},
                           "gate": "PROMOTE"})
    assert odd is not None
    assert odd["increments"][0]["train"] is None and odd["quarantined"][0]["reasons"] == ["one"]
    assert summary["increments"][0]["drift"] is True
    assert odd["fresh"] is None
