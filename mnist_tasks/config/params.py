"""The trigger parameters: one definition for the DAG's form, the CLI's options and the ranges.

:data:`TRIGGER_PARAMS` (a :class:`ParamSpec` each: type, default, title, description, form
section, range or choices, the ``MNIST_*`` variable that sets its default) generates the
Airflow ``Param``s and the CLI options, and :func:`check_param` checks the stage configs'
fields against the same ranges. Candidates (several training configurations in one run) are
parsed and expanded here too (docs/candidates.md).

Usage::

    PARAM_SPECS["epochs"].json_schema()               # what the form shows
    check_param("epochs", 0)                          # ConfigError: parameter 'epochs' = 0 ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from mnist_tasks.config.checks import ConfigError, check, check_number
from mnist_tasks.config.environment import DEPLOYMENT_SETTINGS
from mnist_tasks.config.stages import (
    APPROVAL_MODES,
    DEFAULT_SOURCE,
    DEFAULT_STORE,
    PRESET_NAMES,
    PRESETS,
    ApprovalConfig,
    CheckConfig,
    GateConfig,
    IngestConfig,
    TrainConfig,
    train_config,
)


def check_param(name: str, value: Any, where: str | None = None) -> None:
    """Check ``value`` against the range of the trigger parameter ``name`` (one definition);
    the message names ``where`` (e.g. ``candidates[0].seed``), by default ``name``."""
    spec = PARAM_SPECS[name]
    assert spec.minimum is not None and spec.maximum is not None
    check_number(where or name, value, spec.minimum, spec.maximum,
                 integer=spec.type == "integer")


# -- Trigger parameters: the one definition the DAG's form, the CLI and the configs share ------

# Where the store may be, for the trigger form: s3://bucket[/prefix], file:///path or an
# absolute folder, never with a '..' segment (the lookahead; check_store_uri says why).
STORE_PATTERN = (
    r"^(?!(.*/)?\.\.(/|$))(s3://[a-z0-9][a-z0-9.-]+[a-z0-9](/.*)?|file:///.+|/.+)$"
)


@dataclass(frozen=True)
class ParamSpec:
    """One trigger parameter: a field of the DAG's trigger form and an option of the CLI.

    ``type`` is the JSON-schema type (``boolean``: a switch on the form); ``nullable``
    parameters accept ``None`` (empty in the form), which means "the preset's value". ``env``
    names the environment variable that an edge (the DAG, the CLI) uses as the default instead
    of ``default`` when it is set.
    """

    name: str
    type: Literal["string", "integer", "number", "boolean", "array"]
    default: Any
    title: str
    description: str
    group: Literal["data", "store", "training", "gating", "approval"]
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    min_length: int | None = None
    env: str | None = None
    # The whole JSON schema, for a structured value (``array``): used as it is.
    json_schema: Mapping[str, Any] | None = None

    def schema(self) -> dict[str, Any]:
        """The JSON schema of the value: what Airflow's ``Param`` validates a trigger against.

        The range sits under ``allOf``, not at the top: Airflow's trigger form gives a number
        field a top-level ``minimum``/``maximum`` as its bounds and silently clamps a value
        typed outside them (0 epochs would become 1). Under ``allOf`` the value stays as
        typed, and the trigger is refused, naming the parameter and its range.
        """
        if self.json_schema is not None:
            return json.loads(json.dumps(self.json_schema))  # a deep copy
        schema: dict[str, Any] = {"type": ["null", self.type] if self.nullable else self.type}
        for key, value in (("pattern", self.pattern), ("minLength", self.min_length)):
            if value is not None:
                schema[key] = value
        bounds = {key: value for key, value in (("minimum", self.minimum),
                                                ("maximum", self.maximum)) if value is not None}
        if bounds:
            schema["allOf"] = [bounds]
        if self.enum is not None:
            schema["enum"] = list(self.enum)
        return schema

    @property
    def section(self) -> str | None:
        """The trigger form's section of the parameter (None: the form's first, open one)."""
        return FORM_SECTIONS[self.group]

    @property
    def help(self) -> str:
        """The description, with the range when there is one: what the form shows."""
        if self.minimum is None or self.maximum is None:
            return self.description
        low, high = (f"{v:,}" if self.type == "integer" else f"{v:g}"
                     for v in (self.minimum, self.maximum))
        kind = "A whole number" if self.type == "integer" else "A number"
        return (f"{self.description} {kind} from {low} to {high}; another value is refused "
                "when you trigger, and the first task checks it again.")


# The trigger form's sections, by group: Airflow shows the parameters without a section first,
# in its open "Run Parameters" section, and each section below it, collapsed until opened.
FORM_SECTIONS: dict[str, str | None] = {
    "training": None, "gating": "Gate", "data": "Data and store", "store": "Data and store",
    "approval": "Approval",
}


def _preset_line(name: str) -> str:
    """``fast_mlp (6 epochs, batch 512, learning rate 0.005): tuned for CPU time``."""
    preset = PRESETS[name]
    return (f"{name} ({preset['epochs']} epochs, batch {preset['batch_size']}, learning rate "
            f"{preset['learning_rate']:g}): {preset['description']}")


_OVERRIDE = "Unset (empty): the preset's (listed under Training preset)."
TRIGGER_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "preset", "string", TrainConfig.preset, "Training preset",
        "; ".join(_preset_line(name) for name in PRESETS) + ".",
        "training", enum=PRESET_NAMES, env="MNIST_PRESET",
    ),
    ParamSpec("epochs", "integer", None, "Epochs",
              f"Overrides the preset's number of epochs. {_OVERRIDE}", "training",
              nullable=True, minimum=1, maximum=1000),
    ParamSpec("batch_size", "integer", None, "Batch size",
              f"Overrides the preset's batch size. {_OVERRIDE}", "training",
              nullable=True, minimum=1, maximum=65536),
    ParamSpec("learning_rate", "number", None, "Learning rate",
              f"Overrides the preset's (peak) learning rate. {_OVERRIDE}", "training",
              nullable=True, minimum=1e-6, maximum=1.0),
    ParamSpec("seed", "integer", TrainConfig.seed, "Seed",
              "Seeds the validation split, weight initialisation and shuffling.", "training",
              minimum=0, maximum=2**31 - 1),
    ParamSpec("force", "boolean", CheckConfig.force, "Retrain even if unchanged",
              "Retrain even when the champion was trained on exactly these inputs (dataset "
              "version, preprocessing, training config and code); off: such a run stops "
              "before training as UNCHANGED.", "training"),
    ParamSpec("min_accuracy", "number", GateConfig.min_accuracy, "Minimum test accuracy",
              "The gate rejects a model whose test accuracy is below this.", "gating",
              minimum=0.0, maximum=1.0),
    ParamSpec("champion_margin", "number", GateConfig.champion_margin, "Champion margin",
              "The gate rejects a model that is worse than the champion by more than this "
              "(absolute test accuracy).", "gating", minimum=0.0, maximum=1.0),
    ParamSpec("max_recall_drop", "number", GateConfig.max_recall_drop,
              "Max per-digit recall drop",
              "The gate rejects a model whose recall on any digit drops by more than this "
              "compared with the champion.", "gating", minimum=0.0, maximum=1.0),
    ParamSpec("fresh_drop_margin", "number", CheckConfig.fresh_drop_margin,
              "Fresh-data drop margin",
              "Before training, the champion is evaluated on each new increment's held-out "
              "part; a FRESH-DATA DROP warning is raised when its accuracy there is below its "
              "benchmark (test set) accuracy by more than this (absolute accuracy).", "gating",
              minimum=0.0, maximum=1.0),
    ParamSpec("source", "string", DEFAULT_SOURCE, "Data source",
              "Where the four MNIST IDX .gz files are: 'default' (the public mirrors), "
              "https:// prefix(es), s3://bucket/prefix, file:///path or a folder on the worker.",
              "data", min_length=1, env="MNIST_SOURCE"),
    ParamSpec("fail_on_quarantine", "boolean", IngestConfig.fail_on_quarantine,
              "Fail on a quarantined increment",
              "A quarantined increment (unreadable, bad labels, leaked test images, too few "
              "images) fails the run, naming it; off: a warning, and the run goes on without "
              "it.", "data"),
    ParamSpec("store", "string", DEFAULT_STORE, "Artifact store",
              "Where artifacts, cache and the model registry live: s3://bucket/prefix or "
              "file:///path (no '..' segments).", "store", pattern=STORE_PATTERN,
              env="MNIST_STORE"),
)

# -- Approval: a person's decision between the gate and register --------------------------------
TRIGGER_PARAMS += (
    ParamSpec("approval", "string", ApprovalConfig.mode, "Approval before promotion",
              "off: the gate decides alone. borderline: a person approves a promotion that "
              "is not clearly better than the champion (McNemar's test not significant, or any "
              "digit's recall drops). always: a person approves or rejects every gate decision, "
              "and may override a REJECT with a written reason. The request appears under "
              "Required actions; unanswered, it is rejected after the timeout.", "approval",
              enum=APPROVAL_MODES, env="MNIST_APPROVAL"),
    ParamSpec("approval_timeout_minutes", "number", ApprovalConfig.timeout_minutes,
              "Approval timeout (minutes)",
              "How long a request for approval waits for an answer; then it is rejected "
              "(nothing is promoted).", "approval", minimum=0.05, maximum=10080),
)

# -- Candidates (several training configurations in one run; docs/candidates.md) ----------------
# A run trains each candidate (the run's training parameters with the candidate's overrides),
# picks the best by validation accuracy (mnist_tasks.select) and sends only that one on to
# evaluate, gate and register. The default, one candidate without overrides, is a plain run.

CANDIDATE_FIELDS: tuple[str, ...] = ("preset", "seed", "learning_rate", "epochs", "batch_size")
MAX_CANDIDATES = 16


def _candidates_schema(specs: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """The trigger form's schema of ``candidates``: a list of objects whose fields are the
    overridable training parameters (each with its parameter's range), a value or a list of
    values (a sweep)."""
    fields: dict[str, Any] = {}
    for name in CANDIDATE_FIELDS:
        scalar = {**specs[name].schema(), "type": specs[name].type}
        fields[name] = {"anyOf": [scalar, {"type": "array", "items": scalar, "minItems": 1,
                                           "maxItems": MAX_CANDIDATES}]}
    item = {"type": "object", "properties": fields, "additionalProperties": False}
    return {"type": "array", "items": item, "minItems": 1, "maxItems": MAX_CANDIDATES}


TRIGGER_PARAMS += (
    ParamSpec(
        "candidates", "array", [{}], "Candidates",
        "Train several candidates and keep the best by validation accuracy: a JSON list of "
        f"overrides of {', '.join(CANDIDATE_FIELDS)} (unset: the run's). A list as a value is "
        'a sweep: [{"seed": [1, 2]}] is two candidates. Default [{}]: one candidate, the '
        f"run's parameters. At most {MAX_CANDIDATES}.", "training",
        json_schema=_candidates_schema({s.name: s for s in TRIGGER_PARAMS}),
    ),
    ParamSpec("min_candidates", "integer", 1, "Minimum trained candidates",
              "The run goes on while at least this many candidates trained; a failed "
              "candidate is logged, naming it and why.", "training",
              minimum=1, maximum=MAX_CANDIDATES),
)
PARAM_SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in TRIGGER_PARAMS}


@dataclass(frozen=True)
class Candidate:
    """One candidate of a run: its position, its overrides and the training config they give."""

    index: int
    overrides: Mapping[str, Any]  # the fields the candidate sets (after a sweep's expansion)
    train: TrainConfig

    @property
    def label(self) -> str:
        """``fast_mlp seed=2 learning_rate=0.005``: for logs, the report and the card."""
        sets = " ".join(f"{k}={v}" for k, v in self.overrides.items() if k != "preset")
        return self.train.preset + (f" {sets}" if sets else "")


def expand_candidates(value: Any) -> list[dict[str, Any]]:
    """The ``candidates`` trigger parameter as a list of override dicts, sweeps expanded.

    ``value`` is a list of objects (or one object: a list of one); a field given a list of
    values is a sweep: ``[{"seed": [1, 2], "learning_rate": [1e-3, 5e-3]}]`` is four
    candidates (the product, in the order of the fields, the last varying fastest). None or an
    empty list is one candidate without overrides.

    Raises:
        ConfigError: naming ``candidates[i].field`` (``i``: the position in ``value``) and the
            problem: an unknown field, a value out of the parameter's range, too many candidates.
    """
    import itertools

    if value is None or value == []:
        return [{}]
    items = [value] if isinstance(value, Mapping) else value
    check(isinstance(items, list), "candidates", value,
           "must be a list of objects, e.g. [{\"seed\": 1}, {\"learning_rate\": 0.005}]")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"candidates[{i}]"
        check(isinstance(item, Mapping), where, item,
               f"must be an object with some of {', '.join(CANDIDATE_FIELDS)}")
        axes: list[list[tuple[str, Any]]] = []
        for name, given in item.items():
            check(name in CANDIDATE_FIELDS, f"{where}.{name}", given,
                   f"is not a candidate field (one of {', '.join(CANDIDATE_FIELDS)})")
            values = given if isinstance(given, list) else [given]
            check(bool(values), f"{where}.{name}", given, "a sweep needs at least one value")
            for v in values:
                if name == "preset":
                    check(v in PRESETS, f"{where}.preset", v,
                           f"must be one of {', '.join(PRESET_NAMES)}")
                else:
                    check_param(name, v, f"{where}.{name}")
            axes.append([(name, v) for v in values])
        for combo in itertools.product(*axes):
            out.append(dict(combo))
            check(len(out) <= MAX_CANDIDATES, "candidates", f"{len(out)}+ candidates",
                   f"at most {MAX_CANDIDATES} candidates (count a sweep's product)")
    return out


def build_candidates(value: Any, run_values: Mapping[str, Any], val_fraction: float
                     ) -> tuple[Candidate, ...]:
    """The run's candidates: each is the run's training parameters (``run_values``: preset and
    the overrides given, None for unset) with the candidate's overrides applied.

    All candidates share the run's validation split (``val_fraction`` and the run's ``seed``
    made it, in preprocess): a candidate's ``seed`` seeds its weights and shuffling only, so
    every candidate is measured on the same validation images.

    Raises:
        ConfigError: naming ``candidates[i]...`` and the problem.
    """
    out = []
    for index, overrides in enumerate(expand_candidates(value)):
        values = {**{k: v for k, v in run_values.items() if v is not None}, **overrides}
        preset = values.pop("preset", TrainConfig.preset)
        try:
            cfg = train_config(preset, **values, val_fraction=val_fraction)
        except ConfigError as exc:
            raise ConfigError(f"candidate {index} ({overrides}): {exc}") from None
        out.append(Candidate(index, dict(overrides), cfg))
    return tuple(out)


def check_trigger_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The trigger's values, refusing every key that is not a field of the trigger form.

    Airflow merges a run's ``conf`` into its params without checking the keys, so this is
    where ``{"checksums": "off"}`` in a trigger is caught.

    Raises:
        ConfigError: naming all the unknown keys (and the variable of a deployment setting).
    """
    unknown = sorted(k for k in params if k not in PARAM_SPECS)
    if unknown:
        envs = {s.name: s.env for s in DEPLOYMENT_SETTINGS}
        fixed = [f"{k} is set by the deployment ({envs[k]})" for k in unknown if k in envs]
        raise ConfigError(
            f"unknown trigger parameter(s) {', '.join(map(repr, unknown))}: a trigger may set "
            f"only {', '.join(PARAM_SPECS)}" + (f"; {'; '.join(fixed)}" if fixed else "")
        )
    return dict(params)


