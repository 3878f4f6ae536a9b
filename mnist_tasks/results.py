"""What each stage returns: small frozen dataclasses, and their one JSON codec.

A result holds references (URIs) and a few numbers, never arrays, and the references the next
stages need, so the stages form a chain. :func:`to_json` makes the plain dict that XCom, the
command line and the run's records carry; :func:`from_json` rebuilds the typed result from it
(nested results, tuples, dicts, None), naming the field that is missing or of the wrong type::

    data = to_json(trained)                  # {"model_uri": ..., "runtime": {...}, ...}
    trained = from_json(TrainResult, data)   # equal to the original

Keys a result does not know are ignored, so a record written with more fields still reads.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")

Verdict = Literal["PROMOTE", "REJECT"]
PROMOTE: Literal["PROMOTE"] = "PROMOTE"
REJECT: Literal["REJECT"] = "REJECT"


class ResultError(ValueError):
    """A JSON value that is not the result it should be; names the field and what is wrong."""


# --- the codec ----------------------------------------------------------------------------------


def to_json(result: Any) -> dict[str, Any]:
    """The plain, JSON-ready dict of a result (a frozen dataclass), nested results included.

    Raises:
        TypeError: for a value that has no JSON form (an array, a NumPy scalar, a set).
    """
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        raise TypeError(f"{type(result).__name__} is not a result dataclass")
    return {f.name: _encode(getattr(result, f.name), f.name)
            for f in dataclasses.fields(result)}


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(value)
    if isinstance(value, tuple | list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise TypeError(f"{where}: {type(value).__name__} {value!r} has no JSON form")


def from_json(cls: type[T], data: Any) -> T:
    """The ``cls`` result that :func:`to_json` made ``data`` from.

    Raises:
        ResultError: ``data`` is not such a result: names the missing field, or the field whose
            value has the wrong type.
    """
    value: T = _decode(cls, data, cls.__name__)
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in args:
            return value
        raise ResultError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        problems = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _decode(arm, value, where)
            except ResultError as exc:
                problems.append(str(exc))
        raise ResultError("; ".join(problems) if len(problems) == 1 else
                          f"{where}: {value!r} fits none of {tp}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ResultError(f"{where}: expected an object, got {_kind(value)}")
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _decode(_hints(tp)[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ResultError(f"{where}: missing {f.name!r}")
        return tp(**kwargs)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ResultError(f"{where}: expected a list, got {_kind(value)}")
        items = args[:1] * len(value) if args[1:] == (...,) else args
        if len(items) != len(value):
            raise ResultError(f"{where}: expected {len(items)} items, got {len(value)}")
        return tuple(_decode(t, v, f"{where}[{i}]")
                     for i, (t, v) in enumerate(zip(items, value, strict=True)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ResultError(f"{where}: expected an object, got {_kind(value)}")
        return {_decode(args[0], k, where): _decode(args[1], v, f"{where}[{k!r}]")
                for k, v in value.items()}
    if tp in (int, float, str, bool):
        # JSON has one kind of number: an int is a float's value too; a bool is neither.
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
            return value
        raise ResultError(f"{where}: expected {tp.__name__}, got {_kind(value)}")
    raise TypeError(f"{where}: the codec has no rule for {tp!r}")


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


# --- ingest -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncrementRecord:
    """One increment of the dataset version, as ingest decided it (no arrays)."""

    id: str
    status: str  # ACCEPTED or QUARANTINED
    reasons: tuple[str, ...]
    counts: dict[str, int]
    drift: bool
    payload_sha256: str | None
    train: int  # images in its train part (0 when quarantined)
    fresh: int  # images held out as fresh data
    new: bool  # decided by this run
    uri: str | None = None  # its folder in the source (None: a source with no increments)


@dataclass(frozen=True)
class IgnoredIncrement:
    """A folder under ``increments/`` that is not (yet) an increment, and why."""

    id: str
    reason: str


@dataclass(frozen=True)
class IngestResult:
    """The cached base data set and the dataset version recorded for it."""

    dataset_uri: str  # the cached ``mnist.npz`` (uint8 x_train, y_train, x_test, y_test)
    dataset_key: str
    cached: bool
    source: str
    verification: str  # pinned, custom or off
    checksums: dict[str, str]  # file name -> payload SHA-256
    counts: dict[str, int]  # train, test
    image_shape: tuple[int, ...]
    data_sha256: str
    report_uri: str
    report_summary: dict[str, Any]  # the validation verdict and headline numbers
    seconds: float
    dataset_version: str
    dataset_manifest_uri: str
    increments: tuple[IncrementRecord, ...]  # accepted, then quarantined
    quarantined: tuple[str, ...]
    increments_new: tuple[str, ...]  # the ids this run checked
    increments_ignored: tuple[IgnoredIncrement, ...]
    # Decided increments whose files changed since: id plus added/removed/changed names.
    increments_changed: tuple[dict[str, Any], ...]
    increments_source: str | None  # None for the https mirrors
    # Where the base's files came from (on a cache hit, the files the cache was made from).
    base_files: tuple[str, ...] = ()


# --- check --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineageIncrement:
    """An accepted increment a model was trained with."""

    id: str
    payload_sha256: str | None
    train: int
    fresh: int
    drift: bool


@dataclass(frozen=True)
class QuarantinedIncrement:
    id: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Lineage:
    """Where a model's inputs came from; register records it in the version's metadata, and
    check compares a champion's ``inputs_key`` with the run's."""

    dataset_version: str
    inputs_key: str
    code_fingerprint: str
    increments: tuple[LineageIncrement, ...]
    quarantined: tuple[QuarantinedIncrement, ...]


@dataclass(frozen=True)
class ChampionFresh:
    """The champion on one new increment's fresh part, before any training."""

    n: int
    accuracy: float
    benchmark_accuracy: float | None
    drop: float | None  # benchmark - fresh accuracy
    flagged: bool  # a FRESH-DATA DROP


