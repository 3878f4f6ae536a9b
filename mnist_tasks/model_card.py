"""The Markdown model card stored with every registered version (``model_card.md``).

It says what the model is, what data and recipe made it, how well it does (per digit), where it
is weak, what it is for and not for, and how to load it. Rendering is a pure function of the
version's metadata and evaluation metrics, so a retried registration writes the same card.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

INTENDED_USE = (
    "Classifying single handwritten digits (0-9) in 28×28 grayscale images, centred and "
    "size-normalised the way MNIST is, with white strokes on a black background and pixel "
    "values scaled to [0, 1]. Suited to teaching, demos and as a baseline for this pipeline."
)

LIMITATIONS = (
    "Accuracy was measured on the MNIST test set only (American census staff and students, "
    "1990s); other handwriting, scanners or preprocessing will do worse.",
    "Images that are not centred, inverted (dark on light), rotated, multi-digit or not digits "
    "at all still get one of ten labels: there is no reject option.",
    "The softmax scores are not calibrated probabilities; do not threshold them as confidence "
    "without checking calibration first.",
    "Not for decisions with legal, financial or safety consequences (e.g. reading cheques or "
    "forms) without human review.",
)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt(v, digits)}" for k, v in value.items())
    return str(value)


def _cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _text(value: Any) -> str:
    """Text from the data (ids, reasons naming files) shown as itself: one line, Markdown's
    punctuation escaped so that a file name cannot turn into emphasis, a link or a table."""
    return _MD_PUNCT.sub(r"\\\g<0>", " ".join(str(value).split()))


_MD_PUNCT = re.compile(r"[\\`*_{}\[\]()<>#+!|~]")


def _code(value: Any) -> str:
    """A code span of one line (no backslash escapes work inside one, so no backticks)."""
    if value is None or value == "":
        return "-"
    return "`" + " ".join(str(value).replace("`", "'").split()) + "`"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _accuracy(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return None


def lineage_summary(
    metadata: Mapping[str, Any], metrics: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """What data a version was made from, and how it did on the fresh data, from its metadata.

    Shared by the model card and the Models page, so both say the same. Tolerant of what an
    older or partial record holds: missing parts come back as None or empty.

    Args:
        metadata: the version metadata; ``lineage`` (``dataset_version``, ``inputs_key``,
            ``code_fingerprint``, ``increments``: dicts with ``id``, ``payload_sha256``,
            ``train``/``fresh`` counts (or a ``counts`` dict holding them) and ``drift`` (the
            increment was accepted with a drift warning), ``quarantined``:
            dicts with ``id`` and ``reasons`` (or bare ids)) and ``gate.fresh`` (the gate's
            ``fresh``: ``n``, ``challenger_accuracy``, ``champion_accuracy``,
            ``per_increment``).
        metrics: evaluate's ``metrics.json``; its ``fresh.per_increment`` fills in this
            model's per-increment accuracy when the gate's record lacks it.

    Returns:
        None without ``lineage``; else ``dataset_version``, ``inputs_key``,
        ``code_fingerprint``, ``increments`` (``id``, ``payload_sha256``, ``train``,
        ``fresh``, ``accuracy`` and ``champion_accuracy`` on its fresh part, ``drift``: bool
        or None when not recorded), ``quarantined``
        (``id``, ``reasons``), ``fresh`` (``n``, ``accuracy``, ``champion_accuracy``,
        ``champion_version``; None without fresh data).
    """
    lineage = metadata.get("lineage")
    if not isinstance(lineage, Mapping):
        return None
    gate = _mapping(metadata.get("gate"))
    gate_fresh = _mapping(gate.get("fresh"))
    by_gate = _mapping(gate_fresh.get("per_increment"))
    metrics_fresh = _mapping((metrics or {}).get("fresh"))
    by_eval = _mapping(metrics_fresh.get("per_increment"))

    increments = []
    for entry in lineage.get("increments") or []:
        if not isinstance(entry, Mapping):
            entry = {"id": entry}
        counts = _mapping(entry.get("counts"))
        inc_id = str(entry.get("id"))
        scores, evaluated = _mapping(by_gate.get(inc_id)), _mapping(by_eval.get(inc_id))
        increments.append({
            "id": inc_id,
            "payload_sha256": entry.get("payload_sha256"),
            "train": _number(entry.get("train", counts.get("train"))),
            "fresh": _number(entry.get("fresh", counts.get("fresh"))),
            "accuracy": _accuracy(scores.get("challenger", evaluated.get("accuracy"))),
            "champion_accuracy": _accuracy(scores.get("champion")),
            "drift": entry["drift"] if isinstance(entry.get("drift"), bool) else None,
        })
    quarantined = []
    for entry in lineage.get("quarantined") or []:
        if not isinstance(entry, Mapping):
            entry = {"id": entry}
        reasons = entry.get("reasons") or []
        quarantined.append({"id": str(entry.get("id")),
                            "reasons": [str(r) for r in reasons] if isinstance(reasons, list)
                            else [str(reasons)]})
    fresh = None
    if gate_fresh:
        fresh = {"n": _number(gate_fresh.get("n")),
                 "accuracy": _accuracy(gate_fresh.get("challenger_accuracy")),
                 "champion_accuracy": _accuracy(gate_fresh.get("champion_accuracy")),
                 "champion_version": gate.get("champion_version")}
    elif metrics_fresh:
        fresh = {"n": _number(metrics_fresh.get("n")),
                 "accuracy": _accuracy(metrics_fresh.get("accuracy")),
                 "champion_accuracy": None, "champion_version": None}
    return {
        "dataset_version": lineage.get("dataset_version"),
        "inputs_key": lineage.get("inputs_key"),
        "code_fingerprint": lineage.get("code_fingerprint"),
        "increments": increments,
        "quarantined": quarantined,
        "fresh": fresh,
    }


def _lineage_section(summary: Mapping[str, Any]) -> list[str]:
    out = ["", "### Lineage", ""]
    out += _table(["", ""], [
        ["Dataset version", _code(summary["dataset_version"])],
        ["Inputs key (data, preprocessing, training, code)", _code(summary["inputs_key"])],
        ["Code fingerprint", _code(summary["code_fingerprint"])],
    ])
    fresh = summary["fresh"]
    increments = summary["increments"]
    out += ["", "### Increments", ""]
    if increments:
        out.append("Labeled data added to the base MNIST training set. A seeded part of each "
                   "(the fresh images) is held out: never trained on, it shows how the model "
                   "does on recent handwriting.")
        out.append("")
        out += _table(
            ["increment", "train images", "fresh images", "fresh accuracy",
             "champion's fresh accuracy", "drift flagged", "payload SHA-256"],
            [[_text(i["id"]), i["train"], i["fresh"], i["accuracy"], i["champion_accuracy"],
              {True: "yes", False: "no", None: "-"}[i["drift"]], _code(i["payload_sha256"])]
             for i in increments])
    else:
        out.append("None: the base MNIST training set only.")
    if fresh is not None:
        champion = fresh["champion_version"]
        against = (f"; the champion at the time (v{champion}): {_fmt(fresh['champion_accuracy'])}"
                   if champion is not None and fresh["champion_accuracy"] is not None
                   else "; there was no champion to compare with")
        out += ["", f"Fresh-data accuracy: {_fmt(fresh['accuracy'])} on {_fmt(fresh['n'])} "
                    f"images{against}."]
    out += ["", "### Quarantined increments", ""]
    if summary["quarantined"]:
        out.append("Not used (their files were left in place):")
        out.append("")
        out += [f"- {_text(q['id'])}: {_text('; '.join(q['reasons']) or 'no reason recorded')}"
                for q in summary["quarantined"]]
    else:
        out.append("None.")
    return out


def _free(value: Any) -> str:
    """Free text (a comment) for a table cell: one line, escaped, no '|' (a column break)."""
    return _text(str(value).replace("|", "/"))


def approval_line(approval: Any) -> str:
    """``OVERRIDE of the gate's REJECT by alice at ...``, ``approved by bob at ...``, or
    ``not asked (...)``: one line for the card's summary table."""
    record = _mapping(approval)
    if not record:
        return "-"
    if not record.get("asked"):
        return f"not asked ({_free(record.get('why') or record.get('mode') or '-')})"
    outcome = ("OVERRIDE of the gate's REJECT" if record.get("override")
               else str(record.get("outcome") or "-"))
    by = record.get("by") or ("no one (timeout)" if record.get("timed_out") else "-")
    return f"{outcome} by {_free(by)} at {_free(record.get('at') or '-')}"


