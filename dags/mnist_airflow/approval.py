"""The approve task: Airflow's ``ApprovalOperator`` between gate and register, asking a person
per the run's ``approval`` mode and applying the answer (:mod:`mnist_tasks.approve`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk import Param

from mnist_airflow.common import log, notify, pipeline_config, s3_client_kwargs
from mnist_airflow.stages import typed
from mnist_tasks import results

if TYPE_CHECKING:
    from mnist_tasks.config import PipelineConfig

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

