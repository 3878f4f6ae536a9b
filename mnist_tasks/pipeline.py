"""The stages bound to one run: what each DAG task calls, and ``run-all`` chains in-process.

A :class:`Pipeline` holds the run's config, its store and its key. Each method runs one stage on
the previous stage's typed result (:mod:`mnist_tasks.results`) and returns its own; the
Pipeline is also the one writer of the run's ``summary.json``. Nothing here knows Airflow::

    pipe = Pipeline(pipeline_config({"store": "file:///tmp/s", "source": "/data/mnist"}),
                    run_id="manual__2026-11-21")
    checked = pipe.check(pipe.ingest())          # TRAIN, or UNCHANGED: stop
    trained = pipe.train(pipe.preprocess(checked))
    decision = pipe.gate(pipe.evaluate(trained))  # PROMOTE or REJECT
    registered = pipe.register(decision)          # on PROMOTE
    pipe.run_all()                                # all of it: {"decision": ..., "version": 1}
"""

from __future__ import annotations

import functools
import json
import logging
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_tasks.artifacts import utc_now
from mnist_tasks.config import PipelineConfig, run_key
from mnist_tasks.results import (
    PROMOTE,
    ApproveResult,
    CheckResult,
    EvaluateResult,
    GateDecision,
    IngestResult,
    PreprocessResult,
    RegisterResult,
    SelectResult,
    TrainResult,
    to_json,
)
from mnist_tasks.storage import ObjectNotFound, Store, open_store

if TYPE_CHECKING:
    from mnist_tasks.registry_api import ModelRegistry

log = logging.getLogger(__name__)