@dataclass(frozen=True)
class CheckResult:
    """TRAIN, or UNCHANGED when the champion was trained on exactly these inputs."""

    decision: Literal["TRAIN", "UNCHANGED"]
    covered_by: int | None  # the champion's version on UNCHANGED
    dataset_uri: str  # what preprocess reads
    dataset_version: str
    inputs_key: str
    champion_version: int | None
    champion_inputs_key: str | None
    champion_fresh: dict[str, ChampionFresh]  # increment id -> the champion's accuracy
    warnings: tuple[str, ...]  # FRESH-DATA DROP lines
    force: bool
    lineage: Lineage


# --- preprocess ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreprocessResult:
    """The prepared data; also its record, ``prepared.json`` beside ``prepared.npz``."""

    prepared_uri: str
    dataset_uri: str
    fingerprint: str  # the base arrays, the split and the dataset version
    data_sha256: str  # the base arrays'
    val_fraction: float
    seed: int
    n_train: int
    n_val: int
    n_test: int
    n_fresh: int
    n_increment_train: int
    dataset_version: str | None
    increments: tuple[str, ...]  # accepted increments whose train parts are in the pool
    fresh_increments: tuple[str, ...]  # the ids ``fresh_increment`` indexes
    image_shape: tuple[int, ...]
    lineage: Lineage | None  # from check; None when prepared without it
    dataset_manifest_uri: str | None = None  # the dataset version's manifest; None: unknown


# --- train and select ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainRuntime:
    """The effective training settings: the config resolved for the device."""

    device: str
    backend: str
    batch_size: int
    learning_rate: float
    jit_compile: bool
    mixed_precision: bool
    deterministic: bool


@dataclass(frozen=True)
class TrainResult:
    """A trained model; also its record, ``train/result.json``."""

    model_uri: str
    history_uri: str
    prepared_uri: str
    train_uri: str  # this result's record: what evaluate cites for register
    preset: str
    epochs_run: int
    fit_seconds: float
    checkpoint_seconds: float
    device: str
    resumed_from_epoch: int  # 0 when trained from scratch
    best_val_accuracy: float | None  # None without validation data
    best_epoch: int | None
    stopped_early: bool
    n_train: int
    n_val: int
    params: dict[str, Any]  # the training config, every field
    runtime: TrainRuntime
    candidate: int | None  # its index when the run trains several


