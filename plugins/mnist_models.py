"""A "Models" page in the Airflow UI: the model registry's versions, behind Airflow's login.

The page lists every registered version of the model (version, creation time, preset, test
accuracy, fresh-data accuracy labelled with its fresh set, dataset version, champion marker,
gate decision, producing run linked to its Airflow run) and the recent training runs with their
outcome (PROMOTE, REJECT, UNCHANGED, an approval's answer), and shows one version in detail: the
gate's checks (PASS/FAIL), the challenger against the champion on each new increment, the data
it was made from, its plots (enlarged on click), its model card, and the batches the scoring
DAG scored with it. It is reachable from the navigation bar ("Models") and from every DAG run
("Model" tab: the version that run registered, or why there is none). Inside Airflow's frame the
page sizes the frame to its content (one scrollbar, Airflow's); opened on its own, it links
back to Airflow.

It is a server-rendered FastAPI app mounted by the api-server at ``/models/``:

* ``GET /models/``: the page; ``?version=N`` selects a version, ``?run_id=...`` selects the
  version a run registered (or explains why there is none);
* ``GET /models/api/versions``: the same listing as JSON;
* ``GET /models/versions/{version}/files/{name}``: a version's plots, model card, metrics and
  report (``.png``, ``.md``, ``.json``, ``.txt``; never the model itself).

Every route needs an authenticated Airflow user who may read the runs of the ``mnist_training``
DAG; a browser without a session is sent to the login page, any other client gets 401. Every
response says ``X-Content-Type-Options: nosniff`` (a version's files come from the store).

Settings (environment, parsed by :mod:`mnist_tasks.settings` as for the DAG): ``MNIST_STORE``
(the registry's store, else the DAG's default store), ``MNIST_MODEL_NAME`` (the registry's model
name), ``MNIST_REGISTRY`` (an MLflow server's registry instead of the store's). A run the tracking
mirror logged (its summary records its MLflow page) is linked to MLflow beside its Airflow link.
S3 credentials come as the tasks get them: the Airflow connection ``MNIST_S3_CONN_ID``
(default ``mnist_s3``) when it exists, else the standard AWS configuration
(``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ...). A version's files are read through the
registry, checked against its manifest.

Airflow imports every plugin file in every component (scheduler, workers, each task), so this
module imports only the plugin base class at the top; FastAPI, Airflow's security dependencies
and ``mnist_tasks`` are imported when the api-server first serves a request.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    from fastapi import FastAPI

    from mnist_tasks.registry_api import ModelRegistry, VersionInfo
    from mnist_tasks.settings import Settings
    from mnist_tasks.storage import Store

log = logging.getLogger(__name__)

URL_PREFIX = "/models"
TEMPLATE = Path(__file__).resolve().parent / "templates" / "mnist_models.html"
# Files of a version the page serves, by suffix; anything else (the model itself) is not served.
SERVED_TYPES = {
    ".png": "image/png",
    ".md": "text/markdown; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}

# The selected version's table shows the newest batches only (20,000 rows are 6 MB of HTML);
# /models/api/versions has them all.
PAGE_BATCHES = 500
# The training runs table: the most recent runs' summaries (one read each).
PAGE_RUNS = 30

# The nav icon: a stack of layers (a "model").
ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#4a7ebb" '
    'stroke-width="2" stroke-linejoin="round"><path d="M12 3 2 8l10 5 10-5z"/>'
    '<path d="m2 13 10 5 10-5"/><path d="m2 18 10 5 10-5" opacity=".5"/></svg>'
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def settings() -> Settings:
    """The deployment's settings, read from the environment on each request."""
    from mnist_tasks.settings import Settings

    return Settings.from_environ(os.environ)


