"""The Airflow glue of the MNIST DAGs, so that the DAG files are wiring only.

What is here: the trigger form's ``Param``s (generated from ``mnist_tasks.config``), the
deployment settings read from the environment (``MNIST_*``: the README's deployment table), the
failure/rejection notifier, the stage wrapper (``gc.freeze``, TensorFlow imported quietly, one
summary line), XCom <-> typed results (:func:`typed`, :func:`run_stage`), the Airflow
connection -> boto3 arguments (also used by the Models page plugin), the deadline alert, the
task bodies that need Airflow's context (train's progress note, the short-circuits, register's
asset event), the approve task (``PromotionApproval``), the landing check and batch scoring.

Not a DAG file: ``.airflowignore`` keeps the DAG processor from parsing it. The DAG files
import it by name: Airflow puts the bundle's folder on ``sys.path`` in the DAG processor, each
task's process and ``airflow dags test``; the API server does not, so the plugin adds the DAGs
folder itself (``plugins/mnist_models.py``).
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk import Asset, AsyncCallback, DeadlineAlert, DeadlineReference, Param
from airflow.sdk import get_current_context as _context

from mnist_tasks import results
from mnist_tasks.config import PARAM_SPECS, TRIGGER_PARAMS, env_number

if TYPE_CHECKING:
    from mnist_tasks.config import ParamSpec, PipelineConfig
    from mnist_tasks.pipeline import Pipeline

log = logging.getLogger("mnist_training")

DAG_ID = "mnist_training"
WATCH_DAG_ID = "mnist_increments_watch"
# Where the train task runs: `gpu` / `gpu` on a deployment with a GPU worker.
TRAIN_POOL = os.environ.get("MNIST_TRAIN_POOL", "default_pool")
TRAIN_QUEUE = os.environ.get("MNIST_TRAIN_QUEUE", "default")

# The train task's key in Airflow's task state store (shared by its retries): the last
# checkpointed epoch, for the log of a retry and a cross-check of the resume.
TRAIN_PROGRESS_KEY = "train_progress"

# Downstream DAGs can schedule on new model versions: `schedule=[MODEL_REGISTRY]`.
MODEL_REGISTRY = Asset(name="mnist_model_registry", uri="mnist://registry/mnist-classifier")
# New labeled increments landed in the source: the watch DAG's `land` task emits its events
# (extra: {"increments": [ids], "source": ...}); the training DAG is scheduled on it.
MNIST_INCREMENTS = Asset(name="mnist_increments", uri="mnist://increments")


def form_default(spec: ParamSpec, environ: Mapping[str, str] = os.environ) -> Any:
    """A trigger parameter's default: its ``env`` variable's value when set, else the spec's.

    Raises:
        ValueError: naming the variable, for a value outside the parameter's choices (the DAG
            file then fails to import, with this message).
    """
    value = (environ.get(spec.env, "").strip() if spec.env else "") or spec.default
    if spec.env and spec.enum is not None and value not in spec.enum:
        raise ValueError(f"{spec.env}={value!r}: expected one of {', '.join(spec.enum)}")
    return value


def trigger_params(environ: Mapping[str, str] = os.environ) -> dict[str, Param]:
    """The trigger form: one ``Param`` per ``mnist_tasks.config.TRIGGER_PARAMS`` entry.

    A parameter with an ``env`` (store, source) takes that variable's value as its default.
    """
    params: dict[str, Param] = {}
    for spec in TRIGGER_PARAMS:
        section = {"section": spec.section} if spec.section else {}
        params[spec.name] = Param(
            form_default(spec, environ), description=spec.help, title=spec.title,
            **section, **spec.schema(),
        )
    return params


def pipeline_config(params: Mapping[str, Any], environ: Mapping[str, str] = os.environ
                    ) -> PipelineConfig:
    """The run's config: the trigger's params plus the deployment settings from ``environ``.

    Airflow merges a run's ``conf`` into ``params`` without checking its keys, so a key that is
    not on the form (``checksums``, ``model_name``, a typo) is refused here, in the first task.

    Raises:
        AirflowFailException: (no retry: a retry cannot fix it) naming the bad keys or value.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_tasks import config

    try:
        values = config.check_trigger_params(params)
        return config.pipeline_config({**values, **config.deployment_values(environ)})
    except config.ConfigError as exc:
        raise AirflowFailException(str(exc)) from None


def pipeline() -> Pipeline:
    """The library's Pipeline for the running task: its config, run id and S3 credentials."""
    from mnist_tasks.pipeline import Pipeline

    ctx = _context()
    return Pipeline(
        pipeline_config(ctx["params"]),
        run_id=ctx["run_id"],
        dag_id=ctx["dag"].dag_id,
        s3_client_kwargs=s3_client_kwargs(),
    )


def s3_client_kwargs() -> dict[str, Any] | None:
    """boto3 arguments from the Airflow connection ``MNIST_S3_CONN_ID`` (default ``mnist_s3``).

    login = access key, password = secret key, extra ``endpoint_url`` (or the host) and
    ``region_name``. None when the connection does not exist: boto3's standard configuration.
    Works in a task (through the supervisor) and in the API server (the metadata database).
    """
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(os.environ.get("MNIST_S3_CONN_ID", "mnist_s3"))
    except AirflowNotFoundException:
        return None
    extra = conn.extra_dejson
    kwargs: dict[str, Any] = {}
    if conn.login:
        kwargs["aws_access_key_id"] = conn.login
    if conn.password:
        kwargs["aws_secret_access_key"] = conn.password
    endpoint = extra.get("endpoint_url") or (conn.host if conn.host else None)
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if extra.get("region_name"):
        kwargs["region_name"] = extra["region_name"]
    return kwargs or None


