"""The model registry: numbered, immutable versions with manifests, and aliases moved by CAS.

Everything goes through a :class:`~mnist_tasks.storage.Store`, so the registry behaves the same
on ``file://`` and ``s3://``. Layout under ``registry/<model-name>/`` (see docs/registry.md):

* ``versions/<NNNNNN>/claim.json``: the version number, claimed with ``write_if_absent``;
* ``versions/<NNNNNN>/model.keras``, ``metadata.json``, ``metrics.json``, plots, report,
  ``model_card.md``; then ``MANIFEST.json``, written last. A version exists for readers only
  once its manifest does; a version with a manifest is never written again;
* ``runs/<run-key>.json``: which version a run created, so registering a run again returns it;
* ``aliases/<alias>.json``: e.g. ``champion``, moved by compare-and-swap, with its history.

The command line (``python -m mnist_tasks.registry list|show|promote|rollback|download``) is
:mod:`mnist_tasks.registry_cli`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any

from mnist_tasks.artifacts import json_default, utc_now
from mnist_tasks.config import DEFAULT_MODEL_NAME
from mnist_tasks.storage import ObjectNotFound, Store

log = logging.getLogger(__name__)

CHAMPION = "champion"
MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
MANIFEST_FILE = "MANIFEST.json"
CLAIM_FILE = "claim.json"
RESERVED_FILES = frozenset({METADATA_FILE, MANIFEST_FILE, CLAIM_FILE})

MAX_VERSION = 999_999  # version folders are six zero-padded digits
MAX_CLAIM_ATTEMPTS = 1000  # lost races while claiming a number, before giving up
HISTORY_LIMIT = 1000  # alias moves kept in an alias object (newest kept)
PREVIOUS_LIMIT = 100  # depth of the rollback stack
SCHEMA = 1

_MODEL_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")  # same rule as PipelineConfig
_ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_RUN_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=@+-]{0,199}")  # what config.run_key makes
_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_VERSION_RE = re.compile(r"[0-9]{1,6}")


class RegistryError(RuntimeError):
    """A registry operation failed; the message names the model, version or alias."""


class InvalidName(RegistryError, ValueError):
    """A model name, version, alias, run key or file name from outside is malformed."""


class VersionNotFound(RegistryError, LookupError):
    """The version does not exist, or is not complete (no manifest yet)."""


class ImmutableVersionError(RegistryError):
    """An attempt to write into a version that is already complete."""


class AliasConflict(RegistryError):
    """An alias did not hold the expected version, or kept changing under us."""


class CorruptedVersion(RegistryError):
    """A complete version whose manifest or metadata is malformed or does not match."""


# --- validation of outside inputs -------------------------------------------------------------


def _check_name(kind: str, value: object, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value:
        raise InvalidName(f"invalid {kind} {value!r}: {rule}")
    return value


def validate_model_name(name: object) -> str:
    """Return ``name`` if it is a valid model name, else raise :class:`InvalidName`."""
    return _check_name("model name", name, _MODEL_NAME_RE,
                       "must be 1-63 lowercase letters, digits, '.', '_' or '-', "
                       "starting with a letter or digit")


def validate_alias(alias: object) -> str:
    """Return ``alias`` if it is a valid alias name, else raise :class:`InvalidName`."""
    return _check_name("alias", alias, _ALIAS_RE,
                       "must be 1-63 lowercase letters, digits, '_' or '-', starting with a letter")


def validate_run_key(run_key: object) -> str:
    """Return ``run_key`` if it is a storage-safe run key, else raise :class:`InvalidName`."""
    return _check_name("run key", run_key, _RUN_KEY_RE,
                       "must be 1-200 characters from A-Z a-z 0-9 . _ = @ + -, starting with a "
                       "letter or digit (use mnist_tasks.config.run_key(run_id))")


def validate_file_name(name: object) -> str:
    """Return ``name`` if it may be stored in a version folder, else raise :class:`InvalidName`."""
    _check_name("file name", name, _FILE_RE,
                "must be one path segment of letters, digits, '.', '_' or '-'")
    if name in RESERVED_FILES:
        raise InvalidName(f"invalid file name {name!r}: reserved for the registry")
    assert isinstance(name, str)
    return name


def parse_version(value: object) -> int:
    """The version number in ``value`` (an int, or a string of digits such as ``"3"``).

    Raises:
        InvalidName: for anything else (signs, letters, ``../``, 0, more than six digits).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _VERSION_RE.fullmatch(value):
        number = int(value)
    else:
        raise InvalidName(
            f"invalid version {value!r}: must be a positive whole number (digits only, e.g. 3)"
        )
    if not 1 <= number <= MAX_VERSION:
        raise InvalidName(f"invalid version {value!r}: must be between 1 and {MAX_VERSION}")
    return number