def s3_client_kwargs(conn_id: str) -> dict[str, Any] | None:
    """boto3 arguments from the Airflow connection ``conn_id``; None when it does not exist."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from mnist_tasks.settings import s3_client_kwargs as from_fields

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    return from_fields(conn.login, conn.password, conn.host, conn.extra_dejson)


def _open(cfg: Settings) -> tuple[Store, ModelRegistry]:
    """The store the page reads (registry, scoring summaries, run summaries) and the registry."""
    from mnist_tasks.registries import open_registry
    from mnist_tasks.storage import open_store

    store = open_store(cfg.store_or_default, client_kwargs=s3_client_kwargs(cfg.s3_conn_id))
    return store, open_registry(store, cfg.model_name, cfg.registry)


def _fmt_time(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return iso


def run_url(dag_id: str | None, run_id: str | None) -> str | None:
    """The Airflow UI's page of a DAG run, relative to the Models page (``/models/``), so that
    a sub-path deployment works."""
    from urllib.parse import quote

    from mnist_tasks.settings import TRAINING_DAG_ID

    if not run_id:
        return None
    return f"../dags/{quote(dag_id or TRAINING_DAG_ID, safe='')}/runs/{quote(run_id, safe='')}"


def mlflow_url(summary: Mapping[str, Any]) -> str | None:
    """The MLflow UI's page of a run the tracking mirror logged (its summary records it), or
    None when the run was not mirrored."""
    url = summary.get("mlflow_run_url")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return url
    location, experiment, run = (summary.get(k) for k in (
        "mlflow_tracking", "mlflow_experiment_id", "mlflow_run_id"))
    if not (location and experiment and run):
        return None
    from mnist_tasks.tracking_mlflow import run_page_url

    try:
        return run_page_url(str(location), str(experiment), str(run))
    except ValueError:
        return None


def fresh_set(lineage: Mapping[str, Any] | None) -> str | None:
    """Which fresh images a fresh accuracy was measured on, e.g. ``2 increments (inc-a,
    inc-b), 300 images``: versions trained on other data were measured on other sets."""
    if not lineage or not lineage.get("fresh"):
        return None
    ids = [str(i["id"]) for i in lineage.get("increments") or [] if i.get("fresh")]
    n = lineage["fresh"].get("n")
    count = f"{n:,} images" if isinstance(n, int) else "? images"
    if not ids:
        return count
    return (f"{len(ids)} increment{'s' if len(ids) > 1 else ''} ({', '.join(ids)}), {count}")


def _version_row(info: VersionInfo, champion: int | None,
                 mlflow: str | None = None) -> dict[str, Any]:
    from mnist_tasks.model_card import lineage_summary

    lineage = lineage_summary(info.metadata) or {}
    fresh = lineage.get("fresh") or {}
    run = info.metadata.get("run") or {}
    parameters = info.metadata.get("parameters") or {}
    return {
        "version": info.version,
        "created_at": info.created_at,
        "created": _fmt_time(info.created_at),
        "preset": parameters.get("preset"),
        "epochs": parameters.get("epochs"),
        "test_accuracy": info.test_accuracy,
        "fresh_accuracy": fresh.get("accuracy"),
        "fresh_set": fresh_set(lineage),
        "dataset_version": lineage.get("dataset_version"),
        "gate_decision": info.gate_decision,
        "approval": _approval_text(info.approval),
        "override": info.overridden,
        "run_id": info.run_id,
        "run_key": info.run_key,
        "run_url": run_url(run.get("dag_id"), info.run_id),
        "mlflow_url": mlflow,  # the producing run in MLflow, when mirrored
        "champion": info.version == champion,
        "model_uri": info.model_uri,
        "files": sorted(info.files),
        "viewable": sorted(n for n in info.files if Path(n).suffix in SERVED_TYPES),
        # The run's candidates (docs/candidates.md): one row each, the chosen one marked.
        "candidates": [
            {k: c.get(k) for k in ("candidate", "label", "status", "val_accuracy", "val_loss",
                                   "fit_seconds", "epochs_run", "error", "chosen")}
            for c in info.metadata.get("candidates") or [] if isinstance(c, dict)
        ],
    }


def gate_checks(store: Store, decision_uri: Any, reasons: Any = ()) -> list[dict[str, Any]]:
    """The gate's checks of a decision (``name``, ``set``, ``result``: PASS, FAIL or INFO,
    ``detail``), from its ``decision.json``; from its reason lines when that cannot be read."""
    import re

    from mnist_tasks.artifacts import read_result
    from mnist_tasks.results import GateDecision
    from mnist_tasks.storage import StorageError

    if isinstance(decision_uri, str):
        try:
            decision = read_result(store, decision_uri, GateDecision)
        except (StorageError, OSError, ValueError) as exc:
            log.info("models page: reading the gate's checks from its reasons: %s", exc)
        else:
            return [{"name": c.name, "set": c.test_set,
                     "result": {True: "PASS", False: "FAIL", None: "INFO"}[c.passed],
                     "detail": c.detail} for c in decision.checks]
    rows = []
    for line in reasons or ():  # Check.line(): "name STATUS: [set: ]detail"
        found = re.match(r"(\S+) (PASS|FAIL|INFO): (?:(benchmark|fresh): )?(.*)", str(line))
        if found:
            rows.append(dict(zip(("name", "result", "set", "detail"), found.groups(),
                                 strict=True)))
    return rows


def _runs(store: Store, by_run_key: Mapping[str, int]) -> list[dict[str, Any]]:
    """The recent training runs and what each did, newest first; empty, logged, when they
    cannot be read."""
    from mnist_tasks.pipeline import recent_runs
    from mnist_tasks.storage import StorageError

    try:
        summaries = recent_runs(store, PAGE_RUNS)
    except (StorageError, OSError, ValueError) as exc:
        log.warning("models page: cannot read the runs: %s", exc)
        return []
    rows = []
    for s in summaries:
        approval = s.get("approval") if isinstance(s.get("approval"), dict) else None
        run_id = s.get("run_id")
        rows.append({
            "run_id": run_id or s["run_key"],
            "run_key": s["run_key"],
            "run_url": run_url(s.get("dag_id"), run_id),
            "mlflow_url": mlflow_url(s),
            "updated": _fmt_time(str(s.get("updated_at") or "")) if s.get("updated_at") else None,
            "decision": s.get("decision"),
            "approval": _approval_text(approval),
            "approval_note": (approval or {}).get("note") if (approval or {}).get("asked")
            else None,
            "covered_by": s.get("covered_by"),
            "preset": s.get("preset"),
            "dataset_version": s.get("dataset_version"),
            "test_accuracy": s.get("test_accuracy"),
            "version": s.get("version", by_run_key.get(s["run_key"])),
            "reasons": [str(r) for r in s.get("reasons") or []],
            # What made a REJECT: the failed checks (Check.line(): "name FAIL: ...").
            "failed": [str(r) for r in s.get("reasons") or [] if " FAIL: " in str(r)],
            "warnings": [str(w) for w in s.get("warnings") or []],
        })
    return rows


def _approval_text(approval: Any) -> str | None:
    """``OVERRIDE by alice``, ``approved by bob``, ``timed out``...; None if no one was asked."""
    if not isinstance(approval, dict) or not approval.get("asked"):
        return None
    outcome = "OVERRIDE" if approval.get("override") else str(approval.get("outcome") or "asked")
    return f"{outcome} by {approval['by']}" if approval.get("by") else outcome


def _scored(store: Store, model_name: str) -> dict[int, list[dict[str, Any]]]:
    """The batches scored with each version (the scoring DAG's per-version summaries: a few
    requests however many batches), newest first; empty, logged, when they cannot be read (the
    versions are still shown)."""
    from mnist_tasks.scoring_index import scored_batches
    from mnist_tasks.storage import StorageError

    try:  # the scoring DAG's outputs beside the registry it read (its store)
        summaries = scored_batches(store, model_name)
    except (StorageError, OSError, ValueError) as exc:
        log.warning("models page: cannot read the scored batches: %s", exc)
        return {}
    return {
        version: [{
            "batch": r["batch"],
            "images": r.get("images"),
            "skipped_files": r.get("skipped_files"),
            "low_confidence": r.get("low_confidence"),
            "divergence": r.get("divergence_tvd"),
            "flagged": bool(r.get("divergence_flagged")),
            "monitor": r.get("monitor"),
            "fired": ", ".join(r.get("fired") or []),
            "scored": _fmt_time(str(r.get("created_at") or "")),
            "run_id": r.get("run_id"),
        } for r in reversed(rows)]  # rows come by batch id: newest last
        for version, rows in summaries.items()
    }


def _plots(info: VersionInfo) -> list[str]:
    """The version's PNG files, confusion matrix first."""
    pngs = sorted(name for name in info.files if name.endswith(".png"))
    return sorted(pngs, key=lambda name: name != "confusion_matrix.png")