def notify(context: Any, message: str, level: int = logging.ERROR) -> None:
    """Log ``message`` (at ``level``) and, when MNIST_NOTIFIER is set, send it through that
    Airflow notifier.

    MNIST_NOTIFIER: ``{"class": "dotted.path.Notifier", "kwargs": {...}}``, e.g. the SMTP or
    Slack provider's notifier; its templates can use ``{{ mnist_alert }}``.
    """
    log.log(level, "%s", message)
    spec_text = os.environ.get("MNIST_NOTIFIER", "")
    if not spec_text:
        return
    from airflow.sdk.module_loading import import_string

    spec = json.loads(spec_text)
    notifier = import_string(spec["class"])(**spec.get("kwargs", {}))
    context["mnist_alert"] = message
    notifier(context)


def on_failure(context: Any) -> None:
    """A clear, single-paragraph summary of what failed, for the log and the notifier."""
    ti = context["ti"]
    error = context.get("exception")
    notify(
        context,
        f"ALERT {ti.dag_id} run {ti.run_id}: task {ti.task_id} failed on try {ti.try_number} "
        f"with {type(error).__name__ if error else 'an error'}: {error}",
    )


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


# -- XCom <-> typed results: each task's input is the typed result of the task before it -------

# The result type each task takes, rebuilt from the previous task's XCom.
INPUTS: dict[str, type] = {
    "check": results.IngestResult, "preprocess": results.CheckResult,
    "train": results.PreprocessResult, "select": results.TrainResult,
    "evaluate": results.SelectResult, "gate": results.EvaluateResult,
    "approve": results.GateDecision, "register": results.ApproveResult,
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


def run_stage(name: str, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Run a library stage, its log lines at the top level of the task's log (the per-epoch
    lines, what was quarantined), then log one summary line; its typed result goes to XCom as
    JSON (:func:`mnist_tasks.results.to_json`)."""
    start = time.perf_counter()
    if name in TENSORFLOW_STAGES:
        import_tensorflow_quietly()
    freeze_long_lived_objects()
    try:
        out = fn(*args)
        # The training stages return typed results; the scoring stages, plain dicts.
        result = dict(out) if isinstance(out, Mapping) else results.to_json(out)
    except Exception as exc:
        # A decision about the data (fail_on_quarantine) is the same on every try: no retry.
        from mnist_tasks.increments import IncrementQuarantined

        if isinstance(exc, IncrementQuarantined):
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from exc
        raise
    # Scalars only, and of the URIs only the model's: the details are in the lines above.
    brief = ", ".join(
        f"{k}={v}"
        for k, v in result.items()
        if isinstance(v, str | int | float)
        and (k == "model_uri" or not k.endswith(("_uri", "_key")))
    )
    log.info("SUMMARY %s finished in %.1f s: %s", name, time.perf_counter() - start, brief)
    return result


def stage(name: str, *args: Any) -> dict[str, Any]:
    """Run the Pipeline method ``name`` (ingest, preprocess, evaluate) on the previous result."""
    return run_stage(name, getattr(pipeline(), name), *(typed(name, a) for a in args))


def candidates(checked: dict[str, Any]) -> list[int]:
    """The indexes of the run's candidates, what the train task maps over (one mapped
    instance each); logs the list."""
    cands = pipeline_config(_context()["params"]).candidate_list
    for cand in cands:
        log.info("candidate %d: %s", cand.index, cand.label)
    return [cand.index for cand in cands]


def train(prepared: dict[str, Any], candidate: int | None = None) -> dict[str, Any]:
    """Train (one candidate: ``candidate``, its index; one mapped instance each), noting each
    checkpoint in the task state store, which retries share (per mapped instance): a retry
    resumes from the store's checkpoint and checks it against that note.

    A failure is noted in the store for select, naming the candidate and why; a parameter that
    turns out invalid only now (a batch larger than the training set) fails without retries.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_tasks.config import ConfigError
    from mnist_tasks.select import record_failure

    pipe = pipeline()
    cand = pipe.cfg.candidate_list[candidate or 0]
    try:
        return _train(pipe, prepared, candidate)
    except ConfigError as exc:
        record_failure(pipe.store, pipe.run_key, cand, exc, _context()["ti"].try_number)
        raise AirflowFailException(f"candidate {cand.index} ({cand.label}): {exc}") from None
    except Exception as exc:
        record_failure(pipe.store, pipe.run_key, cand, exc, _context()["ti"].try_number)
        raise


