"""What the pipeline needs from a model registry: the :class:`ModelRegistry` protocol.

The stages (check, gate, register), scoring, the Models page and the registry CLI take a
``ModelRegistry``; :class:`mnist_tasks.registry.Registry` (versions and aliases in a
:class:`~mnist_tasks.storage.Store`) is one implementation. Another backend is one module that
implements these methods with the same values and errors (:mod:`mnist_tasks.registry`'s
``VersionInfo``, ``AliasRecord``, ``PendingVersion``, ``RegistryError`` and its subclasses)::

    def champion_accuracy(registry: ModelRegistry) -> float | None:
        number = registry.get_alias(CHAMPION)
        return registry.get(number).test_accuracy if number is not None else None

What each method promises (idempotence, compare-and-swap, what is verified) is in
docs/registry.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import EllipsisType
from typing import Any, Protocol, runtime_checkable

from mnist_tasks.registry import (
    CHAMPION,
    AliasRecord,
    FileSource,
    PendingVersion,
    Registry,
    Verifier,
    VersionInfo,
)


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


def _store_backed(registry: Registry) -> ModelRegistry:
    # mypy (make lint) checks here that the store-backed Registry implements the protocol.
    return registry