def render_markdown(text: str) -> str:
    """Markdown as HTML with raw HTML disabled (a model card is data, not markup we trust)."""
    from markdown_it import MarkdownIt

    return str(MarkdownIt("js-default").render(text))  # js-default: tables on, html off


def build_app() -> FastAPI:
    """The FastAPI app behind the page; every route requires an authorised Airflow user."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from mnist_tasks.model_card import lineage_summary
    from mnist_tasks.registry_api import InvalidName, RegistryError, VersionNotFound
    from mnist_tasks.settings import TRAINING_DAG_ID
    from mnist_tasks.storage import StorageError

    templates = Environment(
        loader=FileSystemLoader(TEMPLATE.parent),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    opened: dict[Settings, tuple[Store, ModelRegistry]] = {}
    lock = threading.Lock()

    def store_error(exc: Exception) -> HTTPException:
        uri = settings().store_or_default
        log.warning("models page: cannot read the registry at %s: %s", uri, exc)
        return HTTPException(503, f"cannot read the model registry at {uri}: {exc}")

    def source() -> tuple[Store, ModelRegistry]:
        cfg = settings()
        with lock:
            if cfg not in opened:
                try:
                    opened[cfg] = _open(cfg)
                except ValueError as exc:  # a malformed MNIST_STORE or MNIST_MODEL_NAME
                    raise store_error(exc) from None
            return opened[cfg]

    # Reading the runs of the DAG that registers models gates the page.
    can_read_runs = requires_access_dag("GET", DagAccessEntity.RUN,
                                        param_dag_id=TRAINING_DAG_ID)
    app = FastAPI(
        title="MNIST model registry",
        description="The registered versions of the MNIST classifier.",
        # Reading the DAG's runs is what the page shows; it also makes the user authenticate.
        dependencies=[Depends(can_read_runs)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.middleware("http")
    async def _nosniff(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                       ) -> Response:
        # Every response says what it is and the browser must not guess otherwise: a version's
        # files come from the store, and a sniffed .txt or .json could be run as HTML.
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # A browser without a session goes to the login page and comes back; API clients get 401.
        if exc.status_code == 401 and "text/html" in request.headers.get("accept", ""):
            login = get_auth_manager().get_url_login(next_url=str(request.url))
            return RedirectResponse(login, status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.get("/", response_class=HTMLResponse)
    def page(
        version: str | None = Query(None, description="the version to show in detail"),
        run_id: str | None = Query(None, description="show the version this run registered"),
        dag_id: str | None = Query(None, description="the DAG of run_id (from the DAG run tab)"),
    ) -> HTMLResponse:
        store, reg = source()
        status = 200
        error: str | None = None
        rows: list[dict[str, Any]] = []
        selected: VersionInfo | None = None
        champion: int | None = None
        run: dict[str, Any] | None = None
        runs: list[dict[str, Any]] = []
        card_html: str | None = None
        scored: dict[int, list[dict[str, Any]]] = {}
        mirrored: dict[str, str] = {}  # run key -> the run's page in MLflow
        try:
            infos = reg.list_versions()
            champion = reg.get_alias("champion")
            scored = _scored(store, reg.model_name)
            runs = _runs(store, {i.run_key: i.version for i in infos})
            mirrored = {r["run_key"]: r["mlflow_url"] for r in runs if r["mlflow_url"]}
            rows = [_version_row(i, champion, mirrored.get(i.run_key))
                    | {"scored": len(scored.get(i.version, []))}
                    for i in reversed(infos)]  # newest first
            by_number = {i.version: i for i in infos}
            if run_id:
                run = _run_banner(store, reg, run_id, dag_id)
                if run.get("version") in by_number:
                    selected = by_number[run["version"]]
            if version is not None and selected is None:
                try:
                    selected = reg.get(version)
                except (InvalidName, VersionNotFound) as exc:
                    error, status = str(exc), 404
            if selected is None and not run_id and not error and infos:
                selected = by_number.get(champion or -1, infos[-1])
            if selected is not None and "model_card.md" in selected.files:
                card = reg.read_file(selected.version, "model_card.md")
                card_html = render_markdown(card.decode())
        except (StorageError, RegistryError, OSError, ValueError) as exc:
            log.warning("models page: cannot read the registry at %s: %s", reg.uri, exc)
            error, status = f"cannot read the model registry: {exc}", 503
        gate = dict(selected.metadata.get("gate") or {}) if selected else {}
        html = templates.get_template(TEMPLATE.name).render(
            model_name=reg.model_name,
            registry_uri=reg.uri,
            rows=rows,
            runs=runs,
            champion=champion,
            selected=_version_row(selected, champion, mirrored.get(selected.run_key)
                                  or _mlflow_of(store, selected.run_key))
            if selected else None,
            selected_meta=dict(selected.metadata) if selected else {},
            checks=gate_checks(store, gate.get("decision_uri"), gate.get("reasons"))
            if selected else [],
            lineage=lineage_summary(selected.metadata) if selected else None,
            plots=_plots(selected) if selected else [],
            card_html=card_html,
            scored=scored.get(selected.version, [])[:PAGE_BATCHES] if selected else [],
            scored_total=len(scored.get(selected.version, [])) if selected else 0,
            run=run,
            error=error,
        )
        return HTMLResponse(html, status_code=status)

    @app.get("/icon.svg")
    def icon() -> Response:
        return Response(ICON_SVG, media_type="image/svg+xml",
                        headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/api/versions")
    def api_versions() -> dict[str, Any]:
        store, reg = source()
        try:
            champion = reg.get_alias("champion")
            infos = reg.list_versions()
        except (StorageError, RegistryError, OSError) as exc:
            raise store_error(exc) from None
        scored = _scored(store, reg.model_name)
        return {
            "model_name": reg.model_name,
            "registry_uri": reg.uri,
            "champion": champion,
            "versions": [_version_row(i, champion) | {"scored_batches": scored.get(i.version, [])}
                         for i in infos],
        }

    @app.get("/versions/{version}/monitoring.png")
    def monitoring_plot(version: str) -> Response:
        """The version's scored batches over time (drift, confidence, live accuracy)."""
        from mnist_tasks import feedback
        from mnist_tasks.plots import monitoring_png
        from mnist_tasks.scoring_index import scored_batches

        store, reg = source()
        try:
            info = reg.get(version)
            rows = scored_batches(store, reg.model_name).get(info.version, [])
            live = [{"batch": r.batch, "accuracy": v.accuracy, "low": v.interval[0],
                     "high": v.interval[1], "status": v.status}
                    for r in feedback.reports(store, reg.model_name)
                    for v in r.versions if v.version == info.version]
        except (InvalidName, VersionNotFound) as exc:
            raise HTTPException(404, str(exc)) from None
        except (StorageError, RegistryError, OSError) as exc:
            raise store_error(exc) from None
        if not rows:
            raise HTTPException(404, f"version {info.version} has scored no batch yet")
        return Response(monitoring_png(rows[-200:], live,
                                       title=f"v{info.version}: drift per scored batch "
                                             "(colour: OK / WARN / ALARM)"),
                        media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/versions/{version}/files/{name}")
    def version_file(version: str, name: str) -> Response:
        _, reg = source()
        media_type = SERVED_TYPES.get(Path(name).suffix)
        try:
            info = reg.get(version)
        except (InvalidName, VersionNotFound) as exc:
            raise HTTPException(404, str(exc)) from None
        except (StorageError, RegistryError, OSError) as exc:
            raise store_error(exc) from None
        if media_type is None or name not in info.files:
            raise HTTPException(404, f"version {info.version} has no viewable file {name!r}")
        try:
            data = reg.read_file(info.version, name)
        except (StorageError, RegistryError, OSError) as exc:  # RegistryError: not as registered
            raise store_error(exc) from None
        # Versions are immutable, so a browser may keep what it fetched.
        return Response(data, media_type=media_type,
                        headers={"Cache-Control": "private, max-age=86400, immutable"})

    return app


def _mlflow_of(store: Store, run_key: str) -> str | None:
    """The MLflow page of the run ``run_key`` (older than the runs table), from its summary."""
    import json

    from mnist_tasks.storage import StorageError

    try:
        return mlflow_url(json.loads(store.read_bytes(f"runs/{run_key}/summary.json")))
    except (StorageError, OSError, ValueError, AttributeError):
        return None


def _run_banner(store: Store, reg: ModelRegistry, run_id: str, dag_id: str | None
                ) -> dict[str, Any]:
    """What the page says about a run: the version it registered, or why there is none."""
    from mnist_tasks.config import run_key
    from mnist_tasks.pipeline import run_summary
    from mnist_tasks.registry_api import InvalidName
    from mnist_tasks.settings import TRAINING_DAG_ID
    from mnist_tasks.storage import ObjectNotFound

    banner: dict[str, Any] = {"run_id": run_id, "dag_id": dag_id, "version": None,
                              "run_url": run_url(dag_id, run_id)}
    if dag_id and dag_id != TRAINING_DAG_ID:
        banner["note"] = f"DAG {dag_id!r} does not register models; {TRAINING_DAG_ID!r} does."
        return banner
    try:
        info = reg.version_for_run(run_key(run_id))
    except (InvalidName, ValueError):
        info = None
    if info is not None:
        banner["version"] = info.version
        return banner
    try:
        summary = run_summary(store, run_id)
    except (ObjectNotFound, InvalidName, ValueError):
        summary = {}
    banner["decision"] = summary.get("decision")
    banner["reasons"] = summary.get("reasons") or []
    if summary.get("decision") in ("PROMOTE", "REJECT"):
        banner["checks"] = gate_checks(
            store, store.uri_for(f"runs/{run_key(run_id)}/gate/decision.json"),
            banner["reasons"])
    banner["test_accuracy"] = summary.get("test_accuracy")
    banner["covered_by"] = summary.get("covered_by")
    banner["approval"] = summary.get("approval") if isinstance(summary.get("approval"),
                                                               dict) else None
    return banner


class LazyApp:
    """An ASGI app that builds :func:`build_app` on the first request.

    Keeps importing this plugin cheap for the components that never serve it.
    """

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._app: Any = None
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = self._factory()
        await self._app(scope, receive, send)


class MnistModelsPlugin(AirflowPlugin):
    """Adds the "Models" page (nav bar) and a "Model" tab on every DAG run."""

    name = "mnist_models"
    fastapi_apps = [  # noqa: RUF012 (the plugin API reads class attributes)
        {"app": LazyApp(build_app), "url_prefix": URL_PREFIX, "name": "MNIST model registry"},
    ]
    external_views = [  # noqa: RUF012
        {
            # Relative hrefs resolve against Airflow's base URL, so a sub-path deployment works.
            "name": "Models",
            "href": "models/",
            "icon": "models/icon.svg",
            "url_route": "models",
            "destination": "nav",
            "nav_top_level": True,
        },
        {
            "name": "Model",
            "href": "models/?dag_id={DAG_ID}&run_id={RUN_ID}",
            "icon": "models/icon.svg",
            "url_route": "models-run",
            "destination": "dag_run",
        },
    ]