def select(trained: Any) -> dict[str, Any]:
    """Pick the best candidate by validation accuracy, of the mapped train instances that
    succeeded (this task runs when all are done, failed ones included: ``all_done``).

    Raises:
        AirflowFailException: (no retry) fewer than ``min_candidates`` trained.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_tasks.select import SelectionError

    # A slice is one request for every instance's result; iterating would fetch one at a time
    # until Airflow's client logs a 404 (as an ERROR line) past the last one.
    done = [typed("select", r) for r in (trained[:] if trained else []) if r]
    try:
        return run_stage("select", pipeline().select, done)
    except SelectionError as exc:
        raise AirflowFailException(str(exc)) from None


def _train(pipe: Pipeline, prepared: dict[str, Any], candidate: int | None) -> dict[str, Any]:
    ctx = _context()
    state = ctx.get("task_state_store")
    previous = state.get(TRAIN_PROGRESS_KEY) if state is not None else None
    previous = previous if isinstance(previous, dict) else None
    if previous:
        log.info("try %s: the previous try checkpointed epoch %s of %s at %s (%s)",
                 ctx["ti"].try_number, previous.get("epoch"), previous.get("epochs"),
                 previous.get("saved_at"), previous.get("checkpoint_uri"))
    note = functools.partial(state.set, TRAIN_PROGRESS_KEY) if state is not None else None
    fn = functools.partial(pipe.train, on_checkpoint=note, previous=previous,
                           candidate=candidate)
    return run_stage("train", fn, typed("train", prepared))


def check(ingested: dict[str, Any]) -> dict[str, Any] | bool:
    """The check's result when there is something to train on; on UNCHANGED, return False (the
    short-circuit skips every later task: no training, no version, no asset event). Warnings
    (a champion that does worse on fresh data) go to the notifier."""
    result = run_stage("check", pipeline().check, typed("check", ingested))
    ctx = _context()
    for warning in result["warnings"]:
        notify(ctx, f"WARNING {ctx['dag'].dag_id} run {ctx['run_id']}: {warning}",
               logging.WARNING)
    if result["decision"] == "UNCHANGED":
        return False
    return result


def gate(evaluation: dict[str, Any]) -> dict[str, Any] | bool:
    """The gate's decision when it is PROMOTE; on REJECT, notify and return False (the
    short-circuit skips approve and register), unless the run's approval mode (``always``)
    sends a REJECT to a person, who may override it: then the decision goes on to approve."""
    from mnist_tasks import approve

    pipe = pipeline()
    decision = run_stage("gate", pipe.gate, typed("gate", evaluation))
    if decision["decision"] == "PROMOTE":
        return decision
    ctx = _context()
    to_person = approve.asks_on_reject(pipe.cfg.approval.mode)
    notify(
        ctx,
        f"ALERT {ctx['dag'].dag_id} run {ctx['run_id']}: gate REJECTED the model "
        f"(test accuracy {decision['challenger']['accuracy']:.4f}): "
        + "; ".join(decision["reasons"])
        + ("; a person may override it (approval 'always')" if to_person else ""),
    )
    return decision if to_person else False


# -- approval: a person's decision between gate and register (mnist_tasks.approve) -------------

APPROVAL_TASK_ID = "approve"
# The request's form: one text field, the approver's comment (an override's reason). Optional
# here; a request about a REJECT makes it required (PromotionApproval.execute): Airflow's form
# then keeps both answers disabled until a reason is written, as it cannot require a field for
# one answer only.
APPROVAL_FORM = {
    "comment": Param(
        None, type=["null", "string"], title="Comment",
        description="Why you decide so. Required to override the gate's REJECT (Approve on a "
                    "REJECT); recorded with the version.",
    ),
}


def models_page_url(dag_id: str, run_id: str) -> str:
    """The run's entry on the Models page (the version it registers, or why there is none),
    under Airflow's ``[api] base_url`` (a root-relative link without one)."""
    from urllib.parse import urlencode

    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    return f"{base}/models/?{urlencode({'dag_id': dag_id, 'run_id': run_id})}"