@dataclass(frozen=True)
class CandidateRow:
    """One candidate of a run, trained or failed: the run's report table."""

    candidate: int
    label: str
    overrides: dict[str, Any]
    preset: str
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    status: str  # trained or failed
    val_accuracy: float | None
    val_loss: float | None
    fit_seconds: float | None
    epochs_run: int | None
    error: str | None
    chosen: bool


@dataclass(frozen=True)
class SelectionRule:
    metric: str
    tie_break: tuple[str, ...]
    min_candidates: int


@dataclass(frozen=True)
class SelectResult:
    """The candidate that goes on, by reference to its train record, and the whole table."""

    model_uri: str
    history_uri: str
    prepared_uri: str
    train_uri: str  # the chosen candidate's train record
    preset: str
    chosen_candidate: int
    candidates: tuple[CandidateRow, ...]
    selection: SelectionRule


# --- evaluate -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FreshIncrementMetrics:
    n: int
    accuracy: float | None


@dataclass(frozen=True)
class FreshDigitRecall:
    recall: float | None  # None for a digit with no fresh image
    support: int


@dataclass(frozen=True)
class FreshMetrics:
    """The model on the increments' held-out fresh parts."""

    n: int
    accuracy: float
    per_increment: dict[str, FreshIncrementMetrics]
    per_digit: dict[str, FreshDigitRecall]


@dataclass(frozen=True)
class EvaluateResult:
    """The model's metrics and predictions; also its record, ``evaluate/result.json``."""

    metrics_uri: str
    report_uri: str
    predictions_uri: str
    plots: dict[str, str]  # name -> URI
    test_accuracy: float  # on the benchmark (the MNIST test set)
    test_loss: float | None
    n_test: int
    fresh: FreshMetrics | None  # None without fresh data
    fresh_accuracy: float | None
    fresh_predictions_uri: str | None
    model_uri: str
    model_sha256: str
    prepared_uri: str
    history_uri: str | None
    train_uri: str | None  # the model's train record (None: a model from elsewhere)
    result_uri: str  # this result's record: what the gate's decision cites


# --- gate ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on paired predictions of the same images: ``b`` images only the champion
    gets right, ``c`` only the challenger."""

    b: int
    c: int
    p_value: float
    method: str
    significant: bool


@dataclass(frozen=True)
class Check:
    """One gate check: whether it passed (None: informational or skipped), on which images
    (``benchmark`` or ``fresh``; None when about neither), and the detail."""

    name: str
    passed: bool | None
    detail: str
    test_set: str | None = None

    def line(self) -> str:
        """E.g. ``champion FAIL: fresh: challenger 0.9100 vs champion v3 0.9500 ...``."""
        status = {True: "PASS", False: "FAIL", None: "INFO"}[self.passed]
        where = f"{self.test_set}: " if self.test_set else ""
        return f"{self.name} {status}: {where}{self.detail}"


@dataclass(frozen=True)
class RecallChange:
    """A digit's recall, challenger against champion; ``drop`` = champion - challenger."""

    challenger: float | None
    champion: float | None
    drop: float | None


@dataclass(frozen=True)
class FreshRecall:
    """A digit's recall on the fresh data; ``checked``: enough images of it to judge."""

    challenger: float | None
    champion: float | None
    drop: float | None
    support: int
    checked: bool


@dataclass(frozen=True)
class IncrementComparison:
    n: int
    challenger: float | None
    champion: float | None


@dataclass(frozen=True)
class FreshComparison:
    """The challenger (and the champion, if any) on the fresh data."""

    n: int
    challenger_accuracy: float
    champion_accuracy: float | None
    mcnemar: McNemar | None
    per_digit_recall: dict[str, FreshRecall]  # empty without a champion
    per_increment: dict[str, IncrementComparison]
    challenger_predictions_uri: str | None = None
    champion_predictions_uri: str | None = None


@dataclass(frozen=True)
class Challenger:
    accuracy: float  # on the benchmark
    loss: float | None
    run_key: str
    predictions_uri: str | None


@dataclass(frozen=True)
class ChampionRecord:
    """The champion the gate compared with: register moves the alias only from it."""

    version: int
    accuracy: float
    model_uri: str
    predictions_uri: str
    loss: float | None = None  # its registered test loss (the same benchmark); None: unknown


