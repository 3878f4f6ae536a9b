"""A small client of MLflow's documented REST API: the model registry and the artifact proxy.

The pipeline's environment cannot install ``mlflow`` or ``mlflow-skinny`` (they need
``cachetools<8``; Airflow 3.3 pins ``cachetools==8.0.0``), so it speaks HTTP to an MLflow server
that runs from its own environment (docs/registry.md)::

    client = MlflowRest("mlflow+http://mlflow:5000")
    client.call("GET", "registered-models/get", params={"name": "mnist-classifier"})
    client.put_artifact("mnist-registry/mnist-classifier/r1/MLmodel", b"...")

Every failure is a :class:`MlflowError` whose message is one line naming the server.
"""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path
from typing import Any

import requests

log = logging.getLogger(__name__)

SCHEMES = ("mlflow+http://", "mlflow+https://")
API = "/api/2.0/mlflow/"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts/"
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0


class MlflowError(RuntimeError):
    """An MLflow call failed; ``code`` is MLflow's ``error_code`` (or ``UNREACHABLE``)."""

    def __init__(self, message: str, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def is_mlflow_location(location: str) -> bool:
    """Whether ``location`` names an MLflow server (``mlflow+http(s)://host:port[/prefix]``)."""
    return location.startswith(SCHEMES)


def http_base(location: str) -> str:
    """The server's HTTP base URL for ``mlflow+http(s)://host:port[/prefix]``.

    Raises:
        ValueError: naming the location, for anything else.
    """
    if not is_mlflow_location(location):
        raise ValueError(f"MLflow location {location!r}: expected mlflow+http://host:port "
                         "or mlflow+https://host:port")
    base = location.removeprefix("mlflow+").rstrip("/")
    parsed = urllib.parse.urlsplit(base)
    if not parsed.hostname or parsed.query or parsed.fragment or parsed.username:
        raise ValueError(f"MLflow location {location!r}: expected mlflow+http://host:port "
                         "(no credentials, query or fragment)")
    return base


class MlflowRest:
    """Calls to one MLflow server; ``location`` is ``mlflow+http(s)://host:port[/prefix]``."""

    def __init__(self, location: str, *, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.location = location.rstrip("/")
        self.base = http_base(location)
        self.timeout = (CONNECT_TIMEOUT_S, timeout_s)
        self.session = requests.Session()

    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            reason = type(exc).__name__
            raise MlflowError(f"MLflow server {self.location} is unreachable ({what}: "
                              f"{reason})", "UNREACHABLE") from None
        if response.status_code >= 400:
            code, message = "", response.text[:300]
            try:
                body = response.json()
                code, message = str(body.get("error_code", "")), str(body.get("message", ""))
            except ValueError:
                pass
            message = " ".join(message.split())
            raise MlflowError(f"MLflow server {self.location}: {what} failed with HTTP "
                              f"{response.status_code} {code}: {message}",
                              code, response.status_code)
        return response

    def call(self, method: str, endpoint: str, *, params: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One REST call (``endpoint`` after ``/api/2.0/mlflow/``); the JSON reply."""
        response = self._request(method, self.base + API + endpoint, f"{method} {endpoint}",
                                 params=params, json=body)
        data = response.json() if response.content else {}
        return data if isinstance(data, dict) else {}

    def _artifact_url(self, path: str) -> str:
        return self.base + ARTIFACTS + urllib.parse.quote(path.strip("/"))

    def put_artifact(self, path: str, source: bytes | Path) -> None:
        """Upload bytes or a local file to ``path`` under the server's artifact root."""
        if isinstance(source, Path):
            with open(source, "rb") as fh:
                self._request("PUT", self._artifact_url(path), f"upload {path}", data=fh)
        else:
            self._request("PUT", self._artifact_url(path), f"upload {path}", data=source)

    def get_artifact(self, path: str) -> bytes:
        """The bytes at ``path`` under the server's artifact root."""
        return self._request("GET", self._artifact_url(path), f"download {path}").content

    def download_artifact(self, path: str, dest: Path) -> None:
        """Stream ``path`` under the server's artifact root into the local file ``dest``."""
        response = self._request("GET", self._artifact_url(path), f"download {path}",
                                 stream=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as fh:
            for chunk in response.iter_content(1 << 20):
                fh.write(chunk)
