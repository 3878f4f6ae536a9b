"""What the pipeline needs from a model registry, whichever backend keeps it.

The :class:`ModelRegistry` protocol, the values it passes (``VersionInfo``, ``AliasRecord``,
``PendingVersion``), the errors it raises and the name rules every backend enforces. The stages
(check, gate, register), scoring, the Models page and the registry CLI are typed with it;
:class:`mnist_tasks.registry.Registry` (versions and aliases in a
:class:`~mnist_tasks.storage.Store`) is one implementation, and another backend is one module
that imports what it shares from here::

    def champion_accuracy(registry: ModelRegistry) -> float | None:
        number = registry.get_alias(CHAMPION)
        return registry.get(number).test_accuracy if number is not None else None

What each method promises (idempotence, compare-and-swap, what is verified) is in
docs/registry.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any, Protocol, runtime_checkable

CHAMPION = "champion"
MODEL_FILE = "model.keras"
# Names the registry writes itself in a version; reserved in every backend, so a version's
# files mean the same wherever it is kept.
METADATA_FILE = "metadata.json"
MANIFEST_FILE = "MANIFEST.json"
CLAIM_FILE = "claim.json"
RESERVED_FILES = frozenset({METADATA_FILE, MANIFEST_FILE, CLAIM_FILE})
MAX_VERSION = 999_999  # six digits: the store-backed registry's folders are zero-padded

_MODEL_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")  # same rule as PipelineConfig
_ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_RUN_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=@+-]{0,199}")  # what config.run_key makes
_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_VERSION_RE = re.compile(r"[0-9]{1,6}")


# --- errors ---------------------------------------------------------------------------------------


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


# --- names from outside ---------------------------------------------------------------------------


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


# --- values ---------------------------------------------------------------------------------------


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
    """One numbered version as a backend's ``scan`` finds it.

    ``status`` is ``ok`` (complete; ``info`` is set), ``corrupted`` (it has a manifest, but
    the manifest or metadata is malformed or does not match; ``reason`` says which object),
    ``foreign`` (a version this pipeline did not register, e.g. one made by hand in MLflow:
    listed, never promoted or scored),
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


def file_contents(files: Mapping[str, FileSource], pending: PendingVersion
                  ) -> Iterator[tuple[str, bytes | Path]]:
    """Each file of a version being registered, as bytes or a path, the model first (the
    largest object, and what a verifier needs); a callable source is called with ``pending``.

    Raises:
        TypeError: naming the file, for a source that is not a Path, bytes or such a callable.
    """
    for name in sorted(files, key=lambda n: (n != MODEL_FILE, n)):
        source = files[name]
        if callable(source):
            source = source(pending)
        if not isinstance(source, bytes | Path):
            raise TypeError(f"file {name!r}: expected a Path, bytes or a callable returning "
                            f"bytes, got {type(source).__name__}")
        yield name, source


# --- the protocol ---------------------------------------------------------------------------------


@runtime_checkable
class ModelRegistry(Protocol):
    """Numbered, immutable versions of one model, and aliases (``champion``) that point at them.

    Versions are ``int`` or their decimal string (``"3"``); a bad one raises ``InvalidName``.
    """

    @property
    def model_name(self) -> str:
        """The registered model's name."""

    @property
    def uri(self) -> str:
        """Where this model's registry lives; every version's ``uri`` starts with it + ``/``."""

    @property
    def store_uri(self) -> str:
        """The ``--store`` that ``python -m mnist_tasks.registry`` needs to reach it."""

    # versions ----------------------------------------------------------------------------------

    def get(self, version: int | str) -> VersionInfo:
        """A complete version. Raises ``VersionNotFound``, ``CorruptedVersion``."""

    def exists(self, version: int | str) -> bool:
        """Whether the version is complete (visible to readers)."""

    def list_versions(self) -> list[VersionInfo]:
        """The complete, readable versions, oldest first (corrupted ones left out, logged)."""

    def latest(self) -> VersionInfo | None:
        """The newest complete version, or None."""

    def scan(self, *, include_incomplete: bool = False) -> list[VersionEntry]:
        """Every version with its status, oldest first (``include_incomplete``: also those
        whose registration has not finished)."""

    def version_for_run(self, run_key: str) -> VersionInfo | None:
        """The complete version a run registered, or None."""

    def model_uri(self, version: int | str) -> str:
        """The URI of a complete version's model. Raises ``VersionNotFound``."""

    # aliases -----------------------------------------------------------------------------------

    def alias_record(self, alias: str) -> AliasRecord | None:
        """The alias with its rollback stack and history, or None when it is not set."""

    def get_alias(self, alias: str) -> int | None:
        """The version the alias points at, or None."""

    def aliases(self) -> dict[str, int]:
        """Every alias and its version."""

    def set_alias(
        self, alias: str, version: int | str, *, expected: int | EllipsisType | None = ...
    ) -> AliasRecord:
        """Point the alias at a complete version by compare-and-swap (``expected``: the version
        it must point at now, None: must be unset, ``...``: any). Raises ``AliasConflict``."""

    def promote(self, version: int | str) -> AliasRecord:
        """``set_alias("champion", version)``."""

    def rollback(self, alias: str = CHAMPION) -> AliasRecord:
        """Move the alias back to the version it replaced. Raises ``RegistryError`` if none."""

    # model bytes, verified against what was registered -----------------------------------------

    def fetch_model(self, version: int | str, dest_dir: str | os.PathLike[str]) -> Path:
        """Download a complete version's model file into ``dest_dir``; its path."""

    def fetch_pending_model(
        self, pending: PendingVersion, dest_dir: str | os.PathLike[str]
    ) -> Path:
        """Download the model of a version being registered (what a verifier loads)."""

    def read_file(self, version: int | str, name: str) -> bytes:
        """One small file of a complete version. Raises ``RegistryError`` if not registered."""

    def download(self, version: int | str, dest_dir: str | os.PathLike[str]) -> Path:
        """Every file of a complete version into ``dest_dir``; the folder."""

    # registering -------------------------------------------------------------------------------

    def register(
        self,
        run_key: str,
        files: Mapping[str, FileSource],
        metadata: Mapping[str, Any],
        *,
        verify: Verifier | None = None,
    ) -> VersionInfo:
        """Store a new version, idempotent per ``run_key``; ``verify`` is called with the
        :class:`PendingVersion` before the version becomes visible, and may raise to keep it
        invisible."""