def _approval_section(approval: Any) -> list[str]:
    """Who approved (or overrode) the promotion, when and why; nothing without a record."""
    record = _mapping(approval)
    if not record:
        return []
    out = ["", "## Approval", ""]
    if not record.get("asked"):
        out.append(f"No one was asked (approval mode {_code(record.get('mode'))}): "
                   f"{_free(record.get('why') or '-')}.")
        return out
    if record.get("override"):
        out += ["**Override**: the gate REJECTED this model; a person promoted it anyway, with "
                "the reason below.", ""]
    out += _table(["", ""], [
        ["Outcome", "OVERRIDE" if record.get("override") else record.get("outcome")],
        ["Answer", record.get("answer")],
        ["By", f"{_free(record.get('by') or '-')}"
               + (f" (id {_free(record['by_id'])})" if record.get("by_id") else "")],
        ["At (UTC)", record.get("at")],
        ["Reason" if record.get("override") else "Comment", _free(record.get("comment") or "-")],
        ["Asked because", _free(record.get("why") or "-")],
        ["Mode", record.get("mode")],
    ])
    return out


def _candidates_section(metadata: Mapping[str, Any]) -> list[str]:
    """The run's candidates (docs/candidates.md), when it trained several: each with its
    validation metrics and training time; the chosen one went on to the test set."""
    rows = metadata.get("candidates") or []
    if len(rows) < 2:
        return []
    out = ["", "## Candidates", "",
           f"This run trained {len(rows)} candidates and kept the best by validation accuracy "
           "(never test accuracy: the test set judges the chosen one only; ties go to the "
           "lower validation loss, then the lower index).", ""]
    out += _table(["#", "candidate", "status", "val accuracy", "val loss", "training (s)",
                   "epochs", "chosen"], [
        [r.get("candidate"), r.get("label"), r.get("status"), _accuracy(r.get("val_accuracy")),
         r.get("val_loss"), r.get("fit_seconds"), r.get("epochs_run"),
         "yes" if r.get("chosen") else ""]
        for r in rows if isinstance(r, Mapping)])
    failed = [r for r in rows if isinstance(r, Mapping) and r.get("status") == "failed"]
    if failed:
        out += ["", "Failed candidates:", ""]
        out += [f"- {_text(r.get('candidate'))} ({_text(r.get('label'))}): {_code(r.get('error'))}"
                for r in failed]
    return out