class PromotionApproval(ApprovalOperator):
    """The ``approve`` task: Airflow's ``ApprovalOperator`` (a "Required actions" request, the
    task parked in ``awaiting_input`` holding no worker slot) in front of register.

    ``decision`` is the gate's result (an XComArg, resolved at run time). With the run's
    ``approval`` mode saying nobody need be asked (:func:`mnist_tasks.approve.needs_approval`),
    the decision passes straight on. Otherwise the request shows what the run trained on which
    data and the gate's report (its form requires the comment on a REJECT), waits up to
    ``approval_timeout_minutes`` (then the default answer, Reject, applies), and the answer
    (who, when, the comment) is applied and recorded by :mod:`mnist_tasks.approve`; unless the
    final decision is PROMOTE, register is skipped, and a refused override (Approve on a REJECT
    without a reason) fails the task, saying why. Returns the final decision, register's input.
    """

    template_fields = (*ApprovalOperator.template_fields, "decision")

    def __init__(self, *, decision: Any, params: Any = None, **kwargs: Any) -> None:
        import copy

        from airflow.sdk.definitions.param import ParamsDict

        from mnist_tasks.config import ApprovalConfig

        # Airflow hands every operator the DAG's params merged in; the request's form is ours.
        form = copy.deepcopy(params) if isinstance(params, ParamsDict) else ParamsDict(params)
        for name, param in APPROVAL_FORM.items():
            form[name] = copy.deepcopy(param)
        super().__init__(
            subject="Promote the model?",  # set per run in execute()
            params=form,
            defaults=ApprovalOperator.REJECT,
            # Set per run from approval_timeout_minutes in execute(); given here so that the
            # operator does not take execution_timeout (the execute phase's limit) for it.
            response_timeout=timedelta(minutes=ApprovalConfig.timeout_minutes),
            **kwargs,
        )
        self.decision = decision

    def _config(self, context: Any) -> PipelineConfig:
        """The run's config, from its params less the request's form."""
        params = {k: v for k, v in context["params"].items() if k not in APPROVAL_FORM}
        return pipeline_config(params)

    def _decision(self, context: Any) -> results.GateDecision:
        """The gate's decision: the rendered ``decision``, else pulled from the gate's XCom."""
        value = self.decision
        if not isinstance(value, Mapping):
            upstream = getattr(getattr(value, "operator", None), "task_id", None)
            value = context["ti"].xcom_pull(task_ids=upstream)
        if not isinstance(value, Mapping):
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"approve: the gate's result is {value!r}, not a decision")
        decision: results.GateDecision = typed(APPROVAL_TASK_ID, value)
        return decision

    def execute(self, context: Any) -> Any:
        from mnist_tasks import approve

        cfg = self._config(context)
        decision = self._decision(context)
        needed, why = approve.needs_approval(decision, cfg.approval.mode)
        if not needed:
            log.info("approval: not asked: %s", why)
            result = approve.not_asked(decision, cfg.approval.mode, why)
            if result.decision != "PROMOTE":
                self._skip_register(context)
            return results.to_json(result)
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        self.response_timeout = timedelta(minutes=cfg.approval.timeout_minutes)
        self.subject = approve.request_subject(decision, cfg.model_name, run_id)
        if decision.decision != "PROMOTE":
            self._require_comment()
        self.body = approve.report_markdown(
            decision, why=why, models_url=models_page_url(dag_id, run_id),
            timeout_minutes=cfg.approval.timeout_minutes,
            trained=self._trained(cfg, context, decision))
        notify(context, f"APPROVAL REQUESTED {dag_id} run {run_id}: {why}; answer under "
                        f"Required actions within {cfg.approval.timeout_minutes:g} minutes "
                        "(else: rejected)")
        log.info("approval: asking (%s), for up to %g minutes; the request:\n%s", why,
                 cfg.approval.timeout_minutes, self.body)
        return super().execute(context)

    def _require_comment(self) -> None:
        """Make the form's comment required (a non-empty string) for this request; a copy of
        the form, so that the task as defined (and its answer's check) keeps it optional."""
        import copy

        from mnist_tasks.approve import COMMENT

        form = copy.deepcopy(self.params)
        param = form.get_param(COMMENT)
        param.schema = {**param.schema, "type": "string", "minLength": 1,
                        "description": "Why you decide so: an override of the gate's REJECT "
                                       "(Approve) needs a written reason. Recorded with the "
                                       "version."}
        self.params = form

    def _trained(self, cfg: PipelineConfig, context: Any, decision: results.GateDecision
                 ) -> Any:
        """What the run trained on which data (the request's opening); None, logged, when the
        run's records cannot be read (the request still shows the gate's report)."""
        from mnist_tasks import approve
        from mnist_tasks.pipeline import Pipeline
        from mnist_tasks.storage import StorageError

        pipe = Pipeline(cfg, context["run_id"], dag_id=context["dag"].dag_id,
                        s3_client_kwargs=s3_client_kwargs())
        try:
            return approve.what_was_trained(pipe.store, decision)
        except (StorageError, OSError, ValueError) as exc:
            log.warning("approval: cannot read what the run trained: %s", exc)
            return None

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from mnist_tasks import approve
        from mnist_tasks.pipeline import Pipeline

        # The provider's checks of the answer (options, form), without ApprovalOperator's own
        # skipping: what is skipped depends on the final decision, below.
        answer = HITLOperator.execute_complete(self, context=context, event=event)
        user = answer.get("responded_by_user") or {}
        responded_at = answer.get("responded_at")
        response = approve.Response(
            choice=answer["chosen_options"][0],
            by=user.get("name"), by_id=user.get("id"),
            at=responded_at.isoformat() if hasattr(responded_at, "isoformat") else responded_at,
            comment=(answer.get("params_input") or {}).get("comment"),
            timed_out=bool(event.get("timedout")),
        )
        cfg = self._config(context)
        decision = self._decision(context)
        _, why = approve.needs_approval(decision, cfg.approval.mode)
        final = approve.apply_response(decision, response, mode=cfg.approval.mode, why=why)
        pipe = Pipeline(cfg, context["run_id"], dag_id=context["dag"].dag_id,
                        s3_client_kwargs=s3_client_kwargs())
        uri = pipe.record_approval(final)
        record = final.approval
        log.info("APPROVAL %s: %s (answer %s by %s at %s; recorded in %s)", record.outcome,
                 record.note, record.answer, record.by or "-", record.at, uri)
        if final.decision != "PROMOTE":
            notify(context, f"APPROVAL {str(record.outcome).upper()} {context['dag'].dag_id} "
                            f"run {context['run_id']}: {record.note}; nothing is promoted")
            if record.outcome == approve.REFUSED:
                # An Approve the step did not carry out must not read as a success.
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(f"override refused: {record.note}")
            self._skip_register(context)
        return results.to_json(final)

    def _skip_register(self, context: Any) -> None:
        downstream = [t for t in context["task"].get_direct_relatives(upstream=False)
                      if not t.is_teardown]
        if downstream:
            self.skip(ti=context["ti"], tasks=downstream)


