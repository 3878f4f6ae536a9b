"""Aliases in a store-backed registry: moved by compare-and-swap, with a rollback stack.

An alias (``champion``) is one JSON object, ``registry/<model-name>/aliases/<alias>.json``,
holding its version, the versions it replaced (what ``rollback`` returns to) and every move,
each with a token: a mover whose reply was lost finds its own move by its token instead of
moving twice. :class:`mnist_tasks.registry.Registry` exposes these as its alias methods.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import EllipsisType
from typing import Any

from mnist_tasks.artifacts import utc_now
from mnist_tasks.registry_api import (
    MAX_VERSION,
    AliasConflict,
    AliasRecord,
    CorruptedVersion,
    InvalidName,
    RegistryError,
    VersionNotFound,
    validate_alias,
)
from mnist_tasks.registry_read import RegistryReader, dump_json
from mnist_tasks.storage import ObjectNotFound

log = logging.getLogger(__name__)

HISTORY_LIMIT = 1000  # alias moves kept in an alias object (newest kept)
PREVIOUS_LIMIT = 100  # depth of the rollback stack


class StoredAliases:
    """The aliases of the model whose versions ``versions`` reads.

    Args:
        versions: the registry's versions; an alias only ever points at a complete one.
        retries: attempts for a compare-and-swap before :class:`AliasConflict`.
    """

    def __init__(self, versions: RegistryReader, retries: int) -> None:
        self.versions = versions
        self.store = versions.store
        self.model_name = versions.model_name
        self.prefix = f"{versions.prefix}/aliases"
        self.retries = max(1, int(retries))

    def _key(self, alias: str) -> str:
        return f"{self.prefix}/{alias}.json"

    def record(self, alias: str) -> AliasRecord | None:
        """The alias (a valid name) with its stack and history, or None if it was never set."""
        try:
            return self._parse(alias, self.store.read_bytes(self._key(alias)))
        except ObjectNotFound:
            return None

    def all(self) -> dict[str, int]:
        """Every alias and the version it points to."""
        base = f"{self.prefix}/"
        out = {}
        for key in self.store.list(self.prefix):
            name = key[len(base):].removesuffix(".json")
            if not key.endswith(".json"):
                continue
            try:
                record = self.record(validate_alias(name))
            except InvalidName:
                continue
            if record is not None:
                out[name] = record.version
        return out

    def set(self, alias: str, number: int, expected: int | EllipsisType | None) -> AliasRecord:
        """Point ``alias`` at version ``number`` (see :meth:`Registry.set_alias`)."""

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

        return self._move(alias, target)

    def rollback(self, alias: str) -> AliasRecord:
        """Move ``alias`` back to the version it replaced (see :meth:`Registry.rollback`)."""

        def target(current: AliasRecord | None) -> tuple[int, str]:
            if current is None:
                raise RegistryError(f"alias {alias!r} of {self.model_name!r} is not set; "
                                    "nothing to roll back")
            if not current.previous:
                raise RegistryError(f"alias {alias!r} of {self.model_name!r} has no previous "
                                    f"version to roll back to (it points to {current.version})")
            return current.previous[-1], "rollback"

        return self._move(alias, target)

    def _parse(self, alias: str, data: bytes) -> AliasRecord:
        where = self.store.uri_for(self._key(alias))

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

    def _move(
        self,
        alias: str,
        target: Callable[[AliasRecord | None], tuple[int, str] | None],
    ) -> AliasRecord:
        key = self._key(alias)
        tokens: list[str] = []  # one per write this call made; any may have been applied
        for attempt in range(self.retries):
            try:
                data, etag = self.store.read_with_etag(key)
                current: AliasRecord | None = self._parse(alias, data)
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
            if not self.versions.exists(number):
                raise VersionNotFound(f"cannot point alias {alias!r} at version {number} of "
                                      f"{self.model_name!r}: no such complete version")
            try:
                self.versions.get(number)  # never point an alias at a corrupted version
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
            body = dump_json({
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
                after = self.record(alias)
                if after is not None and any(h.get("token") == token for h in after.history):
                    log.info("registry: alias %s of %s -> v%d (%s; was %s)", alias,
                             self.model_name, number, action,
                             current.version if current else "unset")
                    return self._parse(alias, body)
                log.warning("registry: alias %s update was lost; retrying", alias)
            else:
                # Refused: a lost race, or our own write whose reply was lost. Re-read: if our
                # token is in the history the move is done.
                try:
                    after = self.record(alias)
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
                            f"{self.retries} attempts (it kept changing concurrently)")

    @staticmethod
    def _own_move(record: AliasRecord | None, tokens: Sequence[str]) -> Mapping[str, Any] | None:
        """The history entry of ``record`` written with one of ``tokens``, if any."""
        if record is None or not tokens:
            return None
        for entry in reversed(record.history):
            if entry.get("token") in tokens:
                return entry
        return None