def code_version() -> str | None:
    """The git commit of the code that runs, when it runs from a checkout; else None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class Pipeline:
    """The stages of one run.

    Args:
        cfg: the validated run configuration.
        run_id: the Airflow run id (or any unique name for a CLI run); artifacts are keyed by it.
        dag_id: recorded in the registry metadata.
        s3_client_kwargs: boto3 client arguments (endpoint, credentials) handed in by the DAG
            from an Airflow connection; None means the standard AWS configuration.
        registry: the MLflow server whose registry the run reads and registers into
            (``Settings.registry``, ``MNIST_REGISTRY``); None: the store's.
        mlflow_tracking: the MLflow server evaluate mirrors the run to
            (``Settings.mlflow_tracking``, ``MNIST_MLFLOW_TRACKING_URI``); None: no mirror.
        airflow_run_url: the Airflow run's page, which the mirrored MLflow run links to.
    """

    def __init__(
        self,
        cfg: PipelineConfig,
        run_id: str,
        *,
        dag_id: str | None = None,
        s3_client_kwargs: Mapping[str, Any] | None = None,
        registry: str | None = None,
        mlflow_tracking: str | None = None,
        airflow_run_url: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry_location = registry
        self.mlflow_tracking = mlflow_tracking
        self.airflow_run_url = airflow_run_url
        self.run_id = run_id
        self.run_key = run_key(run_id)
        self.dag_id = dag_id
        self.s3_client_kwargs = dict(s3_client_kwargs) if s3_client_kwargs else None
        self.store: Store = open_store(cfg.store, client_kwargs=self.s3_client_kwargs)

    def registry(self) -> ModelRegistry:
        from mnist_tasks.registries import open_registry

        return open_registry(self.store, self.cfg.model_name, self.registry_location)

    def ingest(self) -> IngestResult:
        """Ingest the base data set and the increments; record the dataset version."""
        from mnist_tasks import ingest as stage
        from mnist_tasks.increments import IncrementPolicy

        return stage.ingest(
            self.cfg.ingest, self.store, s3_client_kwargs=self.s3_client_kwargs,
            policy=IncrementPolicy(fail_on_quarantine=self.cfg.ingest.fail_on_quarantine),
            run_id=self.run_id,
        )

    def check(self, ingested: IngestResult) -> CheckResult:
        """Decide UNCHANGED (the champion covers these inputs) or TRAIN; check the champion on
        the new increments' fresh data (see :func:`mnist_tasks.check.check`)."""
        from mnist_tasks import check as stage

        result = stage.check(
            ingested, preprocess=self.cfg.preprocess, train=self.cfg.train, store=self.store,
            registry=self.registry(), force=self.cfg.check.force,
            fresh_drop_margin=self.cfg.check.fresh_drop_margin,
        )
        fields: dict[str, Any] = dict(
            dataset_version=result.dataset_version, inputs_key=result.inputs_key,
            warnings=list(result.warnings),
            champion_fresh={k: to_json(v) for k, v in result.champion_fresh.items()},
            quarantined=[q.id for q in result.lineage.quarantined],
            preset=self.cfg.train.preset,
        )
        if result.decision == "UNCHANGED":
            fields.update(decision="UNCHANGED", covered_by=result.covered_by)
        self._update_summary(**fields)
        return result

    def preprocess(self, checked: CheckResult) -> PreprocessResult:
        """Prepare the checked data set version (base + accepted increments, fresh parts),
        recording the run's lineage with it.

        Raises:
            ValueError: if check decided UNCHANGED (there is nothing to prepare).
        """
        from mnist_tasks import preprocess as stage

        if checked.decision == "UNCHANGED":
            raise ValueError(f"check decided UNCHANGED (covered by champion "
                             f"v{checked.covered_by}): nothing to preprocess; trigger "
                             "with force=true to retrain")
        return stage.preprocess(
            checked.dataset_uri, self.cfg.preprocess, self.store, self.run_key,
            dataset_version=checked.dataset_version, lineage=checked.lineage,
        )

    def train(
        self,
        prepared: PreprocessResult,
        *,
        on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
        previous: Mapping[str, Any] | None = None,
        candidate: int | None = None,
    ) -> TrainResult:
        """Train; ``on_checkpoint`` / ``previous``: see :func:`mnist_tasks.train.train`;
        ``candidate``: which of the run's candidates (None: the run's own config)."""
        from mnist_tasks import train as stage

        cands = self.cfg.candidate_list
        return stage.train(
            prepared.prepared_uri, cands[candidate or 0].train, self.store, self.run_key,
            on_checkpoint=on_checkpoint, previous=previous,
            candidate=candidate if len(cands) > 1 else None,
        )

    def select(self, trained: Sequence[TrainResult]) -> SelectResult:
        """Pick the best trained candidate (see :func:`mnist_tasks.select.select`); the run's
        report lists every candidate."""
        from mnist_tasks import select as stage

        result = stage.select(
            trained, self.cfg.candidate_list, self.store, self.run_key,
            min_candidates=self.cfg.min_candidates,
        )
        self._update_summary(candidates=[to_json(row) for row in result.candidates],
                             chosen_candidate=result.chosen_candidate, preset=result.preset)
        return result

    def evaluate(self, trained: TrainResult | SelectResult) -> EvaluateResult:
        """Evaluate the trained model (the chosen candidate's, after select) on the data it
        was trained from."""
        from mnist_tasks import evaluate as stage

        result = stage.evaluate(
            trained.model_uri, trained.prepared_uri, self.store, self.run_key,
            history_uri=trained.history_uri, train_uri=trained.train_uri,
        )
        self._update_summary(test_accuracy=result.test_accuracy, preset=trained.preset)
        tracking = self.mlflow_tracking
        if tracking:  # the mirror never fails the task (tracking_mlflow)
            from mnist_tasks.artifacts import code_fingerprint
            from mnist_tasks.tracking_mlflow import mirror_evaluation

            mirrored = mirror_evaluation(
                tracking, self.store, result, model_name=self.cfg.model_name,
                run_key=self.run_key, run_id=self.run_id, dag_id=self.dag_id,
                code_fingerprint=code_fingerprint(), airflow_run_url=self.airflow_run_url,
                candidates=trained.candidates if isinstance(trained, SelectResult) else ())
            if mirrored:
                self._update_summary(mlflow_run_id=mirrored.run_id, mlflow_tracking=tracking,
                                     mlflow_experiment_id=mirrored.experiment_id,
                                     mlflow_run_url=mirrored.url)
        return result

    def gate(self, evaluation: EvaluateResult) -> GateDecision:
        """Decide PROMOTE or REJECT for the evaluated model (see :func:`mnist_tasks.gate.gate`)."""
        from mnist_tasks import gate as stage

        decision = stage.gate(evaluation, self.cfg.gate, self.registry(), self.store,
                              self.run_key)
        self._update_summary(test_accuracy=evaluation.test_accuracy,
                             decision=decision.decision, reasons=list(decision.reasons))
        return decision

    def record_approval(self, approved: ApproveResult) -> str:
        """Record a person's answer (see :func:`mnist_tasks.approve.record`) and the final
        decision in the run summary; returns the URI of ``approval.json``."""
        from mnist_tasks import approve

        uri = approve.record(self.store, self.run_id, approved)
        self._update_summary(decision=approved.decision, approval=to_json(approved.approval))
        return uri

    def register(self, decided: GateDecision | ApproveResult) -> RegisterResult:
        """Register the gated model (see :func:`mnist_tasks.register.register`).

        Args:
            decided: what :meth:`gate` returned, or the approval step's final decision.
        """
        from mnist_tasks import register as stage

        result = stage.register(
            decided, store=self.store, registry=self.registry(), run_key=self.run_key,
            dag_id=self.dag_id, run_id=self.run_id, code_version=code_version(),
        )
        self._update_summary(version=result.version, model_uri=result.model_uri,
                             champion=result.champion)
        return result

    def _update_summary(self, **fields: Any) -> None:
        """Merge ``fields`` into the run's ``summary.json``: what this run did, at a glance."""
        key = f"runs/{self.run_key}/summary.json"
        try:
            summary = json.loads(self.store.read_bytes(key))
        except ObjectNotFound:
            summary = {"run_id": self.run_id, "dag_id": self.dag_id}
        summary.update(fields, updated_at=utc_now())
        self.store.write_bytes(key, json.dumps(summary, indent=2).encode())

    def run_all(self) -> dict[str, Any]:
        """Run every stage in this process; stop after check on UNCHANGED; registration only
        when the gate says PROMOTE.

        Returns:
            ``run_id``, ``decision``, ``dataset_version``, ``inputs_key``, ``warnings``,
            ``seconds`` and per-stage ``timings``; on UNCHANGED (check found the champion
            trained on these inputs; nothing else runs) ``covered_by``, the champion's version;
            otherwise ``test_accuracy``, ``fresh_accuracy`` and on PROMOTE ``model_uri``,
            ``version`` and ``champion``.
        """
        timings: dict[str, float] = {}

        def timed(name: str, fn: Callable[..., Any], *args: Any) -> Any:
            start = time.perf_counter()
            log.info("== %s", name)
            out = fn(*args)
            timings[name] = round(time.perf_counter() - start, 3)
            return out

        start = time.perf_counter()
        checked: CheckResult = timed("check", self.check, timed("ingest", self.ingest))
        result: dict[str, Any] = {
            "run_id": self.run_id, "dataset_version": checked.dataset_version,
            "inputs_key": checked.inputs_key, "decision": checked.decision,
            "warnings": list(checked.warnings)}
        if checked.decision == "UNCHANGED":
            result["covered_by"] = checked.covered_by
            return {**result, "seconds": round(time.perf_counter() - start, 3),
                    "timings": timings}
        prepared = timed("preprocess", self.preprocess, checked)
        trained: TrainResult | SelectResult
        if len(self.cfg.candidate_list) == 1:
            trained = timed("train", self.train, prepared)
        else:  # one after the other here; the DAG trains them in parallel
            from mnist_tasks.select import record_failure

            results = []
            for cand in self.cfg.candidate_list:
                try:
                    results.append(timed(f"train[{cand.index}]", functools.partial(
                        self.train, candidate=cand.index), prepared))
                except Exception as exc:
                    log.error("candidate %d (%s) failed: %s", cand.index, cand.label, exc)
                    record_failure(self.store, self.run_key, cand, exc)
            trained = timed("select", self.select, results)
        evaluation: EvaluateResult = timed("evaluate", self.evaluate, trained)
        decision: GateDecision = timed("gate", self.gate, evaluation)
        result.update(decision=decision.decision, test_accuracy=evaluation.test_accuracy,
                      fresh_accuracy=evaluation.fresh_accuracy)
        if decision.decision == PROMOTE:
            registered: RegisterResult = timed("register", self.register, decision)
            result.update(model_uri=registered.model_uri, version=registered.version,
                          champion=registered.champion)
        else:
            log.warning("gate rejected the model; nothing registered: %s",
                        "; ".join(decision.reasons))
        result["seconds"] = round(time.perf_counter() - start, 3)
        result["timings"] = timings
        return result