def register(decision: dict[str, Any]) -> dict[str, Any]:
    """Register the promoted model; the registry asset's event says which version and how good."""
    result = run_stage("register", pipeline().register, typed("register", decision))
    _context()["outlet_events"][MODEL_REGISTRY].extra = {
        k: result[k] for k in ("version", "test_accuracy", "model_uri")
    }
    return result


# -- the run's note: what the run did, on the grid -------------------------------------------------


def run_note(summary: Mapping[str, Any]) -> str:
    """One line for the run's note, from its summary (``runs/<run-key>/summary.json``):
    ``fast_mlp · 2 epochs · PROMOTE v4 (99.12 %)``, ``... · REJECT (threshold: ...)``,
    ``UNCHANGED (v3)``; a run that stopped before the gate says where it got to."""
    decision = summary.get("decision")
    if decision == "UNCHANGED":
        return f"UNCHANGED (v{summary.get('covered_by')})"
    chosen = next((c for c in summary.get("candidates") or [] if c.get("chosen")), None)
    parts = [str(summary.get("preset") or "?")]
    if chosen is not None:
        epochs = chosen.get("epochs_run") or chosen.get("epochs")
        parts.append(f"{epochs} epoch{'' if epochs == 1 else 's'}")
        if len(summary["candidates"]) > 1:
            parts.append(f"best of {len(summary['candidates'])} candidates")
    accuracy = summary.get("test_accuracy")
    if decision == "PROMOTE" and summary.get("version") is not None:
        parts.append(f"PROMOTE v{summary['version']} ({100 * accuracy:.2f} %)")
    elif decision == "PROMOTE":
        parts.append("PROMOTE, not registered")
    elif decision == "REJECT":
        failed = [r.replace(" FAIL:", ":", 1) for r in summary.get("reasons") or []
                  if " FAIL:" in r]
        parts.append(f"REJECT ({'; '.join(failed)})" if failed else "REJECT")
    else:
        parts.append("no decision: stopped before the gate")
    outcome = (summary.get("approval") or {}).get("outcome")
    if outcome:
        by = (summary.get("approval") or {}).get("by")
        parts.append(f"approval: {outcome}" + (f" by {by}" if by else ""))
    return " · ".join(parts)[:1000]  # the API's limit for a note