# --- small helpers ------------------------------------------------------------------------------


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n").encode()


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that shape a model, read from installed metadata.

    Never imports the packages themselves (importing TensorFlow takes seconds).

    Returns:
        ``python``, ``keras``, ``tensorflow``, ``jax``, ``numpy``, ``scikit-learn``: a version
        string, or None when not installed.
    """
    from importlib import metadata

    def version(*dists: str) -> str | None:
        for dist in dists:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return None

    return {
        "python": platform.python_version(),
        "keras": version("keras"),
        "tensorflow": version("tensorflow", "tensorflow-cpu", "tensorflow_cpu"),
        "jax": version("jax"),
        "numpy": version("numpy"),
        "scikit-learn": version("scikit-learn"),
    }


# --- public value types -------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionInfo:
    """One complete (visible) version, as its manifest and metadata describe it."""

    model_name: str
    version: int
    run_key: str
    created_at: str
    uri: str  # the version folder
    model_uri: str
    files: Mapping[str, Mapping[str, Any]]  # name -> {"sha256": ..., "size": ...}
    metadata: Mapping[str, Any] = field(repr=False)

    @property
    def test_accuracy(self) -> float | None:
        """The test accuracy recorded at registration, if any."""
        value = (self.metadata.get("metrics") or {}).get("test_accuracy")
        return float(value) if value is not None else None

    @property
    def gate_decision(self) -> str | None:
        """PROMOTE or REJECT as recorded at registration, if any."""
        value = (self.metadata.get("gate") or {}).get("decision")
        return str(value) if value is not None else None

    @property
    def approval(self) -> Mapping[str, Any] | None:
        """The approval step's record (who decided, when, the comment, whether it was an
        override of the gate's REJECT), if a person was asked."""
        value = self.metadata.get("approval")
        return value if isinstance(value, Mapping) and value.get("asked") else None

    @property
    def overridden(self) -> bool:
        """Whether a person promoted this version over the gate's REJECT."""
        return bool(self.approval and self.approval.get("override"))

    @property
    def run_id(self) -> str | None:
        """The Airflow (or CLI) run id that produced this version, if recorded."""
        value = (self.metadata.get("run") or {}).get("run_id")
        return str(value) if value is not None else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (metadata included)."""
        return {
            "model_name": self.model_name,
            "version": self.version,
            "run_key": self.run_key,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "test_accuracy": self.test_accuracy,
            "gate_decision": self.gate_decision,
            "approval": dict(self.approval) if self.approval else None,
            "override": self.overridden,
            "uri": self.uri,
            "model_uri": self.model_uri,
            "files": {k: dict(v) for k, v in self.files.items()},
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class AliasRecord:
    """An alias and where it has been.

    ``previous`` is the rollback stack (the most recent former target last); ``history`` is
    every move, oldest first, each ``{"seq", "version", "action", "at", "token"}`` where action
    is ``set`` or ``rollback``.
    """

    alias: str
    version: int
    previous: tuple[int, ...]
    history: tuple[Mapping[str, Any], ...]
    updated_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "version": self.version,
            "previous": list(self.previous),
            "history": [dict(h) for h in self.history],
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class PendingVersion:
    """A claimed version being written: what late-rendered files and the verifier are given."""

    model_name: str
    version: int
    run_key: str
    created_at: str
    uri: str
    model_uri: str


@dataclass(frozen=True)
class VersionEntry:
    """One numbered version folder as :meth:`Registry.scan` finds it.

    ``status`` is ``ok`` (complete; ``info`` is set), ``corrupted`` (it has a manifest, but
    the manifest or metadata is malformed or does not match; ``reason`` says which object),
    ``incomplete`` (claimed by a run whose registration has not finished: the run's retry
    resumes it) or ``abandoned`` (a claim its run gave up: it lost a race for its run record,
    or died before recording it; the number stays a gap, never reused).
    """

    version: int
    status: str
    info: VersionInfo | None = None
    reason: str | None = None
    run_key: str | None = None
    claimed_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (the version's own summary when it is ``ok``)."""
        if self.info is not None:
            return {**self.info.to_dict(), "status": self.status, "reason": self.reason}
        return {"version": self.version, "status": self.status, "reason": self.reason,
                "run_key": self.run_key, "claimed_at": self.claimed_at}


# A file to store: a local path, bytes, or a function of the pending version (e.g. a model card
# that names its own version number).
FileSource = Path | bytes | Callable[[PendingVersion], bytes]
Verifier = Callable[[PendingVersion], Mapping[str, Any] | None]


# --- the registry -------------------------------------------------------------------------------