def run_summary(store: Store, run_id: str | None = None) -> dict[str, Any]:
    """What a run did (decision, accuracy, version), for ``run_id`` or else the latest run.

    Raises:
        ObjectNotFound: if the run (or any run, for the latest) has no summary yet.
    """
    if run_id is not None:
        return dict(json.loads(store.read_bytes(f"runs/{run_key(run_id)}/summary.json")))
    summaries: list[dict[str, Any]] = []
    for name in store.list_children("runs"):
        try:
            summaries.append(json.loads(store.read_bytes(f"runs/{name}/summary.json")))
        except ObjectNotFound:
            continue
    if not summaries:
        raise ObjectNotFound(f"{store.uri_for('runs')}: no run has reached evaluation yet")
    latest: dict[str, Any] = max(summaries, key=lambda run: str(run.get("updated_at", "")))
    return latest


# The date in a run id (``scheduled__2026-11-21T00:00:00+00:00``, as a run key
# ``scheduled__2026-11-21T00_00_00_00_00-…``): what orders runs without reading them.
_RUN_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:T[\d_:.]+)?")


def recent_runs(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    """The summaries of the ``limit`` most recent runs, newest first: one listing of ``runs/``
    and at most ``limit`` reads, however many runs the store holds. Recent by the date in the
    run key (runs without one come last), then by the summary's ``updated_at``; a run without
    a summary (it stopped before check) is left out."""
    def date(name: str) -> str:
        found = _RUN_DATE.search(name)
        return found.group(0) if found else ""

    names = sorted(store.list_children("runs"), key=lambda n: (date(n), n), reverse=True)
    summaries = []
    for name in names[:max(0, limit)]:
        try:
            summary = json.loads(store.read_bytes(f"runs/{name}/summary.json"))
        except (ObjectNotFound, ValueError):
            continue
        if isinstance(summary, dict):
            summaries.append({**summary, "run_key": name})
    return sorted(summaries, key=lambda s: (date(s["run_key"]), str(s.get("updated_at", ""))),
                  reverse=True)
