"""The model registry in MLflow: each version an MLflow model version, ``champion`` its alias.

Chosen with ``MNIST_REGISTRY=mlflow+http://host:port`` (:mod:`mnist_tasks.registries`); it
speaks MLflow's REST API (:mod:`mnist_tasks.mlflow_rest`), so the pipeline's environment needs
no ``mlflow`` package::

    registry = MlflowRegistry("mlflow+http://mlflow:5000", "mnist-classifier")
    registry.register(run_key, {"model.keras": path, ...}, metadata)
    registry.set_alias("champion", 4, expected=3)   # read, check, set: no compare-and-swap

A version's files live under the server's artifact root, at the path its ``mnist.artifacts``
tag names, as an MLflow Keras model (``MLmodel``, ``data/model.keras``) that
``mlflow.keras.load_model("models:/<name>/<version>")`` loads, beside ``metadata.json``,
``MANIFEST.json`` (every file's SHA-256) and the other files. Registering creates the model
version first (its number names it in the model card), uploads, verifies, and sets the tag
``mnist.complete`` (the manifest's SHA-256) last: every read ignores a version without it.
What each guarantee becomes on MLflow is docs/registry.md's table.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import EllipsisType
from typing import Any

from mnist_tasks.artifacts import json_default, utc_now
from mnist_tasks.mlflow_rest import MlflowError, MlflowRest
from mnist_tasks.registry_api import (
    CHAMPION,
    MANIFEST_FILE,
    METADATA_FILE,
    MODEL_FILE,
    AliasConflict,
    AliasRecord,
    CorruptedVersion,
    FileSource,
    ImmutableVersionError,
    ModelRegistry,
    PendingVersion,
    RegistryError,
    Verifier,
    VersionEntry,
    VersionInfo,
    VersionNotFound,
    file_contents,
    parse_version,
    validate_alias,
    validate_file_name,
    validate_model_name,
    validate_run_key,
)

log = logging.getLogger(__name__)

SCHEMA = 1
MLMODEL_FILE = "MLmodel"
MODEL_PATH = "data/model.keras"  # where MLflow's keras flavour looks (data: data)
# Model-version tags. A version without TAG_RUN_KEY is foreign; without TAG_COMPLETE, unfinished.
TAG_RUN_KEY = "mnist.run_key"
TAG_CREATED = "mnist.created_at"
TAG_ARTIFACTS = "mnist.artifacts"
TAG_COMPLETE = "mnist.complete"
ALIAS_TAG = "mnist.alias."  # + alias: a registered-model tag with the rollback stack, history
HISTORY_LIMIT = 200  # alias moves kept in its tag (newest kept)
PREVIOUS_LIMIT = 100
PAGE = 1000


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n").encode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def mlmodel(created_at: str, model_sha256: str) -> bytes:
    """The ``MLmodel`` file of a Keras 3 model saved as ``data/model.keras``: what
    ``mlflow.keras.load_model`` and ``mlflow.pyfunc.load_model`` read."""
    return (
        "artifact_path: model\n"
        "flavors:\n"
        "  keras:\n"
        "    data: data\n"
        "    keras_backend: tensorflow\n"
        f"    keras_version: {importlib.metadata.version('keras')}\n"
        "    save_exported_model: false\n"
        "  python_function:\n"
        "    loader_module: mlflow.keras\n"
        f"model_uuid: {model_sha256[:32]}\n"
        f"utc_time_created: '{created_at}'\n"
    ).encode()


class MlflowRegistry:
    """The versions and aliases of one registered model in an MLflow server.

    Args:
        location: ``mlflow+http(s)://host:port[/prefix]``.
        model_name: the registered model's name (validated like the store-backed one's).

    Raises:
        InvalidName: for a bad model name; ValueError for a bad location.
    """

    def __init__(self, location: str, model_name: str) -> None:
        self.client = MlflowRest(location)
        self.location = self.client.location
        self._name = validate_model_name(model_name)
        # Seconds from reading an alias to MLflow's reply to setting it, for the last move:
        # another writer's move in that window is lost (MLflow has no compare-and-swap).
        self.last_alias_window_s: float | None = None

    def __repr__(self) -> str:
        return f"MlflowRegistry({self.uri!r})"

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def uri(self) -> str:
        return f"{self.location}/{self._name}"

    @property
    def store_uri(self) -> str:
        """What ``python -m mnist_tasks.registry --store`` takes to reach this registry."""
        return self.location

    # REST -------------------------------------------------------------------------------------

    def _call(self, method: str, endpoint: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return self.client.call(method, endpoint, **kwargs)
        except MlflowError as exc:
            raise RegistryError(str(exc)) from None

    def _artifact(self, path: str) -> bytes:
        try:
            return self.client.get_artifact(path)
        except MlflowError as exc:
            raise RegistryError(str(exc)) from None

    def _ensure_model(self) -> None:
        try:
            self.client.call("POST", "registered-models/create", body={"name": self._name})
        except MlflowError as exc:
            if exc.code != "RESOURCE_ALREADY_EXISTS":
                raise RegistryError(str(exc)) from None

    def _raw_versions(self) -> list[dict[str, Any]]:
        """Every model version of the registered model, as MLflow returns it, oldest first."""
        out: list[dict[str, Any]] = []
        token = None
        while True:
            params: dict[str, Any] = {"filter": f"name='{self._name}'", "max_results": PAGE}
            if token:
                params["page_token"] = token
            reply = self._call("GET", "model-versions/search", params=params)
            out.extend(reply.get("model_versions", []))
            token = reply.get("next_page_token")
            if not token:
                break
        return sorted(out, key=lambda v: int(v["version"]))

    def _raw_version(self, number: int) -> dict[str, Any] | None:
        try:
            reply = self.client.call("GET", "model-versions/get",
                                     params={"name": self._name, "version": str(number)})
        except MlflowError as exc:
            if exc.code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise RegistryError(str(exc)) from None
        version = reply.get("model_version")
        return version if isinstance(version, dict) else None

    def _raw_model(self) -> dict[str, Any] | None:
        try:
            reply = self.client.call("GET", "registered-models/get", params={"name": self._name})
        except MlflowError as exc:
            if exc.code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise RegistryError(str(exc)) from None
        model = reply.get("registered_model")
        return model if isinstance(model, dict) else None

    @staticmethod
    def _tags(raw: Mapping[str, Any]) -> dict[str, str]:
        return {str(t.get("key")): str(t.get("value", "")) for t in raw.get("tags", [])}

    def _set_version_tag(self, number: int, key: str, value: str) -> None:
        self._call("POST", "model-versions/set-tag",
                   body={"name": self._name, "version": str(number), "key": key, "value": value})

    # versions ---------------------------------------------------------------------------------

    def _version_uri(self, number: int) -> str:
        return f"{self.uri}/versions/{number}"

    def _info(self, number: int, raw: Mapping[str, Any]) -> VersionInfo:
        """The complete version ``raw`` (MLflow's record), read and checked against its
        manifest. Raises VersionNotFound (foreign, unfinished) or CorruptedVersion."""
        tags = self._tags(raw)
        where = self._version_uri(number)
        if TAG_RUN_KEY not in tags:
            raise VersionNotFound(f"version {number} of {self._name!r} in {self.location} is "
                                  "foreign (not registered by this pipeline: no mnist.* "
                                  "metadata); it is never promoted or scored")
        sha = tags.get(TAG_COMPLETE)
        if not sha:
            raise VersionNotFound(f"model {self._name!r} has no version {number} (its "
                                  f"registration never completed) in {self.uri}")
        root = tags.get(TAG_ARTIFACTS, "")
        manifest_bytes = self._artifact(f"{root}/{MANIFEST_FILE}")
        if _sha(manifest_bytes) != sha:
            raise CorruptedVersion(f"{where}/{MANIFEST_FILE}: does not match the SHA-256 in "
                                   f"its {TAG_COMPLETE} tag (the version is corrupted)")
        try:
            manifest = json.loads(manifest_bytes)
        except ValueError as exc:
            raise CorruptedVersion(f"{where}/{MANIFEST_FILE}: not valid JSON ({exc})") from None
        objects = manifest.get("objects") if isinstance(manifest, dict) else None
        if not isinstance(objects, dict):
            raise CorruptedVersion(f"{where}/{MANIFEST_FILE}: no 'objects' (corrupted)")
        meta_bytes = self._artifact(f"{root}/{METADATA_FILE}")
        if _sha(meta_bytes) != (objects.get(METADATA_FILE) or {}).get("sha256"):
            raise CorruptedVersion(f"{where}/{METADATA_FILE}: content does not match its "
                                   "manifest (the version is corrupted)")
        try:
            metadata = json.loads(meta_bytes)
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict):
            raise CorruptedVersion(f"{where}/{METADATA_FILE}: not a JSON object (corrupted)")
        info = VersionInfo(
            model_name=self._name, version=number, run_key=str(manifest.get("run_key")),
            created_at=str(manifest.get("created_at")), uri=where,
            model_uri=f"{where}/{MODEL_FILE}",
            files={name: dict(entry) for name, entry in objects.items()}, metadata=metadata)
        return info

    def get(self, version: int | str) -> VersionInfo:
        """A complete version of ours. Raises ``VersionNotFound`` (missing, unfinished or
        foreign), ``CorruptedVersion``; ``RegistryError`` naming the server when it fails."""
        number = parse_version(version)
        raw = self._raw_version(number)
        if raw is None:
            raise VersionNotFound(f"model {self._name!r} has no version {number} "
                                  f"(not registered, or deleted) in {self.uri}")
        return self._info(number, raw)

    def exists(self, version: int | str) -> bool:
        number = parse_version(version)
        raw = self._raw_version(number)
        tags = self._tags(raw) if raw is not None else {}
        return TAG_RUN_KEY in tags and bool(tags.get(TAG_COMPLETE))

    def scan(self, *, include_incomplete: bool = False) -> list[VersionEntry]:
        """Every version with its status (``ok``, ``foreign``, ``corrupted``; with
        ``include_incomplete`` also ``incomplete``), oldest first."""
        entries = []
        for raw in self._raw_versions():
            number = int(raw["version"])
            tags = self._tags(raw)
            if TAG_RUN_KEY not in tags:
                entries.append(VersionEntry(number, "foreign", reason=(
                    f"not registered by this pipeline (source {raw.get('source')}); never "
                    "promoted or scored")))
            elif not tags.get(TAG_COMPLETE):
                if include_incomplete:
                    entries.append(VersionEntry(
                        number, "incomplete", run_key=tags[TAG_RUN_KEY],
                        claimed_at=tags.get(TAG_CREATED),
                        reason=f"run {tags[TAG_RUN_KEY]} has not completed it (no "
                               f"{TAG_COMPLETE} tag); a retry of the run resumes it"))
            else:
                try:
                    entries.append(VersionEntry(number, "ok", info=self._info(number, raw)))
                except (RegistryError, ValueError) as exc:
                    entries.append(VersionEntry(number, "corrupted", reason=str(exc)))
        return entries

    def list_versions(self) -> list[VersionInfo]:
        infos = []
        for entry in self.scan():
            if entry.info is not None:
                infos.append(entry.info)
            elif entry.status == "corrupted":
                log.warning("registry: %s v%d is corrupted and left out: %s",
                            self._name, entry.version, entry.reason)
        return infos

    def latest(self) -> VersionInfo | None:
        infos = self.list_versions()
        return infos[-1] if infos else None

    def version_for_run(self, run_key: str) -> VersionInfo | None:
        run_key = validate_run_key(run_key)
        for entry in self.scan():
            if entry.info is not None and entry.info.run_key == run_key:
                return entry.info
        return None

    def model_uri(self, version: int | str) -> str:
        return self.get(version).model_uri

    # model bytes -------------------------------------------------------------------------------

    def _path_of(self, info: VersionInfo, name: str) -> str:
        raw = self._raw_version(info.version) or {}
        root = self._tags(raw).get(TAG_ARTIFACTS, "")
        return f"{root}/{MODEL_PATH if name == MODEL_FILE else name}"

    def _fetch_verified(self, info: VersionInfo, name: str, dest: Path) -> Path:
        entry = info.files.get(name)
        if entry is None:
            raise RegistryError(f"{info.uri}: the manifest lists no {name!r}")
        try:
            self.client.download_artifact(self._path_of(info, name), dest)
        except MlflowError as exc:
            raise RegistryError(str(exc)) from None
        digest, size = _file_sha(dest)
        if digest != entry.get("sha256") or size != entry.get("size"):
            dest.unlink(missing_ok=True)
            raise RegistryError(f"{info.uri}/{name}: SHA-256/size {digest[:12]}…/{size} does not "
                                f"match the manifest ({str(entry.get('sha256'))[:12]}…/"
                                f"{entry.get('size')}); the version is corrupted")
        return dest

    def fetch_model(self, version: int | str, dest_dir: str | os.PathLike[str]) -> Path:
        info = self.get(version)
        return self._fetch_verified(info, MODEL_FILE, Path(dest_dir) / MODEL_FILE)

    def fetch_pending_model(
        self, pending: PendingVersion, dest_dir: str | os.PathLike[str]
    ) -> Path:
        raw = self._raw_version(pending.version)
        tags = self._tags(raw) if raw is not None else {}
        if pending.model_name != self._name or tags.get(TAG_RUN_KEY) != pending.run_key:
            raise RegistryError(f"{pending.model_uri} is not a pending version of {self.uri}")
        dest = Path(dest_dir) / MODEL_FILE
        try:
            self.client.download_artifact(f"{tags[TAG_ARTIFACTS]}/{MODEL_PATH}", dest)
        except MlflowError as exc:
            raise RegistryError(str(exc)) from None
        return dest

    def read_file(self, version: int | str, name: str) -> bytes:
        info = self.get(version)
        entry = info.files.get(name)
        if entry is None:
            raise RegistryError(f"{info.uri}: the manifest lists no {name!r}")
        if name != METADATA_FILE:
            validate_file_name(name)
        data = self._artifact(self._path_of(info, name))
        if _sha(data) != entry.get("sha256") or len(data) != entry.get("size"):
            raise RegistryError(f"{info.uri}/{name}: does not match the manifest's SHA-256 and "
                                "size; the version is corrupted")
        return data

    def download(self, version: int | str, dest_dir: str | os.PathLike[str]) -> Path:
        info = self.get(version)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for name in info.files:
            self._fetch_verified(info, name, dest / name)
        (dest / MANIFEST_FILE).write_bytes(self._artifact(
            self._path_of(info, MANIFEST_FILE)))
        log.info("registry: downloaded %s v%d (%d files, verified) from %s to %s",
                 self._name, info.version, len(info.files), self.location, dest)
        return dest

    # aliases -----------------------------------------------------------------------------------

    def _alias_state(self, alias: str) -> tuple[int | None, dict[str, Any], int | None]:
        """(the version MLflow's alias points at, our tag's state, the version our tag says
        the alias points at when MLflow has lost it with its deleted version)."""
        model = self._raw_model()
        if model is None:
            return None, {}, None
        actual = None
        for entry in model.get("aliases", []):
            if entry.get("alias") == alias:
                actual = int(entry["version"])
        tags = self._tags(model)
        try:
            state = json.loads(tags.get(ALIAS_TAG + alias, "{}"))
        except ValueError:
            state = {}
        state = state if isinstance(state, dict) else {}
        dangling = None
        recorded = state.get("version")
        if actual is not None and self._raw_version(actual) is None:
            dangling = actual
        elif actual is None and isinstance(recorded, int) and self._raw_version(recorded) is None:
            dangling = recorded  # MLflow drops an alias with its version; our tag remembers
        return actual, state, dangling

    def _record(self, alias: str, actual: int, state: Mapping[str, Any]) -> AliasRecord:
        previous = [int(v) for v in state.get("previous", [])]
        history = [dict(h) for h in state.get("history", [])]
        if state.get("version") not in (None, actual):  # moved by hand in MLflow
            previous.append(int(state["version"]))
        return AliasRecord(alias=alias, version=actual, previous=tuple(previous),
                           history=tuple(history), updated_at=str(state.get("updated_at", "")))

    def _dangling_error(self, alias: str, number: int) -> RegistryError:
        return RegistryError(f"alias {alias!r} of {self._name!r} points at version {number}, "
                             f"which was deleted from {self.location}; promote a version to "
                             "repair it")

    def alias_record(self, alias: str) -> AliasRecord | None:
        """The alias with its rollback stack and history, or None when it is not set.

        Raises:
            RegistryError: naming the alias and the version, when that version was deleted.
        """
        alias = validate_alias(alias)
        actual, state, dangling = self._alias_state(alias)
        if dangling is not None:
            raise self._dangling_error(alias, dangling)
        return self._record(alias, actual, state) if actual is not None else None

    def get_alias(self, alias: str) -> int | None:
        record = self.alias_record(alias)
        return record.version if record else None

    def aliases(self) -> dict[str, int]:
        model = self._raw_model() or {}
        return {str(a["alias"]): int(a["version"]) for a in model.get("aliases", [])}

    def set_alias(
        self, alias: str, version: int | str, *, expected: int | EllipsisType | None = ...
    ) -> AliasRecord:
        """Point ``alias`` at a complete version of ours, if it holds ``expected`` now.

        MLflow has no compare-and-swap: this verifies the version first, then reads the
        alias, checks it, and sets it; a move by another writer between the read and the set
        (``last_alias_window_s``, measured in docs/registry.md) is overwritten.
        ``expected=...`` moves whatever the alias holds, a dangling alias too.

        Raises:
            InvalidName, VersionNotFound (missing, unfinished or foreign version),
            AliasConflict (``expected`` does not hold), RegistryError (the server failed).
        """
        alias, number = validate_alias(alias), parse_version(version)
        self.get(number)  # ours, complete and intact: checked before the read, off the window
        started = time.monotonic()
        actual, state, dangling = self._alias_state(alias)
        current = actual if actual is not None else dangling
        if expected is not ... and current != expected:
            raise AliasConflict(
                f"alias {alias!r} of {self._name!r} points to "
                f"{current if current is not None else 'nothing'}, expected "
                f"{'nothing' if expected is None else expected}; not moved")
        if dangling is None and actual == number:
            return self._record(alias, number, state)
        return self._move(alias, number, "set", actual, state, dangling, started)

    def _move(self, alias: str, number: int, action: str, actual: int | None,
              state: Mapping[str, Any], dangling: int | None, read_at: float) -> AliasRecord:
        """Set the alias (its target verified, its state read at ``read_at``), then its tag."""
        record = self._record(alias, actual, state) if actual is not None else None
        previous = list(record.previous) if record else [int(v) for v in
                                                          state.get("previous", [])]
        if action == "set" and actual is not None:
            previous.append(actual)
        elif action == "rollback":
            previous.pop()
        history = list(record.history) if record else [dict(h) for h in
                                                        state.get("history", [])]
        seq = int(history[-1]["seq"]) + 1 if history else 1
        now = utc_now()
        history.append({"seq": seq, "version": number, "action": action, "at": now,
                        "token": uuid.uuid4().hex})
        new_state = {"version": number, "previous": previous[-PREVIOUS_LIMIT:],
                     "history": history[-HISTORY_LIMIT:], "updated_at": now}
        self._call("POST", "registered-models/alias",
                   body={"name": self._name, "alias": alias, "version": str(number)})
        self.last_alias_window_s = time.monotonic() - read_at
        self._call("POST", "registered-models/set-tag",
                   body={"name": self._name, "key": ALIAS_TAG + alias, "value": json.dumps(
                       new_state, sort_keys=True)})
        log.info("registry: alias %s of %s -> v%d (%s; was %s) in %s", alias, self._name,
                 number, action, actual if actual is not None else
                 (f"v{dangling}, deleted" if dangling is not None else "unset"), self.location)
        return self._record(alias, number, new_state)

    def promote(self, version: int | str) -> AliasRecord:
        return self.set_alias(CHAMPION, version)

    def rollback(self, alias: str = CHAMPION) -> AliasRecord:
        alias = validate_alias(alias)
        actual, state, dangling = self._alias_state(alias)
        if actual is None and dangling is None:
            raise RegistryError(f"alias {alias!r} of {self._name!r} is not set; nothing to roll "
                                "back")
        previous = [int(v) for v in state.get("previous", [])]
        record = self._record(alias, actual, state) if actual is not None else None
        if record is not None:
            previous = list(record.previous)
        if not previous:
            raise RegistryError(f"alias {alias!r} of {self._name!r} has no previous version to "
                                f"roll back to (it points to {actual})")
        self.get(previous[-1])  # verified before the re-read, off the window
        started = time.monotonic()
        if self._alias_state(alias) != (actual, state, dangling):
            raise AliasConflict(f"alias {alias!r} of {self._name!r} moved while rolling back; "
                                "not moved (try again)")
        return self._move(alias, previous[-1], "rollback", actual,
                          {**state, "previous": previous, "version": actual}, dangling, started)

    # registering -------------------------------------------------------------------------------

    def register(
        self,
        run_key: str,
        files: Mapping[str, FileSource],
        metadata: Mapping[str, Any],
        *,
        verify: Verifier | None = None,
    ) -> VersionInfo:
        """Store a new version as an MLflow model version; idempotent per ``run_key``.

        The model version is created first (marked with ``mnist.run_key``, invisible to every
        reader), then the files are uploaded, ``verify`` runs, ``metadata.json`` and
        ``MANIFEST.json`` are uploaded, and the ``mnist.complete`` tag is set last. A failed
        attempt leaves the version marked unfinished; the run's retry resumes it.

        Raises:
            as :meth:`mnist_tasks.registry.Registry.register`; RegistryError naming the server
            when it is unreachable or refuses a call.
        """
        run_key = validate_run_key(run_key)
        for name in files:
            validate_file_name(name)
        if MODEL_FILE not in files:
            raise ValueError(f"register({run_key!r}): files must include {MODEL_FILE!r}")
        try:
            _dump(dict(metadata))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"register({run_key!r}): metadata is not JSON-serialisable: {exc}") \
                from None
        self._ensure_model()
        mine = [v for v in self._raw_versions() if self._tags(v).get(TAG_RUN_KEY) == run_key]
        if mine:
            raw = mine[0]  # the run's first version; a concurrent attempt's later one is a gap
            number = int(raw["version"])
            if self._tags(raw).get(TAG_COMPLETE):
                log.info("registry: run %s already registered as %s v%d; nothing to do",
                         run_key, self._name, number)
                return self._info(number, raw)
            log.info("registry: resuming %s v%d of run %s", self._name, number, run_key)
        else:
            raw = self._create_version(run_key)
            # Two attempts of one run may both have found nothing and created a version each:
            # both go on with the run's first, and the later one is deleted by its creator.
            first = min((v for v in self._raw_versions()
                         if self._tags(v).get(TAG_RUN_KEY) == run_key),
                        key=lambda v: int(v["version"]), default=raw)
            if int(first["version"]) != int(raw["version"]):
                log.warning("registry: run %s was registered concurrently as %s v%s; deleting "
                            "its duplicate v%s", run_key, self._name, first["version"],
                            raw["version"])
                self._call("DELETE", "model-versions/delete",
                           body={"name": self._name, "version": str(raw["version"])})
                raw = first
        tags = self._tags(raw)
        number = int(raw["version"])
        pending = PendingVersion(model_name=self._name, version=number, run_key=run_key,
                                 created_at=tags.get(TAG_CREATED, ""),
                                 uri=self._version_uri(number),
                                 model_uri=f"{self._version_uri(number)}/{MODEL_FILE}")
        objects = {name: self._put(pending, name, source)
                   for name, source in file_contents(files, pending)}
        self._put(pending, MLMODEL_FILE, mlmodel(pending.created_at, objects[MODEL_FILE]["sha256"]))
        self._put(pending, "data/keras_module.txt", b"keras")
        verification = verify(pending) if verify is not None else None
        full_meta = {**dict(metadata), "schema": SCHEMA, "model_name": self._name,
                     "version": number, "run_key": run_key, "created_at": pending.created_at,
                     "verification": dict(verification) if verification is not None else None,
                     "mlflow": {"server": self.location,
                                "model_uri": f"models:/{self._name}/{number}"}}
        objects[METADATA_FILE] = self._put(pending, METADATA_FILE, _dump(full_meta))
        manifest = _dump({"schema": SCHEMA, "model_name": self._name, "version": number,
                          "run_key": run_key, "created_at": pending.created_at,
                          "objects": dict(sorted(objects.items()))})
        self._put(pending, MANIFEST_FILE, manifest)
        for key, value in _summary_tags(full_meta).items():
            self._set_version_tag(number, key, value)
        self._set_version_tag(number, TAG_COMPLETE, _sha(manifest))  # visible from here on
        self._finish_run(str(raw.get("run_id") or ""))
        info = self.get(number)
        log.info("registry: registered %s v%d for run %s (%d files) in %s", self._name, number,
                 run_key, len(info.files), self.location)
        return info

    def _experiment_id(self) -> str:
        """The experiment that holds the registration runs (created on first use)."""
        name = f"{self._name} registry"
        try:
            reply = self.client.call("GET", "experiments/get-by-name",
                                     params={"experiment_name": name})
            return str(reply["experiment"]["experiment_id"])
        except MlflowError as exc:
            if exc.code != "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(str(exc)) from None
        try:
            return str(self.client.call("POST", "experiments/create",
                                        body={"name": name})["experiment_id"])
        except MlflowError as exc:
            if exc.code != "RESOURCE_ALREADY_EXISTS":  # created concurrently
                raise RegistryError(str(exc)) from None
        reply = self._call("GET", "experiments/get-by-name", params={"experiment_name": name})
        return str(reply["experiment"]["experiment_id"])

    def _create_version(self, run_key: str) -> dict[str, Any]:
        """A new model version of ``run_key``, unfinished, and the MLflow run that holds its
        files (MLflow accepts a version's source only inside a run's artifacts)."""
        created_at = utc_now()
        run = self._call("POST", "runs/create", body={
            "experiment_id": self._experiment_id(), "run_name": f"register {run_key}",
            "start_time": int(time.time() * 1000),
            "tags": [{"key": TAG_RUN_KEY, "value": run_key}]})["run"]["info"]
        artifact_uri = str(run.get("artifact_uri", ""))
        if not artifact_uri.startswith("mlflow-artifacts:/"):
            raise RegistryError(f"MLflow server {self.location} stores run artifacts at "
                                f"{artifact_uri!r}: start it with --serve-artifacts")
        root = artifact_uri.removeprefix("mlflow-artifacts:").strip("/") + "/model"
        reply = self._call("POST", "model-versions/create", body={
            "name": self._name, "source": f"{artifact_uri}/model", "run_id": run["run_id"],
            "description": f"registered by the MNIST pipeline, run {run_key}",
            "tags": [{"key": TAG_RUN_KEY, "value": run_key},
                     {"key": TAG_CREATED, "value": created_at},
                     {"key": TAG_ARTIFACTS, "value": root}]})
        raw = dict(reply["model_version"])
        log.info("registry: run %s created %s v%s (unfinished until %s is set)", run_key,
                 self._name, raw["version"], TAG_COMPLETE)
        return raw

    def _finish_run(self, run_id: str) -> None:
        """Mark the registration's MLflow run finished (cosmetic: a failure is a warning)."""
        try:
            self.client.call("POST", "runs/update", body={
                "run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)})
        except MlflowError as exc:
            log.warning("registry: could not mark MLflow run %s finished: %s", run_id, exc)

    def _put(self, pending: PendingVersion, name: str, source: Path | bytes) -> dict[str, Any]:
        """Upload one file of an unfinished version; its manifest entry.

        Raises:
            ImmutableVersionError: if the version is complete. MLflow's artifact proxy itself
                would overwrite: this check and the SHA-256 on every read are what keep a
                version immutable here (docs/registry.md).
        """
        raw = self._raw_version(pending.version)
        tags = self._tags(raw) if raw is not None else {}
        if tags.get(TAG_COMPLETE):
            raise ImmutableVersionError(f"{pending.uri} is complete and immutable: refusing to "
                                        f"write {name!r}")
        if tags.get(TAG_RUN_KEY) != pending.run_key:
            raise RegistryError(f"{pending.uri} is not a version of run {pending.run_key!r}")
        path = f"{tags[TAG_ARTIFACTS]}/{MODEL_PATH if name == MODEL_FILE else name}"
        started = time.monotonic()
        try:
            self.client.put_artifact(path, source)
        except MlflowError as exc:
            raise RegistryError(str(exc)) from None
        if isinstance(source, bytes):
            entry = {"sha256": _sha(source), "size": len(source)}
        else:
            digest, size = _file_sha(source)
            entry = {"sha256": digest, "size": size}
        log.debug("registry: uploaded %s (%d bytes) in %.2f s", path, entry["size"],
                  time.monotonic() - started)
        return entry


def _summary_tags(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The few metadata fields MLflow's UI shows as version tags; the rest is metadata.json."""
    run = metadata.get("run") or {}
    lineage = metadata.get("lineage") or {}
    values = {
        "mnist.run_id": run.get("run_id") if isinstance(run, Mapping) else None,
        "mnist.test_accuracy": (metadata.get("metrics") or {}).get("test_accuracy"),
        "mnist.gate_decision": (metadata.get("gate") or {}).get("decision"),
        "mnist.dataset_version": lineage.get("dataset_version")
        if isinstance(lineage, Mapping) else None,
        "mnist.code_version": metadata.get("code_version"),
    }
    return {key: str(value) for key, value in values.items() if value is not None}


def _mlflow_backed(registry: MlflowRegistry) -> ModelRegistry:
    # mypy (make lint) checks here that the MLflow-backed registry implements the protocol.
    return registry
