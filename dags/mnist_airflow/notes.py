"""The training run's note on the grid: one line saying what the run did, from its summary in
the store, set by the DAG's success and failure callback through Airflow's REST API (a task
cannot set its run's note in Airflow 3.3)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from mnist_airflow.common import form_default, log, s3_client_kwargs
from mnist_tasks.config import PARAM_SPECS


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

