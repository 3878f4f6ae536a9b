"""The model registry in a store: numbered, immutable versions and aliases moved by CAS.

Everything goes through a :class:`~mnist_tasks.storage.Store`, so the registry behaves the same
on ``file://`` and ``s3://``. Layout under ``registry/<model-name>/`` (see docs/registry.md):

* ``versions/<NNNNNN>/claim.json``: the version number, claimed with ``write_if_absent``;
* ``versions/<NNNNNN>/model.keras``, ``metadata.json``, ``metrics.json``, plots, report,
  ``model_card.md``; then ``MANIFEST.json``, written last. A version exists for readers only
  once its manifest does; a version with a manifest is never written again;
* ``runs/<run-key>.json``: which version a run created, so registering a run again returns it;
* ``aliases/<alias>.json``: e.g. ``champion``, moved by compare-and-swap, with its history.

Reading is :mod:`mnist_tasks.registry_read`, alias moves :mod:`mnist_tasks.registry_aliases`,
what any backend shares :mod:`mnist_tasks.registry_api`; the command line
(``python -m mnist_tasks.registry list|show|promote|...``) is :mod:`mnist_tasks.registry_cli`.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import EllipsisType
from typing import Any

from mnist_tasks.artifacts import utc_now
from mnist_tasks.config import DEFAULT_MODEL_NAME
from mnist_tasks.registry_aliases import StoredAliases
from mnist_tasks.registry_api import (
    CHAMPION,
    CLAIM_FILE,
    MANIFEST_FILE,
    MAX_VERSION,
    METADATA_FILE,
    MODEL_FILE,
    AliasRecord,
    CorruptedVersion,
    FileSource,
    ImmutableVersionError,
    ModelRegistry,
    PendingVersion,
    RegistryError,
    Verifier,
    VersionInfo,
    file_contents,
    parse_version,
    validate_alias,
    validate_file_name,
    validate_run_key,
)
from mnist_tasks.registry_read import RegistryReader, dump_json, sha256_file
from mnist_tasks.storage import ObjectNotFound, Store

log = logging.getLogger(__name__)

MAX_CLAIM_ATTEMPTS = 1000  # lost races while claiming a number, before giving up
SCHEMA = 1


class Registry(RegistryReader):
    """The versions and aliases of one model in a store.

    Args:
        store: where the registry lives (under ``registry/<model_name>/``).
        model_name: validated with :func:`~mnist_tasks.registry_api.validate_model_name`.
        cas_retries: attempts for an alias compare-and-swap before ``AliasConflict``.

    Raises:
        InvalidName: for a bad model name.
    """

    def __init__(
        self, store: Store, model_name: str = DEFAULT_MODEL_NAME, *, cas_retries: int = 10
    ) -> None:
        super().__init__(store, model_name)
        self._aliases = StoredAliases(self, cas_retries)

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    # aliases -----------------------------------------------------------------------------------

    def alias_record(self, alias: str) -> AliasRecord | None:
        """The alias with its rollback stack and history, or None if it was never set."""
        return self._aliases.record(validate_alias(alias))

    def get_alias(self, alias: str) -> int | None:
        """The version ``alias`` points to, or None if it was never set."""
        record = self.alias_record(alias)
        return record.version if record else None

    def aliases(self) -> dict[str, int]:
        """Every alias and the version it points to."""
        return self._aliases.all()

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
        return self._aliases.set(validate_alias(alias), parse_version(version), expected)

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
        return self._aliases.rollback(validate_alias(alias))

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
            dump_json(dict(metadata))
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
        self.store.write_if_absent(record_key, dump_json(record))
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
        claimed = list(self._folders())
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
            self.store.write_if_absent(key, dump_json(claim))
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
        digest, size = sha256_file(source)
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
            written = self.store.write_if_absent(key, dump_json(manifest))
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
        objects = {name: self._put(pending, name, source)
                   for name, source in file_contents(files, pending)}
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
        objects[METADATA_FILE] = self._put(pending, METADATA_FILE, dump_json(full_meta))
        return {
            "schema": SCHEMA,
            "model_name": pending.model_name,
            "version": pending.version,
            "run_key": pending.run_key,
            "created_at": pending.created_at,
            "objects": dict(sorted(objects.items())),
        }

    def _pending(self, version: int, run_key: str, created_at: str) -> PendingVersion:
        return PendingVersion(
            model_name=self.model_name,
            version=version,
            run_key=run_key,
            created_at=created_at,
            uri=self.store.uri_for(self._version_dir(version)),
            model_uri=self.store.uri_for(self._key(version, MODEL_FILE)),
        )


def _store_backed(registry: Registry) -> ModelRegistry:
    # mypy (make lint) checks here that the store-backed Registry implements the protocol.
    return registry


if __name__ == "__main__":
    # Run as a script this file is ``__main__``, not ``mnist_tasks.registry``, so the CLI (which
    # imports the registry) is looked up by name rather than imported here.
    import importlib
    import sys

    sys.exit(importlib.import_module("mnist_tasks.registry_cli").main())