def _digit_sort_key(item: tuple[str, Any]) -> tuple[int, str]:
    key = item[0]
    return (int(key), key) if str(key).isdigit() else (10**6, str(key))


def render_model_card(
    *,
    model_name: str,
    version: int,
    created_at: str,
    model_uri: str,
    store_uri: str,
    metadata: Mapping[str, Any],
    metrics: Mapping[str, Any] | None,
) -> str:
    """The model card as Markdown.

    Args:
        model_name, version, created_at, model_uri: identify the registered version.
        store_uri: the store the registry lives in (for the download command).
        metadata: the version metadata (``run``, ``code_version``, ``packages``, ``dataset``,
            ``parameters``, ``training``, ``metrics``, ``gate``, ``lineage``: see
            :func:`lineage_summary`; ``candidates``: the run's, when it had several); missing
            parts are shown as -.
        metrics: evaluate's ``metrics.json`` (``per_digit``, ``macro_avg``,
            ``most_confused_pairs``...), or None.

    Returns:
        The Markdown text.
    """
    metrics = metrics or {}
    run = metadata.get("run") or {}
    dataset = metadata.get("dataset") or {}
    gate = metadata.get("gate") or {}
    summary = metadata.get("metrics") or {}
    accuracy = metrics.get("test_accuracy", summary.get("test_accuracy"))
    loss = metrics.get("test_loss", summary.get("test_loss"))
    lineage = lineage_summary(metadata, metrics)
    fresh = (lineage or {}).get("fresh") or {}

    out = [f"# Model card: {model_name} v{version}", ""]
    out += _table(["", ""], [
        ["Model", f"{model_name}, version {version}"],
        ["Created (UTC)", created_at],
        ["Test accuracy", _fmt(accuracy)],
        *([["Fresh-data accuracy", f"{_fmt(fresh.get('accuracy'))} on "
                                   f"{_fmt(fresh.get('n'))} images"]] if fresh else []),
        *([["Dataset version", _code(lineage["dataset_version"])]] if lineage else []),
        ["Gate decision", gate.get("decision")],
        *([["Approval", approval_line(metadata.get("approval"))]]
          if _mapping(metadata.get("approval")).get("asked") else []),
        ["Run", f"{run.get('dag_id') or '-'} / {run.get('run_id') or '-'}"],
        ["Run key", metadata.get("run_key")],
        ["Code version", metadata.get("code_version")],
        ["Model file", f"`{model_uri}`"],
    ])

    out += ["", "## Data", ""]
    out += _table(["", ""], [
        ["Fingerprint (data + preprocessing)", f"`{dataset.get('fingerprint') or '-'}`"],
        ["Raw data SHA-256", f"`{dataset.get('data_sha256') or '-'}`"],
        ["Images: train / validation / test",
         f"{_fmt(dataset.get('n_train'))} / {_fmt(dataset.get('n_val'))} / "
         f"{_fmt(dataset.get('n_test'))}"],
        ["Preprocessing", "pixels scaled to float32 in [0, 1]; seeded validation split "
                          f"(fraction {_fmt(dataset.get('val_fraction'))}, "
                          f"seed {_fmt(dataset.get('seed'))})"],
        ["Source", dataset.get("dataset_uri")],
    ])
    if lineage is not None:
        out += _lineage_section(lineage)

    params = metadata.get("parameters") or {}
    training = metadata.get("training") or {}
    out += ["", "## Recipe and parameters", ""]
    if params:
        out += _table(["parameter", "value"], sorted(params.items()))
    else:
        out.append("No training parameters were recorded.")
    if training:
        out += ["", "Training run:", ""]
        out += _table(["", ""], sorted(training.items()))
    packages = metadata.get("packages") or {}
    if packages:
        versions = ", ".join(f"{k} {v or '-'}" for k, v in sorted(packages.items()))
        out += ["", f"Software: {versions}"]

    out += _candidates_section(metadata)

    out += ["", "## Metrics (test set)", ""]
    out.append(f"Accuracy {_fmt(accuracy)}, loss {_fmt(loss)}, on {_fmt(metrics.get('n_test'))} "
               "test images.")
    for name in ("macro_avg", "weighted_avg"):
        avg = metrics.get(name)
        if isinstance(avg, Mapping):
            out.append(f"{name.replace('_', ' ').capitalize()}: precision "
                       f"{_fmt(avg.get('precision'))}, recall {_fmt(avg.get('recall'))}, "
                       f"F1 {_fmt(avg.get('f1'))}.")
    per_digit = metrics.get("per_digit") or {}
    if per_digit:
        out += ["", "### Per digit", ""]
        out += _table(["digit", "precision", "recall", "F1", "support"], [
            [digit, m.get("precision"), m.get("recall"), m.get("f1"), m.get("support")]
            for digit, m in sorted(per_digit.items(), key=_digit_sort_key)
        ])

    out += ["", "## Gate", ""]
    out.append(f"Decision: **{gate.get('decision') or '-'}**" + (
        f" (champion at the time: v{gate['champion_version']})"
        if gate.get("champion_version") else " (no champion at the time)"))
    out += [f"- {reason}" for reason in gate.get("reasons") or []]

    out += _approval_section(metadata.get("approval"))

    out += ["", "## Known weaknesses", ""]
    pairs = metrics.get("most_confused_pairs") or []
    if pairs:
        out.append("Most frequent confusions on the test set (true → predicted):")
        out.append("")
        out += [f"- {p.get('true')} → {p.get('predicted')}: {p.get('count')} images"
                for p in pairs[:5]]
    weakest = sorted(
        ((d, m.get("recall")) for d, m in per_digit.items()
         if isinstance(m.get("recall"), int | float)),
        key=lambda item: item[1],
    )[:3]
    if weakest:
        out += ["", "Lowest recall: " + ", ".join(f"digit {d} ({_fmt(r)})" for d, r in weakest)
                + "."]
    if not pairs and not weakest:
        out.append("No per-digit evaluation was recorded.")

    out += ["", "## Intended use and limitations", "", INTENDED_USE, ""]
    out += [f"- {item}" for item in LIMITATIONS]

    out += [
        "", "## How to load it", "",
        "Download the version (files are checked against their SHA-256 in the manifest):", "",
        "```bash",
        f"python -m mnist_tasks.registry --store {store_uri} --model-name {model_name} "
        f"download {version} ./{model_name}-v{version}",
        "```", "",
        "Then load it with Keras in safe mode and classify images:", "",
        "```python",
        "import keras",
        "import numpy as np",
        "",
        f'model = keras.saving.load_model("{model_name}-v{version}/model.keras", safe_mode=True)',
        "x = images.astype(np.float32) / 255.0  # uint8 array of shape (N, 28, 28)",
        "digits = model.predict(x).argmax(axis=1)",
        "```", "",
    ]
    return "\n".join(out)
