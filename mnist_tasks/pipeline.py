"""The seven stages bound to one run: what each DAG task calls, and ``run-all`` chains in-process.

A :class:`Pipeline` holds a validated :class:`~mnist_tasks.config.PipelineConfig`, the opened
store and the run's key. Each method runs one stage, takes only the previous stage's result,
and returns a small dict (references and a few numbers, never arrays) that carries what the
later stages need, so the stages form a chain; nothing here knows about Airflow::

    ingested   = pipe.ingest()               # + dataset_version, increments, quarantined
    checked    = pipe.check(ingested)        # decision UNCHANGED (stop) or TRAIN; + lineage
    prepared   = pipe.preprocess(checked)
    trained    = pipe.train(prepared)        # + prepared_uri
    evaluation = pipe.evaluate(trained)      # + prepared_uri, trained
    decision   = pipe.gate(evaluation)       # + prepared_uri, evaluation (holds trained)
    registered = pipe.register(decision)     # only on PROMOTE

From check on, every result also carries :data:`CARRIED`: ``lineage`` (``dataset_version``,
``inputs_key``, ``code_fingerprint``, ``increments``, ``quarantined``), ``warnings`` (e.g. a
FRESH-DATA DROP), ``dataset_version``, ``inputs_key`` and ``increments``, so register finds
them in ``decision["lineage"]``.

Usage::

    pipe = Pipeline(pipeline_config({"store": "file:///tmp/store", "source": "/data/mnist"}),
                    run_id="manual__2026-11-21")
    result = pipe.run_all()   # {"model_uri": ..., "version": 1, "test_accuracy": 0.978, ...}
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mnist_tasks.artifacts import utc_now
from mnist_tasks.config import PipelineConfig, run_key
from mnist_tasks.storage import ObjectNotFound, Store, open_store

log = logging.getLogger(__name__)

# What the Pipeline copies from each result into the next one, from check on.
CARRIED = ("lineage", "warnings", "dataset_version", "inputs_key", "increments")


def carry(previous: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` plus the :data:`CARRIED` keys of ``previous`` that it lacks; ``warnings``
    are the previous ones followed by the stage's own."""
    out = {k: previous[k] for k in CARRIED if k in previous and k not in result}
    out.update(result)
    if "warnings" in previous or "warnings" in result:
        own = [w for w in result.get("warnings") or [] if w not in (previous.get("warnings")
                                                                    or [])]
        out["warnings"] = [*(previous.get("warnings") or []), *own]
    return out


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
    """

    def __init__(
        self,
        cfg: PipelineConfig,
        run_id: str,
        *,
        dag_id: str | None = None,
        s3_client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.run_key = run_key(run_id)
        self.dag_id = dag_id
        self.s3_client_kwargs = dict(s3_client_kwargs) if s3_client_kwargs else None
        self.store: Store = open_store(cfg.store, client_kwargs=self.s3_client_kwargs)

    def registry(self) -> Any:
        from mnist_tasks.registry import Registry

        return Registry(self.store, self.cfg.model_name)

    def ingest(self) -> dict[str, Any]:
        """Ingest the base data set and the increments; record the dataset version."""
        from mnist_tasks import ingest as stage
        from mnist_tasks.increments import IncrementPolicy

        result: dict[str, Any] = stage.ingest(
            self.cfg.ingest, self.store, s3_client_kwargs=self.s3_client_kwargs,
            policy=IncrementPolicy(fail_on_quarantine=self.cfg.ingest.fail_on_quarantine),
            run_id=self.run_id,
        )
        return result

    def check(self, ingested: Mapping[str, Any]) -> dict[str, Any]:
        """Decide UNCHANGED (the champion covers these inputs) or TRAIN; check the champion on
        the new increments' fresh data (see :func:`mnist_tasks.check.check`).

        Returns:
            What :func:`mnist_tasks.check.check` returns: the ingest result plus
            ``decision``, ``covered_by``, ``inputs_key``, ``code_fingerprint``,
            ``champion_version``, ``champion_fresh``, ``warnings`` and ``lineage``.
        """
        from mnist_tasks import check as stage

        result: dict[str, Any] = stage.check(
            ingested, preprocess=self.cfg.preprocess, train=self.cfg.train, store=self.store,
            registry=self.registry(), force=self.cfg.check.force,
            fresh_drop_margin=self.cfg.check.fresh_drop_margin,
        )
        fields: dict[str, Any] = dict(
            dataset_version=result["dataset_version"], inputs_key=result["inputs_key"],
            warnings=result["warnings"], champion_fresh=result["champion_fresh"],
            quarantined=result.get("quarantined", []), preset=self.cfg.train.preset,
        )
        if result["decision"] == "UNCHANGED":
            fields.update(decision="UNCHANGED", covered_by=result["covered_by"])
        self._update_summary(**fields)
        return result

    def preprocess(self, checked: Mapping[str, Any]) -> dict[str, Any]:
        """Prepare the checked data set version (base + accepted increments, fresh parts).

        Raises:
            ValueError: if check decided UNCHANGED (there is nothing to prepare).
        """
        from mnist_tasks import preprocess as stage

        if checked.get("decision") == "UNCHANGED":
            raise ValueError(f"check decided UNCHANGED (covered by champion "
                             f"v{checked.get('covered_by')}): nothing to preprocess; trigger "
                             "with force=true to retrain")
        result: dict[str, Any] = stage.preprocess(
            checked["dataset_uri"], self.cfg.preprocess, self.store, self.run_key,
            dataset_version=checked.get("dataset_version"),
        )
        return carry(checked, {**result, "increments": checked.get("increments", [])})

    def train(
        self,
        prepared: Mapping[str, Any],
        *,
        on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
        previous: Mapping[str, Any] | None = None,
        candidate: int | None = None,
    ) -> dict[str, Any]:
        """Train; ``on_checkpoint`` / ``previous``: see :func:`mnist_tasks.train.train`;
        ``candidate``: which of the run's candidates (None: the run's own config).

        Returns:
            What :func:`mnist_tasks.train.train` returns, with ``prepared_uri``.
        """
        from mnist_tasks import train as stage

        cands = self.cfg.candidate_list
        cfg = cands[candidate or 0].train
        result: dict[str, Any] = stage.train(
            prepared["prepared_uri"], cfg, self.store, self.run_key,
            on_checkpoint=on_checkpoint, previous=previous,
            candidate=candidate if len(cands) > 1 else None,
        )
        return carry(prepared, {**result, "prepared_uri": prepared["prepared_uri"]})

    def select(self, trained: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Pick the best trained candidate (see :func:`mnist_tasks.select.select`); the run's
        report lists every candidate."""
        from mnist_tasks import select as stage

        result: dict[str, Any] = stage.select(
            trained, self.cfg.candidate_list, self.store, self.run_key,
            min_candidates=self.cfg.min_candidates,
        )
        self._update_summary(candidates=result["candidates"],
                             chosen_candidate=result["chosen_candidate"],
                             preset=result.get("preset", self.cfg.train.preset))
        return result

    def evaluate(self, trained: Mapping[str, Any]) -> dict[str, Any]:
        """Evaluate the trained model on the data it was trained from.

        Returns:
            What :func:`mnist_tasks.evaluate.evaluate` returns (which holds ``prepared_uri``),
            plus ``trained``: the train result, for the gate and register stages.
        """
        from mnist_tasks import evaluate as stage

        result: dict[str, Any] = stage.evaluate(
            trained["model_uri"],
            trained["prepared_uri"],
            self.store,
            self.run_key,
            history_uri=trained.get("history_uri"),
        )
        self._update_summary(test_accuracy=result["test_accuracy"],
                             preset=trained.get("preset", self.cfg.train.preset))
        return carry(trained, {**result, "prepared_uri": trained["prepared_uri"],
                               "trained": dict(trained)})

    def gate(self, evaluation: Mapping[str, Any]) -> dict[str, Any]:
        """Decide PROMOTE or REJECT for the evaluated model.

        Returns:
            What :func:`mnist_tasks.gate.gate` returns, plus ``prepared_uri`` and
            ``evaluation`` (the evaluate result, which holds ``trained``), for register.
        """
        from mnist_tasks import gate as stage

        prepared_uri = evaluation["prepared_uri"]
        result: dict[str, Any] = stage.gate(
            evaluation,
            self.cfg.gate,
            self.registry(),
            prepared_uri,
            self.store,
            self.run_key,
        )
        out = carry(evaluation, {**result, "prepared_uri": prepared_uri,
                                 "evaluation": dict(evaluation)})
        self._update_summary(
            test_accuracy=evaluation["test_accuracy"],
            decision=result["decision"],
            reasons=result.get("reasons", []),
            warnings=out.get("warnings", []),
        )
        return out

    def register(self, decision: Mapping[str, Any]) -> dict[str, Any]:
        """Register the gated model (see :func:`mnist_tasks.register.register`).

        Args:
            decision: what :meth:`gate` returned; it carries the evaluation and the train
                result.
        """
        from mnist_tasks import register as stage

        result: dict[str, Any] = stage.register(
            decision, store=self.store, registry=self.registry(), run_key=self.run_key,
            dag_id=self.dag_id, run_id=self.run_id, code_version=code_version(),
        )
        self._update_summary(
            version=result["version"], model_uri=result["model_uri"],
            champion=result.get("champion"),
        )
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

        def timed(name: str, fn: Any, *args: Any) -> dict[str, Any]:
            start = time.perf_counter()
            log.info("== %s", name)
            out: dict[str, Any] = fn(*args)
            timings[name] = round(time.perf_counter() - start, 3)
            return out

        start = time.perf_counter()
        ingested = timed("ingest", self.ingest)
        checked = timed("check", self.check, ingested)
        common = {"run_id": self.run_id, "dataset_version": checked["dataset_version"],
                  "inputs_key": checked["inputs_key"]}
        if checked["decision"] == "UNCHANGED":
            return {**common, "decision": "UNCHANGED", "covered_by": checked["covered_by"],
                    "warnings": checked["warnings"],
                    "seconds": round(time.perf_counter() - start, 3), "timings": timings}
        prepared = timed("preprocess", self.preprocess, checked)
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
        evaluation = timed("evaluate", self.evaluate, trained)
        decision = timed("gate", self.gate, evaluation)
        result: dict[str, Any] = {
            **common,
            "decision": decision["decision"],
            "test_accuracy": evaluation["test_accuracy"],
            "fresh_accuracy": evaluation.get("fresh_accuracy"),
            "warnings": decision.get("warnings", []),
        }
        if decision["decision"] == "PROMOTE":
            registered = timed("register", self.register, decision)
            result.update(
                model_uri=registered["model_uri"],
                version=registered["version"],
                champion=registered.get("champion"),
            )
        else:
            log.warning("gate rejected the model; nothing registered: %s",
                        "; ".join(decision.get("reasons", [])))
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