class Registry:
    """The versions and aliases of one model in a store.

    Args:
        store: where the registry lives (under ``registry/<model_name>/``).
        model_name: validated with :func:`validate_model_name`.
        cas_retries: attempts for an alias compare-and-swap before :class:`AliasConflict`.

    Raises:
        InvalidName: for a bad model name.
    """

    def __init__(
        self, store: Store, model_name: str = DEFAULT_MODEL_NAME, *, cas_retries: int = 10
    ) -> None:
        self.store = store
        self.model_name = validate_model_name(model_name)
        self.prefix = f"registry/{self.model_name}"
        self.uri = store.uri_for(self.prefix)
        self.cas_retries = max(1, int(cas_retries))

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    @property
    def store_uri(self) -> str:
        """The store's URI: what ``python -m mnist_tasks.registry --store`` takes."""
        return self.store.uri

    # keys --------------------------------------------------------------------------------------

    def _version_dir(self, version: int) -> str:
        return f"{self.prefix}/versions/{version:06d}"

    def _key(self, version: int, name: str) -> str:
        return f"{self._version_dir(version)}/{name}"

    def _run_key_path(self, run_key: str) -> str:
        return f"{self.prefix}/runs/{run_key}.json"

    def _alias_key(self, alias: str) -> str:
        return f"{self.prefix}/aliases/{alias}.json"

    def _pending(self, version: int, run_key: str, created_at: str) -> PendingVersion:
        return PendingVersion(
            model_name=self.model_name,
            version=version,
            run_key=run_key,
            created_at=created_at,
            uri=self.store.uri_for(self._version_dir(version)),
            model_uri=self.store.uri_for(self._key(version, MODEL_FILE)),
        )

    # reading -----------------------------------------------------------------------------------

    def _folders(self) -> dict[int, set[str]]:
        """Every numbered version folder and the names of the objects in it."""
        base = f"{self.prefix}/versions/"
        found: dict[int, set[str]] = {}
        for key in self.store.list(f"{self.prefix}/versions"):
            folder, _, rest = key[len(base):].partition("/")
            if len(folder) == 6 and folder.isdigit() and int(folder) >= 1:
                found.setdefault(int(folder), set()).add(rest)
        return dict(sorted(found.items()))

    def _claimed_numbers(self) -> list[int]:
        return list(self._folders())

    def _read_json(self, key: str) -> Any:
        data = self.store.read_bytes(key)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise RegistryError(f"{self.store.uri_for(key)}: not valid JSON ({exc})") from None

    def _read_object(self, key: str, error: type[RegistryError] = RegistryError) -> dict[str, Any]:
        """A registry JSON object; ``error`` naming it if it is not valid JSON or not an object."""
        try:
            obj = self._read_json(key)
        except ObjectNotFound:
            raise
        except RegistryError as exc:
            raise error(str(exc)) from None
        if not isinstance(obj, dict):
            raise error(f"{self.store.uri_for(key)}: expected a JSON object, found "
                        f"{type(obj).__name__}")
        return obj

    def get(self, version: int | str) -> VersionInfo:
        """The complete version ``version``.

        Raises:
            InvalidName: for a malformed version.
            VersionNotFound: if it does not exist or has no manifest (incomplete).
            CorruptedVersion: if its manifest or metadata is malformed, or the metadata does
                not match the manifest; the message names the object.
        """
        number = parse_version(version)
        manifest_key = self._key(number, MANIFEST_FILE)
        try:
            manifest = self._read_object(manifest_key, CorruptedVersion)
        except ObjectNotFound:
            raise VersionNotFound(
                f"model {self.model_name!r} has no version {number} "
                f"(not registered, or its registration never completed) in {self.uri}"
            ) from None
        where = self.store.uri_for(manifest_key)
        objects = manifest.get("objects")
        if not isinstance(objects, dict) or not all(
                isinstance(e, dict) and isinstance(e.get("sha256"), str)
                and isinstance(e.get("size"), int) for e in objects.values()):
            raise CorruptedVersion(f"{where}: 'objects' must map each file name to its "
                                   "sha256 and size (the version is corrupted)")
        for field_name in ("run_key", "created_at"):
            if not isinstance(manifest.get(field_name), str):
                raise CorruptedVersion(f"{where}: {field_name!r} is missing or not a string "
                                       "(the version is corrupted)")
        if manifest.get("version", number) != number:
            raise CorruptedVersion(f"{where}: records version {manifest.get('version')!r}, "
                                   f"not {number} (the version is corrupted)")
        meta_key = self._key(number, METADATA_FILE)
        try:
            meta_bytes = self.store.read_bytes(meta_key)
        except ObjectNotFound:
            raise CorruptedVersion(f"{self.store.uri_for(meta_key)}: missing "
                                   "(the version is corrupted)") from None
        expected = (objects.get(METADATA_FILE) or {}).get("sha256")
        if hashlib.sha256(meta_bytes).hexdigest() != expected:
            raise CorruptedVersion(
                f"{self.store.uri_for(meta_key)}: content does not match its manifest "
                "(the version is corrupted)"
            )
        try:
            metadata = json.loads(meta_bytes)
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict):
            raise CorruptedVersion(f"{self.store.uri_for(meta_key)}: not a JSON object "
                                   "(the version is corrupted)")
        return VersionInfo(
            model_name=self.model_name,
            version=number,
            run_key=manifest["run_key"],
            created_at=manifest["created_at"],
            uri=self.store.uri_for(self._version_dir(number)),
            model_uri=self.store.uri_for(self._key(number, MODEL_FILE)),
            files={name: dict(entry) for name, entry in objects.items()},
            metadata=metadata,
        )

    def exists(self, version: int | str) -> bool:
        """Whether version ``version`` is complete (has its manifest)."""
        return self.store.exists(self._key(parse_version(version), MANIFEST_FILE))

    def scan(self, *, include_incomplete: bool = False) -> list[VersionEntry]:
        """Every version folder with its status, oldest first; one bad version never hides
        the others.

        Args:
            include_incomplete: also report claimed numbers without a manifest, as
                ``incomplete`` (its run may still complete it) or ``abandoned`` (a gap).
        """
        entries = []
        for number, names in self._folders().items():
            if MANIFEST_FILE in names:
                try:
                    entries.append(VersionEntry(number, "ok", info=self.get(number)))
                except (RegistryError, ObjectNotFound) as exc:
                    entries.append(VersionEntry(number, "corrupted", reason=str(exc)))
            elif include_incomplete:
                entries.append(self._unfinished(number))
        return entries

    def _unfinished(self, number: int) -> VersionEntry:
        """A claimed version without a manifest: ``incomplete`` or ``abandoned``."""
        claim_key = self._key(number, CLAIM_FILE)
        try:
            claim = self._read_object(claim_key)
        except ObjectNotFound:
            return VersionEntry(number, "abandoned",
                                reason=f"{self.store.uri_for(claim_key)} is missing")
        except RegistryError as exc:
            return VersionEntry(number, "corrupted", reason=str(exc))
        run_key = claim.get("run_key")
        claimed_at = claim.get("created_at")
        if not isinstance(run_key, str) or not _RUN_KEY_RE.fullmatch(run_key):
            return VersionEntry(number, "corrupted",
                                reason=f"{self.store.uri_for(claim_key)}: no valid run_key")
        base = VersionEntry(number, "abandoned", run_key=run_key,
                            claimed_at=str(claimed_at) if claimed_at is not None else None)
        try:
            recorded: int | None = self._run_record_version(run_key)
        except ObjectNotFound:
            recorded = None
        except RegistryError as exc:
            return VersionEntry(number, "corrupted", reason=str(exc), run_key=run_key)
        if recorded == number:
            return VersionEntry(number, "incomplete", run_key=run_key,
                                claimed_at=base.claimed_at,
                                reason=f"run {run_key} has not completed it; a retry of the "
                                       "run resumes it")
        why = (f"run {run_key} registered as v{recorded} instead (lost a race for its run "
               "record)" if recorded is not None else
               f"run {run_key} never recorded it (died or lost a race before its run record)")
        return VersionEntry(number, "abandoned", run_key=run_key, claimed_at=base.claimed_at,
                            reason=f"{why}; the number stays unused")

    def list_versions(self) -> list[VersionInfo]:
        """Every complete version, oldest first; incomplete ones are left out, and corrupted
        ones too (with a warning; :meth:`scan` reports them)."""
        infos = []
        for entry in self.scan():
            if entry.info is not None:
                infos.append(entry.info)
            else:
                log.warning("registry: %s v%d is corrupted and left out: %s",
                            self.model_name, entry.version, entry.reason)
        return infos

    def latest(self) -> VersionInfo | None:
        """The newest complete (and readable) version, or None if there is none."""
        infos = self.list_versions()
        return infos[-1] if infos else None

    def model_uri(self, version: int | str) -> str:
        """The URI of the version's ``model.keras``.

        Raises:
            VersionNotFound: if the version is not complete.
        """
        number = parse_version(version)
        if not self.exists(number):
            self.get(number)  # raises VersionNotFound with the full message
        return self.store.uri_for(self._key(number, MODEL_FILE))

    def _run_record_version(self, run_key: str) -> int:
        """The version in run ``run_key``'s record (ObjectNotFound if it has none)."""
        key = self._run_key_path(run_key)
        record = self._read_object(key)
        number = record.get("version")
        if not isinstance(number, int) or isinstance(number, bool) or \
                not 1 <= number <= MAX_VERSION:
            raise RegistryError(f"{self.store.uri_for(key)}: 'version' is {number!r}, not a "
                                "version number (the run record is corrupted)")
        return number

    def version_for_run(self, run_key: str) -> VersionInfo | None:
        """The complete version that run ``run_key`` registered, or None."""
        try:
            number = self._run_record_version(validate_run_key(run_key))
        except ObjectNotFound:
            return None
        return self.get(number) if self.exists(number) else None

    def download(self, version: int | str, dest_dir: str | os.PathLike[str]) -> Path:
        """Copy every object of the version (and its manifest) into ``dest_dir``, verified.

        Returns:
            ``dest_dir`` as a Path.

        Raises:
            VersionNotFound: if the version is not complete.
            RegistryError: if a downloaded object does not match its SHA-256 or size.
        """
        info = self.get(version)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for name in info.files:
            self._fetch_verified(info, name, dest / name)
        self.store.download_file(self._key(info.version, MANIFEST_FILE), dest / MANIFEST_FILE)
        log.info("registry: downloaded %s v%d (%d objects, verified) to %s",
                 self.model_name, info.version, len(info.files), dest)
        return dest

    def fetch_model(self, version: int | str, dest_dir: str | os.PathLike[str]) -> Path:
        """Download only the version's ``model.keras`` into ``dest_dir``, verified.

        Returns:
            The path of the downloaded model file.

        Raises:
            VersionNotFound: if the version is not complete.
            RegistryError: if the file does not match its manifest.
        """
        info = self.get(version)
        return self._fetch_verified(info, MODEL_FILE, Path(dest_dir) / MODEL_FILE)

    def fetch_pending_model(
        self, pending: PendingVersion, dest_dir: str | os.PathLike[str]
    ) -> Path:
        """Download the ``model.keras`` of a version being registered (before its manifest)
        into ``dest_dir``: what a verifier loads.

        Returns:
            The path of the downloaded model file.

        Raises:
            RegistryError: if ``pending`` is not a version of this registry.
            ObjectNotFound: if its model has not been written.
        """
        if pending.model_name != self.model_name or pending.model_uri != self.store.uri_for(
                self._key(pending.version, MODEL_FILE)):
            raise RegistryError(f"{pending.model_uri} is not a pending version of {self.uri}")
        dest = Path(dest_dir) / MODEL_FILE
        self.store.download_file(self._key(pending.version, MODEL_FILE), dest)
        return dest

    def read_file(self, version: int | str, name: str) -> bytes:
        """One small object of a complete version, checked against its manifest.

        Raises:
            VersionNotFound: if the version is not complete.
            RegistryError: if the manifest lists no such file, or the bytes do not match it.
        """
        info = self.get(version)
        entry = info.files.get(name)
        if entry is None:
            raise RegistryError(f"{info.uri}: the manifest lists no {name!r}")
        key = self._key(info.version, validate_file_name(name))
        data = self.store.read_bytes(key)
        if hashlib.sha256(data).hexdigest() != entry.get("sha256") or len(data) != entry.get(
                "size"):
            raise RegistryError(f"{self.store.uri_for(key)}: does not match the manifest's "
                                "SHA-256 and size; the version is corrupted")
        return data

    def _fetch_verified(self, info: VersionInfo, name: str, dest: Path) -> Path:
        entry = info.files.get(name)
        if entry is None:
            raise RegistryError(f"{info.uri}: the manifest lists no {name!r}")
        key = self._key(info.version, name if name == METADATA_FILE else validate_file_name(name))
        self.store.download_file(key, dest)
        digest, size = _sha256_file(dest)
        if digest != entry.get("sha256") or size != entry.get("size"):
            dest.unlink(missing_ok=True)
            raise RegistryError(
                f"{self.store.uri_for(key)}: SHA-256/size {digest[:12]}…/{size} does not match "
                f"the manifest ({str(entry.get('sha256'))[:12]}…/{entry.get('size')}); "
                "the version is corrupted"
            )
        return dest

    # registering -------------------------------------------------------------------------------

    def register(
        self,
        run_key: str,
        files: Mapping[str, FileSource],
        metadata: Mapping[str, Any],
        *,
        verify: Verifier | None = None,
    ) -> VersionInfo:
        """Store ``files`` and ``metadata`` as a new version; idempotent per ``run_key``.

        The version number is claimed first; then every file is written, ``verify`` (if given)
        is called with the pending version (it may load the stored model and raise), then
        ``metadata.json`` (with ``verification`` set to what ``verify`` returned) and finally
        ``MANIFEST.json``. Until the manifest exists no reader sees the version.

        Registering the same run again returns the version it created; if an earlier attempt
        died before the manifest, this call completes that same version.

        Args:
            run_key: the run's storage key (:func:`mnist_tasks.config.run_key`).
            files: name -> local path, bytes, or a function of the :class:`PendingVersion`
                returning bytes. Must include ``model.keras``. Names are single segments;
                ``metadata.json``, ``MANIFEST.json`` and ``claim.json`` are reserved.
            metadata: JSON-serialisable; stored as ``metadata.json`` together with
                ``model_name``, ``version``, ``run_key`` and ``created_at``.
            verify: called after the files are written, before the version becomes visible.

        Returns:
            The complete version.

        Raises:
            InvalidName: for a bad run key or file name.
            ValueError: if ``model.keras`` is missing from ``files``.
            TypeError: if ``metadata`` is not JSON-serialisable.
            RegistryError: on conflicts that cannot be resolved (see docs/registry.md).
            StorageError: if the store fails; the version stays invisible and a retry resumes.
            Exception: whatever ``verify`` raises; the version stays invisible.
        """
        run_key = validate_run_key(run_key)
        for name in files:
            validate_file_name(name)
        if MODEL_FILE not in files:
            raise ValueError(f"register({run_key!r}): files must include {MODEL_FILE!r}")
        try:  # fail before claiming anything
            _dumps(dict(metadata))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"register({run_key!r}): metadata is not JSON-serialisable: {exc}") \
                from None

        number = self._resume_or_claim(run_key)
        claim = self._read_object(self._key(number, CLAIM_FILE))
        if claim.get("run_key") != run_key:
            raise RegistryError(
                f"{self.uri}: run {run_key!r} is recorded against version {number}, which was "
                f"claimed by run {claim.get('run_key')!r}; the registry is inconsistent"
            )
        if self.exists(number):
            info = self.get(number)
            if info.run_key != run_key:
                raise RegistryError(f"{info.uri}: belongs to run {info.run_key!r}, not {run_key!r}")
            log.info("registry: run %s already registered as %s v%d; nothing to do",
                     run_key, self.model_name, number)
            return info
        return self._write_version(self._pending(number, run_key, str(claim.get("created_at"))),
                                   files, metadata, verify)

    def _resume_or_claim(self, run_key: str) -> int:
        """The version this run owns: the one it claimed earlier, or a newly claimed one."""
        record_key = self._run_key_path(run_key)
        try:
            return self._run_record_version(run_key)
        except ObjectNotFound:
            pass
        number = self._claim_number(run_key)
        token = uuid.uuid4().hex
        record = {"run_key": run_key, "version": number, "token": token, "claimed_at": utc_now()}
        self.store.write_if_absent(record_key, _dumps(record))
        # Whatever the write answered, the record now decides: our token means it is ours,
        # also when the reply was lost and a retried PUT was refused (412) by our own write.
        current = self._read_object(record_key)
        if current.get("token") == token:
            log.info("registry: run %s claimed %s v%d", run_key, self.model_name, number)
            return number
        # Another attempt of the same run got there first: use its version; ours is left as
        # an abandoned claim (invisible: it never gets a manifest; `list --all` shows it).
        winner = self._run_record_version(run_key)
        log.warning("registry: run %s was claimed concurrently (v%d); leaving claim v%d unused",
                    run_key, winner, number)
        return winner

    def _claim_number(self, run_key: str) -> int:
        claimed = self._claimed_numbers()
        number = (claimed[-1] if claimed else 0) + 1
        for _ in range(MAX_CLAIM_ATTEMPTS):
            if number > MAX_VERSION:
                raise RegistryError(f"{self.uri}: no version numbers left (max {MAX_VERSION})")
            token = uuid.uuid4().hex
            claim = {
                "model_name": self.model_name,
                "version": number,
                "run_key": run_key,
                "token": token,
                "created_at": utc_now(),
            }
            key = self._key(number, CLAIM_FILE)
            # Read back whatever the write answered: the token decides. A refused write may
            # be our own (its reply lost, the retried PUT refused with 412); a successful one
            # may have been overwritten (some S3-compatible servers check the condition and
            # write in two steps).
            self.store.write_if_absent(key, _dumps(claim))
            try:
                if self._read_object(key).get("token") == token:
                    return number
            except (ObjectNotFound, RegistryError):
                pass  # unreadable claim: not ours, the number is taken
            number += 1
        raise RegistryError(f"{self.uri}: could not claim a version number after "
                            f"{MAX_CLAIM_ATTEMPTS} attempts")

    def _put(self, pending: PendingVersion, name: str, source: Path | bytes) -> dict[str, Any]:
        """Write one object of an incomplete version; return its manifest entry."""
        if self.store.exists(self._key(pending.version, MANIFEST_FILE)):
            raise ImmutableVersionError(
                f"{pending.uri} is complete and immutable: refusing to write {name!r}"
            )
        key = self._key(pending.version, name)
        if isinstance(source, bytes):
            self.store.write_bytes(key, source)
            return {"sha256": hashlib.sha256(source).hexdigest(), "size": len(source)}
        digest, size = _sha256_file(source)
        self.store.upload_file(source, key)
        return {"sha256": digest, "size": size}

    def _write_version(
        self,
        pending: PendingVersion,
        files: Mapping[str, FileSource],
        metadata: Mapping[str, Any],
        verify: Verifier | None,
    ) -> VersionInfo:
        token = uuid.uuid4().hex
        try:
            manifest = self._write_objects(pending, files, metadata, verify)
            manifest["token"] = token
            key = self._key(pending.version, MANIFEST_FILE)
            written = self.store.write_if_absent(key, _dumps(manifest))
        except ImmutableVersionError:
            written = False  # completed meanwhile: by another attempt of this run, we check
        if not written:
            existing = self._read_object(self._key(pending.version, MANIFEST_FILE),
                                         CorruptedVersion)
            if existing.get("run_key") != pending.run_key:
                raise RegistryError(f"{pending.uri}: completed concurrently by run "
                                    f"{existing.get('run_key')!r}, not {pending.run_key!r}")
            if existing.get("token") == token:  # our write; only its reply was lost
                log.info("registry: %s v%d manifest written (the store's reply was lost; "
                         "read back)", self.model_name, pending.version)
            else:
                log.info("registry: %s v%d was completed by a concurrent attempt of run %s",
                         self.model_name, pending.version, pending.run_key)
        info = self.get(pending.version)
        log.info("registry: registered %s v%d for run %s (%d objects) at %s",
                 self.model_name, info.version, info.run_key, len(info.files), info.uri)
        return info

    def _write_objects(
        self,
        pending: PendingVersion,
        files: Mapping[str, FileSource],
        metadata: Mapping[str, Any],
        verify: Verifier | None,
    ) -> dict[str, Any]:
        """Write every object of the version except the manifest; return the manifest."""
        objects: dict[str, dict[str, Any]] = {}
        # The model first: it is the largest object and what the verifier needs.
        for name in sorted(files, key=lambda n: (n != MODEL_FILE, n)):
            source = files[name]
            if callable(source):
                source = source(pending)
            if not isinstance(source, bytes | Path):
                raise TypeError(f"file {name!r}: expected a Path, bytes or a callable returning "
                                f"bytes, got {type(source).__name__}")
            objects[name] = self._put(pending, name, source)
        verification = verify(pending) if verify is not None else None
        full_meta = {
            **dict(metadata),
            "schema": SCHEMA,
            "model_name": pending.model_name,
            "version": pending.version,
            "run_key": pending.run_key,
            "created_at": pending.created_at,
            "verification": dict(verification) if verification is not None else None,
        }
        objects[METADATA_FILE] = self._put(pending, METADATA_FILE, _dumps(full_meta))
        return {
            "schema": SCHEMA,
            "model_name": pending.model_name,
            "version": pending.version,
            "run_key": pending.run_key,
            "created_at": pending.created_at,
            "objects": dict(sorted(objects.items())),
        }

    # aliases -----------------------------------------------------------------------------------

    def _parse_alias(self, alias: str, data: bytes) -> AliasRecord:
        where = self.store.uri_for(self._alias_key(alias))

        def number(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and \
                1 <= value <= MAX_VERSION

        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise RegistryError(f"{where}: malformed alias object (not valid JSON: {exc})") \
                from None
        if not isinstance(obj, dict):
            raise RegistryError(f"{where}: malformed alias object (not a JSON object)")
        version, previous = obj.get("version"), obj.get("previous", [])
        history = obj.get("history", [])
        if not number(version):
            raise RegistryError(f"{where}: malformed alias object ('version' is {version!r}, "
                                "not a version number)")
        assert isinstance(version, int)
        if not isinstance(previous, list) or not all(number(v) for v in previous):
            raise RegistryError(f"{where}: malformed alias object ('previous' must be a list "
                                "of version numbers)")
        if not isinstance(history, list):
            raise RegistryError(f"{where}: malformed alias object ('history' must be a list)")
        last = 0
        for i, entry in enumerate(history):
            seq = entry.get("seq") if isinstance(entry, dict) else None
            if not isinstance(seq, int) or isinstance(seq, bool) or seq <= last:
                raise RegistryError(
                    f"{where}: malformed alias object (history entry {i} has seq {seq!r}; "
                    "expected whole numbers increasing from 1)")
            if not number(entry.get("version")):
                raise RegistryError(f"{where}: malformed alias object (history entry {i} "
                                    f"has version {entry.get('version')!r})")
            last = seq
        return AliasRecord(
            alias=alias,
            version=version,
            previous=tuple(previous),
            history=tuple(history),
            updated_at=str(obj.get("updated_at", "")),
        )

    def alias_record(self, alias: str) -> AliasRecord | None:
        """The alias with its rollback stack and history, or None if it was never set."""
        key = self._alias_key(validate_alias(alias))
        try:
            return self._parse_alias(alias, self.store.read_bytes(key))
        except ObjectNotFound:
            return None

    def get_alias(self, alias: str) -> int | None:
        """The version ``alias`` points to, or None if it was never set."""
        record = self.alias_record(alias)
        return record.version if record else None

    def aliases(self) -> dict[str, int]:
        """Every alias and the version it points to."""
        base = f"{self.prefix}/aliases/"
        out = {}
        for key in self.store.list(f"{self.prefix}/aliases"):
            name = key[len(base):].removesuffix(".json")
            if key.endswith(".json") and _ALIAS_RE.fullmatch(name):
                version = self.get_alias(name)
                if version is not None:
                    out[name] = version
        return out

    def set_alias(
        self,
        alias: str,
        version: int | str,
        *,
        expected: int | EllipsisType | None = ...,
    ) -> AliasRecord:
        """Point ``alias`` at ``version`` by compare-and-swap; the old target goes on the stack.

        Args:
            alias: e.g. ``champion``.
            version: a complete version.
            expected: ``...`` (default) moves whatever the alias holds, retrying lost races;
                ``None`` requires the alias not to exist yet; a number requires the alias to
                hold that version.

        Returns:
            The alias after the move (unchanged if it already pointed at ``version``).

        Raises:
            InvalidName: for a bad alias or version.
            VersionNotFound: if the version is not complete.
            AliasConflict: if ``expected`` does not hold, or races kept being lost.
        """
        alias = validate_alias(alias)
        number = parse_version(version)

        def target(current: AliasRecord | None) -> tuple[int, str] | None:
            if expected is not ... and (current.version if current else None) != expected:
                raise AliasConflict(
                    f"alias {alias!r} of {self.model_name!r} points to "
                    f"{current.version if current else 'nothing'}, expected "
                    f"{'nothing' if expected is None else expected}; not moved"
                )
            if current is not None and current.version == number:
                return None
            return number, "set"

        return self._move_alias(alias, target)

    def promote(self, version: int | str) -> AliasRecord:
        """Make ``version`` the champion (see :meth:`set_alias`)."""
        return self.set_alias(CHAMPION, version)

    def rollback(self, alias: str = CHAMPION) -> AliasRecord:
        """Move ``alias`` back to the version it pointed to before its last move.

        Returns:
            The alias after the move.

        Raises:
            RegistryError: if the alias is not set or has no previous version.
        """
        alias = validate_alias(alias)

        def target(current: AliasRecord | None) -> tuple[int, str]:
            if current is None:
                raise RegistryError(f"alias {alias!r} of {self.model_name!r} is not set; "
                                    "nothing to roll back")
            if not current.previous:
                raise RegistryError(f"alias {alias!r} of {self.model_name!r} has no previous "
                                    f"version to roll back to (it points to {current.version})")
            return current.previous[-1], "rollback"

        return self._move_alias(alias, target)

    def _move_alias(
        self,
        alias: str,
        target: Callable[[AliasRecord | None], tuple[int, str] | None],
    ) -> AliasRecord:
        key = self._alias_key(alias)
        tokens: list[str] = []  # one per write this call made; any may have been applied
        for attempt in range(self.cas_retries):
            try:
                data, etag = self.store.read_with_etag(key)
                current: AliasRecord | None = self._parse_alias(alias, data)
            except ObjectNotFound:
                current, etag = None, ""
            mine = self._own_move(current, tokens)
            if mine is not None:
                # A write of ours was applied though we were told it failed (its reply was
                # lost, and the retried PUT met our own write: 412). Done; not moved again.
                assert current is not None
                log.info("registry: alias %s of %s -> v%d (%s; the store's reply was lost, "
                         "read back)", alias, self.model_name, mine["version"],
                         mine.get("action"))
                return current
            move = target(current)
            if move is None:
                assert current is not None
                return current
            number, action = move
            if not self.exists(number):
                raise VersionNotFound(f"cannot point alias {alias!r} at version {number} of "
                                      f"{self.model_name!r}: no such complete version")
            try:
                self.get(number)  # never point an alias at a corrupted version
            except CorruptedVersion as exc:
                raise CorruptedVersion(f"cannot point alias {alias!r} at version {number}: "
                                       f"{exc}") from None
            token = uuid.uuid4().hex
            tokens.append(token)
            now = utc_now()
            previous = list(current.previous) if current else []
            if action == "set" and current is not None:
                previous.append(current.version)
            elif action == "rollback":
                previous.pop()
            history = [dict(h) for h in current.history] if current else []
            seq = int(history[-1]["seq"]) + 1 if history else 1
            history.append({"seq": seq, "version": number, "action": action, "at": now,
                            "token": token})
            body = _dumps({
                "alias": alias,
                "model_name": self.model_name,
                "version": number,
                "previous": previous[-PREVIOUS_LIMIT:],
                "history": history[-HISTORY_LIMIT:],
                "updated_at": now,
            })
            if current is None:
                written = self.store.write_if_absent(key, body)
            else:
                written = self.store.write_if_match(key, body, etag)
            if written:
                # Belt and braces: our move must be in the alias's history now (a later mover
                # builds on it); if it is not, the server lost it and we try again.
                after = self.alias_record(alias)
                if after is not None and any(h.get("token") == token for h in after.history):
                    log.info("registry: alias %s of %s -> v%d (%s; was %s)", alias,
                             self.model_name, number, action,
                             current.version if current else "unset")
                    return self._parse_alias(alias, body)
                log.warning("registry: alias %s update was lost; retrying", alias)
            else:
                # Refused: a lost race, or our own write whose reply was lost. Re-read: if our
                # token is in the history the move is done.
                try:
                    after = self.alias_record(alias)
                except RegistryError:
                    after = None
                mine = self._own_move(after, tokens)
                if mine is not None:
                    assert after is not None
                    log.info("registry: alias %s of %s -> v%d (%s; the store's reply was "
                             "lost, read back)", alias, self.model_name, mine["version"],
                             mine.get("action"))
                    return after
            # Lost a race: back off with jitter, then re-read and try again.
            time.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))
        raise AliasConflict(f"alias {alias!r} of {self.model_name!r}: gave up after "
                            f"{self.cas_retries} attempts (it kept changing concurrently)")

    @staticmethod
    def _own_move(record: AliasRecord | None, tokens: Sequence[str]) -> Mapping[str, Any] | None:
        """The history entry of ``record`` written with one of ``tokens``, if any."""
        if record is None or not tokens:
            return None
        for entry in reversed(record.history):
            if entry.get("token") in tokens:
                return entry
        return None


if __name__ == "__main__":
    # Run as a script this file is ``__main__``, not ``mnist_tasks.registry``, so the CLI (which
    # imports the registry) is looked up by name rather than imported here.
    import importlib
    import sys

    sys.exit(importlib.import_module("mnist_tasks.registry_cli").main())
