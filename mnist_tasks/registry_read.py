"""Reading a store-backed registry: its layout, and every version checked against its manifest.

:class:`RegistryReader` is the read side of :class:`mnist_tasks.registry.Registry`, which adds
registering and aliases; the layout under ``registry/<model-name>/`` is described there and in
docs/registry.md. A version is visible only once its ``MANIFEST.json`` exists, and every read
checks what it returns against that manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from mnist_tasks.artifacts import json_default
from mnist_tasks.registry_api import (
    CLAIM_FILE,
    MANIFEST_FILE,
    MAX_VERSION,
    METADATA_FILE,
    MODEL_FILE,
    CorruptedVersion,
    InvalidName,
    PendingVersion,
    RegistryError,
    VersionEntry,
    VersionInfo,
    VersionNotFound,
    parse_version,
    validate_file_name,
    validate_model_name,
    validate_run_key,
)
from mnist_tasks.storage import ObjectNotFound, Store

log = logging.getLogger(__name__)


def dump_json(obj: Any) -> bytes:
    """``obj`` as the registry writes its JSON objects: indented, keys sorted."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n").encode()


def sha256_file(path: Path) -> tuple[str, int]:
    """The SHA-256 (hex) and size of a local file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class RegistryReader:
    """The versions of one model in a store, read and verified.

    Args:
        store: where the registry lives (under ``registry/<model_name>/``).
        model_name: validated with :func:`~mnist_tasks.registry_api.validate_model_name`.

    Raises:
        InvalidName: for a bad model name.
    """

    def __init__(self, store: Store, model_name: str) -> None:
        self.store = store
        self.model_name = validate_model_name(model_name)
        self.prefix = f"registry/{self.model_name}"
        self.uri = store.uri_for(self.prefix)

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
        claimed_at = claim.get("created_at")
        try:
            run_key = validate_run_key(claim.get("run_key"))
        except InvalidName:
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
        digest, size = sha256_file(dest)
        if digest != entry.get("sha256") or size != entry.get("size"):
            dest.unlink(missing_ok=True)
            raise RegistryError(
                f"{self.store.uri_for(key)}: SHA-256/size {digest[:12]}…/{size} does not match "
                f"the manifest ({str(entry.get('sha256'))[:12]}…/{entry.get('size')}); "
                "the version is corrupted"
            )
        return dest