def check_store_uri(store: Any, param: str = "store") -> None:
    """Check a store URI: s3://bucket[/prefix], file:///path or a folder, without '..' segments.

    A '..' would let a trigger point the store outside the tree it names
    (``file:///data/../../etc/x``); it is refused rather than normalised, so the store a run
    used is exactly the one written in its params. The same check guards every other place
    a command takes (a landing prefix, a data source: ``param`` names it in the message).

    Raises:
        ConfigError: naming ``param`` and the problem.
    """
    check(isinstance(store, str) and bool(store.strip()), param, store,
           "must be a URI: s3://bucket/prefix, file:///path or a folder")
    parsed = urlparse(store)
    path = parsed.path if parsed.scheme in ("s3", "file") else store
    for candidate in (path, unquote(path)):
        check(".." not in candidate.replace("\\", "/").split("/"), param, store,
               "must not contain '..' path segments: give the path without them")


def cli_location(value: str, param: str) -> str:
    """A store, landing prefix or data source given on a command line, checked: a relative
    folder is taken from the current directory (made absolute, as a shell user means it), and
    the result goes through :func:`check_store_uri` (no '..' segment, also percent-encoded).

    Returns:
        The value to use: ``value``, or the absolute folder for a relative one.

    Raises:
        ConfigError: naming ``param`` and the problem.
    """
    if isinstance(value, str) and value.strip() and "://" not in value \
            and value != DEFAULT_SOURCE and not os.path.isabs(value):
        value = os.path.abspath(value)
    check_store_uri(value, param)
    return value