def post_run_note(dag_id: str, run_id: str, note: str,
                  environ: Mapping[str, str] = os.environ) -> str:
    """Set the run's note through Airflow's REST API (``PATCH .../dagRuns/<run_id>``), with
    MNIST_AIRFLOW_API_URL and MNIST_AIRFLOW_TOKEN (or MNIST_AIRFLOW_USERNAME and
    MNIST_AIRFLOW_PASSWORD): a task cannot set its run's note otherwise in Airflow 3.3 (the
    execution API has no such call). Returns what happened, for the log; never raises."""
    import urllib.request
    from urllib.parse import quote

    from mnist_tasks.settings import Settings

    cfg = Settings.from_environ(environ)
    if not cfg.airflow_api_url:
        return "not set on the run: MNIST_AIRFLOW_API_URL is not set"
    base = cfg.airflow_api_url.rstrip("/")

    def call(method: str, path: str, body: Any, token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                         headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    try:
        token = cfg.airflow_token or str(call("POST", "/auth/token", {
            "username": cfg.airflow_username, "password": cfg.airflow_password})["access_token"])
        call("PATCH", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"
                      "?update_mask=note", {"note": note}, token)
    except Exception as exc:  # a note is not worth failing anything for
        return f"not set on the run: {base}: {exc}"
    return f"set on the run through {base}"


def note_the_run(context: Any) -> None:
    """The training DAG's success and failure callback: the run's note says what it did.

    Airflow runs DAG callbacks in the DAG processor (in ``airflow dags test``, in its
    process); the note comes from the run's summary in the store, and the line ``RUN NOTE``
    goes to the callback's log whether or not the API is reachable.
    """
    from mnist_tasks.pipeline import run_summary
    from mnist_tasks.storage import ObjectNotFound, open_store

    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    try:
        params = context.get("params") or {}
        store_uri = params.get("store") or form_default(PARAM_SPECS["store"])
        try:
            kwargs = s3_client_kwargs()
        except Exception:  # no connection API where this callback runs: boto3's defaults
            kwargs = None
        try:
            note = run_note(run_summary(open_store(store_uri, client_kwargs=kwargs), run_id))
        except ObjectNotFound:
            note = "no decision: stopped before check"
        if context.get("reason") not in (None, "success"):
            note += f" · FAILED ({context['reason']})"
        log.info("RUN NOTE %s: %s (%s)", run_id, note, post_run_note(dag_id, run_id, note))
    except Exception:
        log.exception("RUN NOTE %s: not written", run_id)


def deadline_alert(environ: Mapping[str, str] = os.environ) -> DeadlineAlert | None:
    """Alert when a run takes MNIST_DEADLINE_MARGIN_MINUTES (default 60) longer than its recent
    average; ``off`` disables it (``airflow dags test`` on 3.3.2 needs that: apache/airflow#73428).

    Raises:
        ValueError: naming the variable, for a value that is not a positive number or ``off``.
    """
    margin = environ.get("MNIST_DEADLINE_MARGIN_MINUTES", "60")
    if margin.strip().lower() in ("", "0", "off", "none"):
        return None
    try:
        minutes = float(margin)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ValueError(
            f"MNIST_DEADLINE_MARGIN_MINUTES={margin!r}: expected a positive number of "
            "minutes, or 'off'"
        )
    return DeadlineAlert(
        reference=DeadlineReference.AVERAGE_RUNTIME(max_runs=10, min_runs=3),
        interval=timedelta(minutes=minutes),
        callback=AsyncCallback("mnist_tasks.alerts.deadline_missed", kwargs={"dag_id": DAG_ID}),
    )


def retry_delay_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """The first retry's delay: MNIST_RETRY_DELAY_SECONDS (default 30; doubled on each retry).

    Raises:
        ValueError: naming the variable, for a value that is not a number from 1 to 3600.
    """
    return float(env_number(environ, "MNIST_RETRY_DELAY_SECONDS"))


def default_args(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Every task's defaults: retries with exponential backoff from MNIST_RETRY_DELAY_SECONDS, a
    timeout (train overrides its own), the failure notification, and no dump of a task's
    return value in its log (the stage wrapper's SUMMARY line says what matters)."""
    return {
        "show_return_value_in_logs": False,
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": timedelta(seconds=retry_delay_seconds(environ)),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(minutes=30),
        "on_failure_callback": on_failure,
    }


# -- the landing check (mnist_increments_watch) --------------------------------------------------


def training_timetable(environ: Mapping[str, str] = os.environ) -> Any:
    """The training DAG's schedule: the time part from MNIST_TRAINING_SCHEDULE (a cron
    expression or preset, default ``@weekly``, UTC; ``off``: data-triggered only), or a new
    increment, whichever comes first.

    Raises:
        ValueError: naming the variable, for a cron expression Airflow cannot parse.
    """
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    text = _training_cron(environ)
    if text is None:
        return [MNIST_INCREMENTS]
    timetable = CronTriggerTimetable(text, timezone="UTC")
    return AssetOrTimeSchedule(timetable=timetable, assets=[MNIST_INCREMENTS])


def _training_cron(environ: Mapping[str, str]) -> str | None:
    """MNIST_TRAINING_SCHEDULE, checked; None for ``off``."""
    text = environ.get("MNIST_TRAINING_SCHEDULE", "").strip() or "@weekly"
    if text.lower() in ("off", "none"):
        return None
    from croniter import croniter  # Airflow's own cron parser

    if not croniter.is_valid(text):
        raise ValueError(f"MNIST_TRAINING_SCHEDULE={text!r}: not a cron expression; "
                         "use e.g. '@weekly', '0 3 * * 1' or 'off'")
    return text


def training_schedule_text(environ: Mapping[str, str] = os.environ) -> str:
    """The training schedule in words, for the DAG's description: Airflow's UI shows only the
    asset of an asset-or-time schedule, so the time part would appear nowhere else."""
    from airflow.timetables.trigger import CronTriggerTimetable

    text = _training_cron(environ)
    if text is None:
        return f"when new labeled increments land (asset {MNIST_INCREMENTS.name})"
    words = CronTriggerTimetable(text, timezone="UTC").description
    when = "Weekly" if text == "@weekly" else "On a schedule"
    return (f"{when} ({words}, UTC) or when new labeled increments land (asset "
            f"{MNIST_INCREMENTS.name}), whichever comes first")


def every(env: str, environ: Mapping[str, str] = os.environ) -> str:
    """``every 5 minutes``: how often an interval DAG runs (``env``: its minutes variable)."""
    minutes = int(env_number(environ, env))
    return "every minute" if minutes == 1 else f"every {minutes} minutes"


def interval_timetable(minutes: int) -> Any:
    """Every ``minutes`` minutes, as a cron timetable where one fits (the UI shows
    ``*/5 * * * *`` and "Every 5 minutes"; a plain interval reads ``0:05:00``), else as an
    interval."""
    from airflow.sdk import CronTriggerTimetable, DeltaTriggerTimetable

    if minutes < 60 and 60 % minutes == 0:
        return CronTriggerTimetable(f"*/{minutes} * * * *", timezone="UTC")
    if minutes % 60 == 0 and 24 % (minutes // 60) == 0:
        return CronTriggerTimetable(f"0 */{minutes // 60} * * *", timezone="UTC")
    return DeltaTriggerTimetable(timedelta(minutes=minutes))


def watch_interval(environ: Mapping[str, str] = os.environ) -> Any:
    """How often the landing check runs: MNIST_WATCH_INTERVAL_MINUTES (default 5).

    Raises:
        ValueError: naming the variable, for a value that is not a whole number of minutes
            from 1 to 1440 (the DAG file then fails to import, with this message).
    """
    return interval_timetable(int(env_number(environ, "MNIST_WATCH_INTERVAL_MINUTES")))


def land() -> dict[str, Any]:
    """Announce the increments that landed since the last check, as an event of
    :data:`MNIST_INCREMENTS`; with nothing new the task is skipped, so no event is emitted.

    Source and store are the deployment's (MNIST_SOURCE, MNIST_STORE, the S3 connection): what
    a run of the training DAG that the event starts reads. A source that cannot hold increments
    (the https mirrors, ``default``) has nothing to watch: logged, skipped.

    Raises:
        AirflowSkipException: nothing new, or a source without increments.
        AirflowFailException: for a store URI a run would refuse too (no retry).
    """
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from mnist_tasks import config
    from mnist_tasks.watch import announce_new

    ctx = _context()
    source = form_default(PARAM_SPECS["source"])
    store = form_default(PARAM_SPECS["store"])
    try:
        config.check_store_uri(store)
    except config.ConfigError as exc:
        raise AirflowFailException(f"MNIST_STORE: {exc}") from None
    try:
        new = announce_new(source, store, client_kwargs=s3_client_kwargs(),
                           announcer=ctx["run_id"])
    except config.ConfigError as exc:
        log.info("%s; nothing to watch", exc)
        raise AirflowSkipException(f"source {source!r} cannot hold increments") from None
    if not new:
        raise AirflowSkipException(f"no new increments in {source}")
    ctx["outlet_events"][MNIST_INCREMENTS].extra = {"increments": new, "source": source}
    log.info("NEW INCREMENTS in %s: %s (event on asset %s)", source, ", ".join(new),
             MNIST_INCREMENTS.name)
    return {"increments": new, "source": source}


# -- batch scoring (mnist_batch_scoring) ---------------------------------------------------------
# Settings: MNIST_SCORING_STORE (default MNIST_STORE: the registry read and the outputs written),
# MNIST_SCORING_LANDING (default <store>/landing), MNIST_SCORING_INTERVAL_MINUTES (how often new
# batches are looked for; default 5), and the MNIST_SCORING_* knobs
# (all declared and parsed in mnist_tasks.config.environment).

SCORING_DAG_ID = "mnist_batch_scoring"


def scoring_timetable(environ: Mapping[str, str] = os.environ) -> Any:
    """The scoring DAG's schedule: an event of the registry asset (a new champion, or a
    rollback posted by the registry CLI) or every MNIST_SCORING_INTERVAL_MINUTES (default 5; the
    landing check for new batches), whichever comes first.

    Raises:
        ValueError: naming the variable, for a value that is not 1 to 1440 whole minutes.
    """
    from airflow.sdk import AssetOrTimeSchedule, DeltaTriggerTimetable

    minutes = env_number(environ, "MNIST_SCORING_INTERVAL_MINUTES")
    return AssetOrTimeSchedule(timetable=DeltaTriggerTimetable(timedelta(minutes=minutes)),
                               assets=[MODEL_REGISTRY])


def _scoring(environ: Mapping[str, str] = os.environ) -> tuple[Any, Any, Any]:
    """The scoring config, the store and the landing store (S3 from the Airflow connection).

    Raises:
        AirflowFailException: for a bad setting (no retry), naming the variable.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_tasks import config
    from mnist_tasks.storage import open_store

    store_uri = environ.get("MNIST_SCORING_STORE", "").strip() or form_default(
        PARAM_SPECS["store"], environ)
    try:
        config.check_store_uri(store_uri)
        cfg = config.scoring_config(environ, store_uri)
        config.check_store_uri(cfg.landing)
    except ValueError as exc:
        raise AirflowFailException(f"scoring settings: {exc}") from None
    kwargs = s3_client_kwargs()
    return (cfg, open_store(store_uri, client_kwargs=kwargs),
            open_store(cfg.landing, client_kwargs=kwargs))


# Each scoring task's input, the typed result of the task before it (see :func:`typed`).
INPUTS.update({"prepare": results.ScorePlan, "score": results.ScoreShard,
               "commit": results.ScorePlan, "health": results.ScoreCommit})


def _registry_events(ctx: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The extras of the registry asset's events that triggered this run, oldest first."""
    events: list[Any] = []
    for asset, evs in (ctx.get("triggering_asset_events") or {}).items():
        if getattr(asset, "name", None) == MODEL_REGISTRY.name or \
                getattr(asset, "uri", None) == MODEL_REGISTRY.uri:
            events.extend(evs)
    events.sort(key=lambda e: str(getattr(e, "timestamp", "")))
    return [dict(getattr(e, "extra", None) or {}) for e in events]


def score_plan() -> dict[str, Any]:
    """Pin the model version for the run (the registry event's, else the champion) and pick
    the batches; nothing to score (or no champion yet): skipped, so nothing else runs."""
    from airflow.sdk.exceptions import AirflowSkipException

    from mnist_tasks import config, score

    ctx = _context()
    cfg, store, landing = _scoring()
    events = _registry_events(ctx)
    try:
        xcom = run_stage("plan", score.plan, cfg, store, landing, config.run_key(ctx["run_id"]),
                         events)
    except score.NoChampion as exc:
        raise AirflowSkipException(str(exc)) from None
    planned = results.from_json(results.ScorePlan, xcom)
    log.info("MODEL VERSION %s v%d pinned for this run (from the %s%s)", cfg.model_name,
             planned.model_version, planned.resolved_from,
             f"; {len(events)} registry event(s)" if events else "")
    if not planned.batches:
        raise AirflowSkipException("nothing to score: no new batch, and the recent ones are "
                                   f"scored with v{planned.model_version}")
    return xcom


def score_prepare(planned: dict[str, Any]) -> list[dict[str, Any]]:
    """Decode and stage the planned batches; the shards, one per mapped scoring task."""
    from mnist_tasks import score

    cfg, store, landing = _scoring()
    prepared = run_stage("prepare", score.prepare, cfg, store, landing,
                         typed("prepare", planned))
    return list(prepared["shards"])


def score_shard(shard: dict[str, Any]) -> dict[str, Any]:
    """Score one shard with the pinned version."""
    from mnist_tasks import score

    cfg, store, _ = _scoring()
    return run_stage("score", score.score_shard, cfg, store, typed("score", shard))


def score_commit(planned: dict[str, Any]) -> dict[str, Any]:
    """Commit every staged batch, all or nothing per batch (the manifest last); a batch whose
    every file is bad fails the task after the others are committed (no retry)."""
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_tasks import score

    cfg, store, _ = _scoring()
    try:
        # What prepare staged and the shards' results are read from the store, not XCom: the
        # mapped task has no XCom when there were no shards (every batch rejected).
        return run_stage("commit", score.commit, cfg, store, typed("commit", planned),
                         None, (), _context()["run_id"])
    except score.BatchRejected as exc:
        raise AirflowFailException(str(exc)) from None


# -- monitoring: drift alarms from scoring, labels that come back (mnist_feedback) ----------------
# Settings: MNIST_FEEDBACK_LANDING (default <scoring store>/feedback),
# MNIST_FEEDBACK_INTERVAL_MINUTES (default 5). The labelled images land as increments in
# MNIST_SOURCE, where the watch finds them.

FEEDBACK_DAG_ID = "mnist_feedback"
# An event whenever a model's health needs attention: a scored batch's drift ALARM or a live
# accuracy ALARM from feedback; other DAGs (or a notifier) can be scheduled on it.
MODEL_HEALTH = Asset(name="mnist_model_health", uri="mnist://health/mnist-classifier")


def health(committed: dict[str, Any]) -> dict[str, Any]:
    """The scoring run's drift ALARMs as an event of :data:`MODEL_HEALTH`; none: skipped."""
    from airflow.sdk.exceptions import AirflowSkipException

    from mnist_tasks.scoring_monitor import drift_alarms

    cfg, store, _ = _scoring()
    run = typed("health", committed)
    alarms = drift_alarms(store, cfg, run)
    if not alarms:
        raise AirflowSkipException("no drift alarm in this run's batches")
    extra = {"kind": "drift", "model_version": run.model_version,
             "alarms": [results.to_json(a) for a in alarms]}
    _context()["outlet_events"][MODEL_HEALTH].extra = extra
    message = (f"DRIFT ALARM on {len(alarms)} batch(es) scored with {cfg.model_name} "
               f"v{run.model_version}: " + "; ".join(f"{a.batch} ({', '.join(a.fired)})"
                                                     for a in alarms))
    notify(_context(), message)
    return extra


def feedback_interval(environ: Mapping[str, str] = os.environ) -> Any:
    """How often landed feedback is looked for: MNIST_FEEDBACK_INTERVAL_MINUTES (default 5).

    Raises:
        ValueError: naming the variable, for a value that is not 1 to 1440 whole minutes.
    """
    return interval_timetable(int(env_number(environ, "MNIST_FEEDBACK_INTERVAL_MINUTES")))


def feedback(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Merge newly landed feedback with the scored batches' predictions, land the labelled
    images as increments in the source, and emit :data:`MODEL_HEALTH` on a live-accuracy
    ALARM; nothing new: skipped."""
    from airflow.sdk.exceptions import AirflowSkipException

    from mnist_tasks import config
    from mnist_tasks import feedback as fb
    from mnist_tasks.storage import open_store

    cfg, store, landing = _scoring(environ)
    kwargs = s3_client_kwargs()
    feedback_uri = config.feedback_landing(environ, store.uri)
    source_uri = form_default(PARAM_SPECS["source"], environ)
    source = None
    if source_uri != "default" and not source_uri.startswith(("http://", "https://")):
        config.check_store_uri(source_uri)
        source = open_store(source_uri, client_kwargs=kwargs)
    reports = fb.process_pending(
        fb.FeedbackConfig(model_name=cfg.model_name, source=source_uri if source else None),
        store, open_store(feedback_uri, client_kwargs=kwargs), landing, source=source)
    if not reports:
        raise AirflowSkipException(f"no new feedback under {feedback_uri}")
    alarms = [r for r in reports if r.status == "ALARM"]
    result = {"batches": [r.batch for r in reports],
              "increments": [r.increment for r in reports if r.increment],
              "alarms": [{"batch": r.batch, "versions": [
                  {"version": v.version, "accuracy": v.accuracy, "interval": list(v.interval),
                   "benchmark_accuracy": v.benchmark_accuracy}
                  for v in r.versions if v.status == "ALARM"]} for r in alarms]}
    if not alarms:
        # Processed, nothing to raise: the event would say "healthy", which nobody schedules on.
        log.info("feedback: %d batch(es) processed, no alarm", len(reports))
        raise AirflowSkipException("feedback processed; no live-accuracy alarm")
    _context()["outlet_events"][MODEL_HEALTH].extra = {"kind": "live_accuracy", **result}
    message = "LIVE ACCURACY ALARM: " + "; ".join(r.summary_line() for r in alarms)
    notify(_context(), message)
    return result
