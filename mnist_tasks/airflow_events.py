"""Post an event of the model registry's asset through Airflow's REST API (plain HTTP).

What ``python -m mnist_tasks.registry promote|rollback --notify-airflow URL`` calls, so the
scoring DAG re-scores with the new champion at once. It never imports Airflow::

    post_asset_event("http://airflow:8080", {"version": 3, "action": "promote"},
                     username="admin", password="...")
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from mnist_tasks.settings import REGISTRY_ASSET

log = logging.getLogger(__name__)


class AirflowEventError(RuntimeError):
    """The event was not posted: the HTTP status or connection problem, or an unknown asset."""


def post_asset_event(
    api_url: str,
    extra: Mapping[str, Any],
    *,
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
    asset_name: str = REGISTRY_ASSET,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Post an event of ``asset_name`` with ``extra`` through Airflow's REST API.

    ``GET /api/v2/assets`` finds the asset's id, ``POST /api/v2/assets/events`` creates the
    event; the DAGs scheduled on the asset (the scoring DAG) start as for a register task's
    event. Authenticates with ``token``, or gets one from ``POST /auth/token``.

    Returns:
        The created event as the API returns it.

    Raises:
        AirflowEventError: naming the URL and the HTTP status or connection problem, or an asset
            Airflow does not know (no DAG file declares it).
    """
    base = api_url.rstrip("/")

    def call(method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth and token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise AirflowEventError(f"Airflow API {method} {base}{path}: HTTP {exc.code} "
                                f"{detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise AirflowEventError(f"Airflow API {method} {base}{path}: {exc}") from None

    if not token:
        if not (username and password):
            raise AirflowEventError("to post the asset event, set MNIST_AIRFLOW_TOKEN, or "
                                "MNIST_AIRFLOW_USERNAME and MNIST_AIRFLOW_PASSWORD")
        token = str(call("POST", "/auth/token", {"username": username, "password": password},
                         auth=False)["access_token"])
    found = call("GET", f"/api/v2/assets?name_pattern={quote(asset_name)}&limit=100")
    ids = [a["id"] for a in found.get("assets", []) if a.get("name") == asset_name]
    if not ids:
        raise AirflowEventError(f"Airflow at {base} knows no asset {asset_name!r} (is the "
                            "training DAG deployed?)")
    event = call("POST", "/api/v2/assets/events", {"asset_id": ids[0], "extra": dict(extra)})
    log.info("airflow: posted an event of asset %s to %s: %s", asset_name, base, dict(extra))
    return dict(event)