@dataclass(frozen=True)
class GateDecision:
    """PROMOTE or REJECT, and why: the gate's one record, ``gate/decision.json``."""

    decision: Verdict
    reasons: tuple[str, ...]  # one line per check
    checks: tuple[Check, ...]
    challenger: Challenger
    champion: ChampionRecord | None  # None: there was no champion
    mcnemar: McNemar | None  # on the benchmark
    per_digit_recall: dict[str, RecallChange]  # on the benchmark; empty without a champion
    fresh: FreshComparison | None  # None without fresh data
    config: dict[str, Any]  # the gate's thresholds
    decided_at: str
    decision_uri: str  # this record
    evaluation_uri: str  # the evaluation it judged
    prepared_uri: str

    @property
    def champion_version(self) -> int | None:
        return self.champion.version if self.champion else None

    @property
    def champion_accuracy(self) -> float | None:
        return self.champion.accuracy if self.champion else None

    @property
    def challenger_accuracy(self) -> float:
        return self.challenger.accuracy

    @property
    def significance(self) -> float:
        """McNemar's level the gate used."""
        return float(self.config.get("significance", 0.05))


# --- approve and register -----------------------------------------------------------------------


@dataclass(frozen=True)
class Approval:
    """The approval step's record: whether a person was asked, why, and their answer."""

    mode: str  # off, borderline or always
    asked: bool
    why: str
    answer: str | None = None  # Approve or Reject
    outcome: str | None = None  # approved, rejected, override, timed out, override refused
    override: bool = False
    by: str | None = None
    by_id: str | None = None
    at: str | None = None
    comment: str | None = None
    timed_out: bool = False
    note: str | None = None


@dataclass(frozen=True)
class ApproveResult:
    """The final decision after the approval step; the gate's decision by reference."""

    decision: Verdict  # final: what register does
    gate_decision: Verdict
    approval: Approval
    decision_uri: str  # the gate's decision.json


@dataclass(frozen=True)
class RegisterResult:
    """The registered version, and whether it is the champion now."""

    model_uri: str
    version: int
    test_accuracy: float | None
    champion: bool
    verified: bool
    registry_uri: str
    decision: Verdict
    previous_champion: int | None
    promotion_skipped: str | None  # why a PROMOTE did not move the champion
    trained_model_uri: str | None = None  # the run's model this version is a copy of
    dataset_version: str | None = None  # what the model was trained on


# --- score (the batch scoring DAG) --------------------------------------------------------------


@dataclass(frozen=True)
class ScorePlan:
    """The model version a scoring run is pinned to and its batches; also its record,
    ``scoring/<model>/runs/<run-key>/plan.json``."""

    model_version: int
    model_uri: str
    resolved_from: Literal["event", "champion"]  # a registry event's version, or the alias
    batches: tuple[str, ...]
    skipped: dict[str, str]  # batch -> why not scored
    run_key: str
    planned_at: str


@dataclass(frozen=True)
class ScoreShard:
    """One shard of a staged batch: what one mapped scoring task predicts."""

    batch: str
    version: int
    staging: str  # the batch's staging folder
    index: int
    start: int  # the shard's images: [start, stop) of the batch
    stop: int
    model_uri: str


@dataclass(frozen=True)
class ScorePrepared:
    """The staged batches, cut into shards, and those rejected (no readable image)."""

    shards: tuple[ScoreShard, ...]
    batches: tuple[str, ...]
    rejected: dict[str, str]  # batch -> why


@dataclass(frozen=True)
class ShardScored:
    batch: str
    index: int
    images: int
    score_s: float  # predict time (0 when an earlier try had scored it)


@dataclass(frozen=True)
class ScoreCommit:
    """What a scoring run committed, by batch; ``outputs``: each output's folder URI."""

    model_version: int
    committed: tuple[str, ...]
    unchanged: tuple[str, ...]  # already committed with this version
    rejected: dict[str, str]
    skipped: dict[str, str]  # from the plan
    images: int
    outputs: dict[str, str]
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)  # batch -> landing folder
    model_uri: str | None = None  # the version's model, as the plan pinned it
