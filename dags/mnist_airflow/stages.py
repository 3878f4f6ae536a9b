"""The stage wrapper every task body goes through: the previous task's XCom rebuilt as the
typed result the stage takes (:func:`typed`), the stage run with ``gc.freeze`` and TensorFlow
imported quietly, one summary line, its lineage, and its typed result back to XCom
(:func:`run_stage`)."""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from mnist_airflow import lineage
from mnist_airflow.common import log, pipeline
from mnist_tasks import results


def freeze_long_lived_objects() -> None:
    """Collect once, then move every live object out of the cyclic GC's reach (``gc.freeze``).

    A task process holds ~1M long-lived objects (Airflow's task runner, and TensorFlow's once a
    stage imported it). Without this, each full collection rescans them all (0.3-0.9 s, a dozen
    times in an `airflow dags test` run, plus the interpreter's teardown): measured 1.5-3 s of a
    ~27 s run (docs/benchmarks.md). Collecting first means no garbage is frozen.
    """
    gc.collect()
    gc.freeze()


# The stages that load TensorFlow (to train, or to predict with a model).
TENSORFLOW_STAGES = frozenset({"check", "train", "evaluate", "gate", "register", "score"})


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up lines on stdout instead of stderr.

    Airflow's task supervisor logs whatever a task writes to stderr as ERROR, and TensorFlow's
    C++ start-up ("All log messages before absl::InitializeLog() ...", "oneDNN custom
    operations are on ...") writes there while it loads, before ``TF_CPP_MIN_LOG_LEVEL`` (set
    here to 2 unless the deployment set it) can silence them; on stdout they are INFO lines.
    Nothing to do once it is imported, where it is not installed, or with another Keras
    backend (``KERAS_BACKEND``).
    """
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if "tensorflow" in sys.modules or backend != "tensorflow":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(1, 2)
        import tensorflow  # noqa: F401
    except ImportError:
        pass
    finally:
        sys.stdout.flush()
        os.dup2(saved, 2)
        os.close(saved)


# The result type each task takes, rebuilt from the previous task's XCom: each task's input is
# the typed result of the task before it (training's chain, then scoring's).
INPUTS: dict[str, type] = {
    "check": results.IngestResult, "preprocess": results.CheckResult,
    "train": results.PreprocessResult, "select": results.TrainResult,
    "evaluate": results.SelectResult, "gate": results.EvaluateResult,
    "approve": results.GateDecision, "register": results.ApproveResult,
    "prepare": results.ScorePlan, "score": results.ScoreShard,
    "commit": results.ScorePlan, "health": results.ScoreCommit,
}


def typed(task: str, xcom: Any) -> Any:
    """The typed result ``task`` takes, from the previous task's XCom (a dict).

    Raises:
        AirflowFailException: (no retry: the XCom will not change) naming what is missing or
            wrong in it.
    """
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return results.from_json(INPUTS[task], xcom)
    except results.ResultError as exc:
        raise AirflowFailException(f"{task}: its input is not the previous task's result: "
                                   f"{exc}") from None


class StageResult(dict[str, Any]):
    """A stage's result as XCom stores it (a plain JSON object), printed as its one-line summary:
    what Airflow writes of a returned value (a short-circuit task's ``Condition result is``)
    stays one line instead of the whole result."""

    summary = ""

    def __str__(self) -> str:
        return self.summary

    __repr__ = __str__


def run_stage(name: str, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Run a library stage, its log lines at the top level of the task's log (the per-epoch
    lines, what was quarantined), then log one summary line; what it read and wrote goes to
    OpenLineage when configured (:mod:`mnist_airflow.lineage`), its typed result to XCom as
    JSON (:func:`mnist_tasks.results.to_json`)."""
    start = time.perf_counter()
    if name in TENSORFLOW_STAGES:
        import_tensorflow_quietly()
    freeze_long_lived_objects()
    try:
        value = fn(*args)
    except Exception as exc:
        # A decision about the data (fail_on_quarantine) is the same on every try: no retry.
        from mnist_tasks.increments import IncrementQuarantined

        if isinstance(exc, IncrementQuarantined):
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from exc
        raise
    lineage.report(value)
    result = results.to_json(value)
    # Scalars only, and of the URIs only the model's: the details are in the lines above.
    brief = ", ".join(
        f"{k}={v}"
        for k, v in result.items()
        if isinstance(v, str | int | float)
        and (k == "model_uri" or not k.endswith(("_uri", "_key")))
    )
    log.info("SUMMARY %s finished in %.1f s: %s", name, time.perf_counter() - start, brief)
    out = StageResult(result)
    out.summary = f"{name}: {brief}" if len(brief) <= 200 else f"{name}: {brief[:197]}..."
    return out


def stage(name: str, *args: Any) -> dict[str, Any]:
    """Run the Pipeline method ``name`` (ingest, preprocess, evaluate) on the previous result."""
    return run_stage(name, getattr(pipeline(), name), *(typed(name, a) for a in args))

