"""The base data set: the four MNIST IDX files fetched, verified, parsed, validated and cached.

The ingest stage calls :func:`ingest_base`; the increments beside the base are
:mod:`mnist_tasks.increments`' concern. Sources (``IngestConfig.source``): a folder or
``file://`` URI, ``"default"`` (the public mirrors) or ``https://`` prefixes, or
``s3://bucket/prefix``. Each decompressed payload's SHA-256 is checked (pinned, custom, or
``checksums="off"``); every read is bounded (sizes checked before reading, gzip inflated piece
by piece, links confined to the folder). The arrays and the validation report are cached by
content under ``cache/datasets/<key>/``, ``COMPLETE.json`` last::

    base = ingest_base(IngestConfig(source="../shared/datasets/mnist"), store)
    arrays = load_dataset(base["dataset_uri"], store)      # x_train, y_train, x_test, y_test
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.client
import json
import logging
import os
import stat
import tempfile
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from mnist_tasks import __version__, idx, validation
from mnist_tasks.artifacts import RAW_ARRAYS, data_sha256, load_npz, save_npz
from mnist_tasks.config import MNIST_FILES, MNIST_MIRRORS, ConfigError, IngestConfig
from mnist_tasks.storage import ObjectNotFound, StorageError, Store, open_store, s3_client
from mnist_tasks.validation import DataValidationError

log = logging.getLogger(__name__)

__all__ = [
    "ChecksumMismatch",
    "DataValidationError",
    "DatasetError",
    "FetchError",
    "SourceNotFound",
    "dataset_key",
    "ingest_base",
    "load_dataset",
]

CACHE_PREFIX = "cache/datasets"
CACHE_FORMAT = "mnist-tasks/dataset-cache/1"  # bump when the entry's layout or parsing changes
DATASET_FILE = "mnist.npz"
REPORT_FILE = "validation.json"
COMPLETE_FILE = "COMPLETE.json"

# The exact payload sizes of the files behind the pinned checksums: with pinned checksums each
# file is refused as soon as it is larger than its own payload, so no refused input costs more
# memory than the largest one (47 MB). Other files get idx.MAX_PAYLOAD_BYTES.
MNIST_PAYLOAD_BYTES: dict[str, int] = {
    MNIST_FILES["train_images"]: 47_040_016,  # 16-byte header + 60,000 x 28 x 28
    MNIST_FILES["train_labels"]: 60_008,
    MNIST_FILES["test_images"]: 7_840_016,
    MNIST_FILES["test_labels"]: 10_008,
}
MAX_BACKOFF_S = 60.0
_RETRY_HTTP_STATUS = frozenset({408, 425, 429})  # plus every 5xx
_NOT_FOUND_HTTP_STATUS = frozenset({404, 410})


class FetchError(RuntimeError):
    """A file could not be fetched from its source (network, HTTP or storage error)."""


class SourceNotFound(FetchError, FileNotFoundError):
    """A source file, folder, bucket or key does not exist (HTTP 404, no such file/object)."""


class ChecksumMismatch(ValueError):
    """A file's decompressed payload does not have the expected SHA-256."""


class DatasetError(ValueError):
    """The files are well-formed IDX but do not form a digit data set (types, counts, labels)."""


# --------------------------------------------------------------------------------------------
# Sources


class _Source(ABC):
    """One place the four files can come from."""

    uri: str  # the base, for messages

    def uri_of(self, name: str) -> str:
        return f"{self.uri.rstrip('/')}/{name}"

    @abstractmethod
    def open(
        self, name: str, workdir: Path, max_bytes: int
    ) -> AbstractContextManager[idx.Readable]:
        """The file as stored (usually gzip), open for reading.

        Refuses, before reading any content, a file larger than ``max_bytes`` where the size is
        known up front. Raises FetchError / SourceNotFound.
        """


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int) -> str:
    """Empty for a regular file, else what the file is (for the error message)."""
    if stat.S_ISREG(mode):
        return ""
    return next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")


class _LocalSource(_Source):
    """A folder. Only regular files inside it are read: a symlink may point elsewhere in the
    folder, never out of it, and devices, FIFOs and sockets are refused before any read."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.uri = folder.as_uri()

    @contextlib.contextmanager
    def open(self, name: str, workdir: Path, max_bytes: int) -> Iterator[idx.Readable]:
        uri = self.uri_of(name)
        if not self.folder.is_dir():
            raise SourceNotFound(f"{uri}: the source folder {self.folder} does not exist")
        try:
            real = (self.folder / name).resolve(strict=True)
            inside = real.is_relative_to(self.folder.resolve(strict=True))
            what = _not_regular(os.stat(real).st_mode) if inside else ""
            if inside and not what:
                # O_NONBLOCK: had the file been swapped for a FIFO since the stat, open() must
                # not wait for a writer; the fstat below refuses it either way.
                fh = os.fdopen(
                    os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC), "rb"
                )
                info = os.fstat(fh.fileno())
                if what := _not_regular(info.st_mode):
                    fh.close()
        except FileNotFoundError:
            raise SourceNotFound(f"{uri}: no such file") from None
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
            raise FetchError(
                f"{uri}: cannot read: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        if not inside:
            # Never read it: its content could end up in error messages and logs.
            raise FetchError(f"{uri}: is a symbolic link to a file outside the source folder "
                             f"{self.folder}; refusing it (copy the file in instead)")
        if what:
            raise FetchError(f"{uri}: is {what}, not a regular file; refusing it")
        with fh:
            if info.st_size > max_bytes:
                raise FetchError(f"{uri}: {info.st_size:,} bytes is larger than the "
                                 f"{max_bytes:,} accepted for this file; refusing it")
            yield fh


class _HttpSource(_Source):
    """A URL prefix; files are GET with timeouts and retries with exponential backoff."""

    def __init__(self, prefix: str, timeout_s: float, retries: int, backoff_s: float) -> None:
        self.uri = prefix if prefix.endswith("/") else prefix + "/"
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

    @contextlib.contextmanager
    def open(self, name: str, workdir: Path, max_bytes: int) -> Iterator[idx.Readable]:
        url = self.uri_of(name)
        # Stream to a temp name in the private work dir and rename only once the transfer is
        # complete, so a half-transferred file is never taken for a whole one.
        part = workdir / f"{name}.part"
        final = workdir / name
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                log.warning("ingest: GET %s failed (%s); retry %d of %d in %.1f s",
                            url, problem, attempt, self.retries, delay)
                time.sleep(delay)
            try:
                size = self._get(url, part, max_bytes)
            except _Transient as exc:
                problem = str(exc)
                continue
            os.replace(part, final)
            log.info("ingest: downloaded %s (%s bytes)", url, f"{size:,}")
            with open(final, "rb") as fh:
                yield fh
            return
        part.unlink(missing_ok=True)
        raise FetchError(f"{url}: failed after {self.retries + 1} attempt(s): {problem}")

    def _get(self, url: str, part: Path, max_bytes: int) -> int:
        request = urllib.request.Request(
            url, headers={"User-Agent": f"mnist-tasks/{__version__}", "Accept-Encoding": "identity"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp, \
                    open(part, "wb") as fh:
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > max_bytes:
                    raise FetchError(f"{url}: Content-Length {int(length):,} is larger than the "
                                     f"{max_bytes:,} bytes accepted for this file; refusing it")
                total = 0
                while chunk := resp.read(min(idx.CHUNK_BYTES, max_bytes - total + 1)):
                    total += len(chunk)
                    if total > max_bytes:
                        raise FetchError(f"{url}: response is larger than the {max_bytes:,} "
                                         "bytes accepted for this file; refusing it")
                    fh.write(chunk)
        except urllib.error.HTTPError as exc:
            status = f"HTTP {exc.code} {exc.reason}"
            if exc.code in _RETRY_HTTP_STATUS or exc.code >= 500:
                raise _Transient(status) from None
            if exc.code in _NOT_FOUND_HTTP_STATUS:
                raise SourceNotFound(f"{url}: {status}") from None
            raise FetchError(f"{url}: {status}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(_describe_network_error(exc, self.timeout_s)) from None
        if length is not None and length.isdigit() and total != int(length):
            raise _Transient(f"incomplete download: {total:,} of {int(length):,} bytes")
        return total


class _Transient(Exception):
    """A failure worth retrying (connection error, timeout, 5xx, 429)."""


def _describe_network_error(exc: BaseException, timeout_s: float) -> str:
    reason: Any = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout_s:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return f"{type(reason).__name__}: {reason.strerror}"
    return f"{type(reason).__name__}: {reason}"


class _S3Source(_Source):
    def __init__(self, uri: str, client: Any) -> None:
        self.store = open_store(uri, client=client)
        self.uri = self.store.uri

    @contextlib.contextmanager
    def open(self, name: str, workdir: Path, max_bytes: int) -> Iterator[idx.Readable]:
        # The object's ContentLength is checked before its body is read; the body is streamed.
        try:
            with self.store.open_read(name, max_bytes=max_bytes) as body:
                yield body
        except ObjectNotFound as exc:
            raise SourceNotFound(str(exc)) from None
        except StorageError as exc:
            raise FetchError(str(exc)) from None


def _sources(cfg: IngestConfig, s3_client_kwargs: Mapping[str, Any] | None) -> list[_Source]:
    """Parse ``cfg.source`` into the sources to try in turn (no network access)."""
    source = cfg.source.strip()
    if source == "default":
        prefixes: list[str] = list(MNIST_MIRRORS)
    elif source.startswith(("https://", "http://")):
        prefixes = [p.strip() for p in source.split(",") if p.strip()]
    else:
        prefixes = []
    if prefixes:
        for p in prefixes:
            parsed = urlparse(p)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ConfigError(f"parameter 'source' = {cfg.source!r} is invalid: {p!r} is "
                                  "not an http(s):// URL prefix")
        return [_HttpSource(p, cfg.timeout_s, cfg.retries, cfg.backoff_s) for p in prefixes]
    parsed = urlparse(source)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"parameter 'source' = {cfg.source!r} is invalid: "
                              "use s3://bucket/prefix")
        client = s3_client(s3_client_kwargs, timeout_s=cfg.timeout_s, retries=cfg.retries)
        return [_S3Source(source, client)]
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"parameter 'source' = {cfg.source!r} is invalid: file:// URIs "
                              "must be local (file:///path)")
        return [_LocalSource(Path(unquote(parsed.path)))]
    if parsed.scheme == "":
        return [_LocalSource(Path(source).expanduser().absolute())]
    raise ConfigError(f"parameter 'source' = {cfg.source!r} is invalid: unsupported scheme "
                      f"{parsed.scheme!r} (use a folder, file://, https://, s3:// or 'default')")


# --------------------------------------------------------------------------------------------
# Fetch and verify


def _fetch_verified(
    sources: list[_Source],
    name: str,
    workdir: Path,
    expected: str | None,
    verification: str,
) -> tuple[bytes, str, str]:
    """Fetch ``name`` from the first source that gives a good copy.

    Returns:
        (decompressed payload, its SHA-256, the URI it came from). On success the source is
        moved to the front of ``sources`` so the next file tries it first.
    """
    # Pinned checksums pin the sizes too: refuse anything larger than the file it stands for.
    max_payload = MNIST_PAYLOAD_BYTES[name] if verification == "pinned" else idx.MAX_PAYLOAD_BYTES
    errors: list[Exception] = []
    for source in list(sources):
        uri = source.uri_of(name)
        start = time.perf_counter()
        try:
            with source.open(name, workdir, idx.archive_limit(max_payload)) as stream:
                payload, size = idx.read_payload(stream, source=uri, max_bytes=max_payload)
            digest = hashlib.sha256(payload).hexdigest()
            if expected is not None and digest != expected:
                raise ChecksumMismatch(
                    f"{uri}: SHA-256 of the decompressed payload is {digest}, expected "
                    f"{expected} ({verification} checksum): the file is corrupt or not the "
                    "expected data (checksums='off' accepts other IDX data)"
                )
        except (FetchError, idx.IdxFormatError, ChecksumMismatch) as exc:
            errors.append(exc)
            if len(errors) < len(sources):
                log.warning("ingest: %s; trying the next source", exc)
            continue
        verdict = f"verified ({verification})" if expected else "NOT verified (checksums off)"
        log.info("ingest: %s: %s bytes from %s, payload %s bytes, SHA-256 %s… %s [%.2f s]",
                 name, f"{size:,}", uri, f"{len(payload):,}", digest[:16], verdict,
                 time.perf_counter() - start)
        sources.remove(source)
        sources.insert(0, source)
        return payload, digest, uri
    if len(errors) == 1:
        raise errors[0]
    kinds = {type(e) for e in errors}
    kind: type[Exception] = kinds.pop() if len(kinds) == 1 else FetchError
    raise kind(f"{name}: no source gave a good copy: " + "; ".join(str(e) for e in errors))


def _parse(payloads: dict[str, bytes], uris: dict[str, str]) -> dict[str, np.ndarray]:
    """The four payloads as uint8 arrays, after checking they form one digit data set."""
    u8 = np.dtype("u1")
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        img, lab = MNIST_FILES[f"{split}_images"], MNIST_FILES[f"{split}_labels"]
        x = idx.parse_idx(payloads[img], source=uris[img], ndim=3, dtype=u8)
        y = idx.parse_idx(payloads[lab], source=uris[lab], ndim=1, dtype=u8)
        if len(x) != len(y):
            raise DatasetError(
                f"{uris[img]} has {len(x):,} images but {uris[lab]} has {len(y):,} labels; "
                "the counts must agree"
            )
        bad = np.flatnonzero(y >= validation.NUM_CLASSES)
        if len(bad):
            raise DatasetError(
                f"{uris[lab]}: {len(bad):,} labels outside 0-{validation.NUM_CLASSES - 1} "
                f"(first: {int(y[bad[0]])} at index {int(bad[0])})"
            )
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    train_img, test_img = MNIST_FILES["train_images"], MNIST_FILES["test_images"]
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DatasetError(
            f"{uris[train_img]} has images of {arrays['x_train'].shape[1:]} pixels but "
            f"{uris[test_img]} has {arrays['x_test'].shape[1:]}; they must agree"
        )
    return arrays


# --------------------------------------------------------------------------------------------
# Cache


def dataset_key(checksums: Mapping[str, str]) -> str:
    """The cache key of the data set with these payload SHA-256s (one per MNIST file name).

    Raises:
        KeyError: if a file's checksum is missing.
    """
    h = hashlib.sha256(CACHE_FORMAT.encode())
    for name in sorted(MNIST_FILES.values()):
        h.update(f"\n{name}={checksums[name]}".encode())
    return "idx-" + h.hexdigest()[:32]


def _entry(key: str, file: str) -> str:
    return f"{CACHE_PREFIX}/{key}/{file}"


def _read_cache(
    store: Store, key: str, checksums: Mapping[str, str] | None
) -> dict[str, Any] | None:
    """The complete cache entry ``key`` (its COMPLETE.json plus the report), or None."""
    try:
        complete = json.loads(store.read_bytes(_entry(key, COMPLETE_FILE)))
    except ObjectNotFound:
        return None
    except ValueError as exc:
        log.warning("ingest: ignoring cache entry %s: unreadable %s (%s)",
                    store.uri_for(_entry(key, "")[:-1]), COMPLETE_FILE, exc)
        return None
    problem = ""
    if not isinstance(complete, dict) or complete.get("format") != CACHE_FORMAT:
        problem = f"format is not {CACHE_FORMAT}"
    elif complete.get("key") != key or (checksums and complete.get("checksums") != dict(checksums)):
        problem = "its key or checksums do not match"
    elif not store.exists(_entry(key, DATASET_FILE)):
        problem = f"{DATASET_FILE} is missing"
    else:
        try:
            report = json.loads(store.read_bytes(_entry(key, REPORT_FILE)))
            if not {"train", "test", "leakage"} <= set(report["metrics"]):
                raise KeyError("metrics")
            complete["report"] = report
        except (ObjectNotFound, ValueError, KeyError, TypeError) as exc:
            problem = f"{REPORT_FILE} is missing or unreadable ({type(exc).__name__})"
    if problem:
        log.warning("ingest: ignoring incomplete cache entry %s: %s; rebuilding it",
                    store.uri_for(_entry(key, COMPLETE_FILE)), problem)
        return None
    return dict(complete)


def _write_cache(
    store: Store, key: str, arrays: dict[str, np.ndarray], report: dict[str, Any],
    complete: dict[str, Any],
) -> None:
    """Write the entry: data, report, then the COMPLETE marker.

    A key's content is determined by the key, so an entry that two runs write at once ends up
    the same either way. On failure the data and report are removed unless a marker exists
    (then the entry is complete, e.g. written by a concurrent run, and is left alone); without
    a marker, leftovers are ignored and overwritten by the next run anyway.
    """
    data_key, report_key, marker_key = (
        _entry(key, f) for f in (DATASET_FILE, REPORT_FILE, COMPLETE_FILE)
    )
    try:
        save_npz(store, data_key, arrays)
        store.write_bytes(report_key, json.dumps(report, indent=2).encode())
        store.write_bytes(marker_key, json.dumps(complete, indent=2).encode())
    except BaseException:
        try:
            if not store.exists(marker_key):
                for k in (report_key, data_key):
                    store.delete(k)
        except StorageError as exc:
            log.warning("ingest: could not tidy up the unfinished cache entry %s: %s",
                        store.uri_for(marker_key), exc)
        raise


# --------------------------------------------------------------------------------------------
# Validation, and the base as a whole


def _check_and_log(report: dict[str, Any], cfg: IngestConfig, report_uri: str,
                   cached: bool) -> dict[str, Any]:
    """Re-evaluate the report's checks with the current thresholds, log, raise on failure."""
    metrics = report["metrics"]
    checks = validation.evaluate_checks(metrics, cfg.thresholds)
    for line in validation.summary_lines(metrics, checks):
        log.info("ingest: validation%s: %s", " (cached metrics)" if cached else "", line)
    validation.raise_if_failed(checks, report_uri)
    log.info("ingest: validation report %s", report_uri)
    return validation.summarize(metrics, checks)


def _result(
    store: Store, key: str, entry: dict[str, Any], summary: dict[str, Any], *, cached: bool,
    cfg: IngestConfig, verification: str, start: float,
) -> dict[str, Any]:
    return {
        "dataset_uri": store.uri_for(_entry(key, DATASET_FILE)),
        "dataset_key": key,
        "cached": cached,
        "source": cfg.source,
        "verification": verification,
        "checksums": dict(entry["checksums"]),
        "counts": dict(entry["counts"]),
        "image_shape": tuple(entry["image_shape"]),
        "data_sha256": entry["data_sha256"],
        "report_uri": store.uri_for(_entry(key, REPORT_FILE)),
        "report_summary": summary,
        "seconds": round(time.perf_counter() - start, 3),
        "base_files": tuple(sorted((entry.get("fetched_from") or {}).values())),
    }


def ingest_base(
    cfg: IngestConfig,
    store: Store,
    *,
    s3_client_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fetch, verify, parse, validate and cache the four MNIST files; reuse the cache if it can.

    Args:
        cfg: the source, checksum policy, network settings and validation thresholds.
        store: where the cache lives (``cache/datasets/<key>/``).
        s3_client_kwargs: extra ``boto3.client("s3", ...)`` arguments for an ``s3://`` source
            (e.g. credentials and endpoint from an Airflow connection); by default boto3 uses
            the standard AWS configuration.

    Returns:
        The base's fields of :class:`~mnist_tasks.results.IngestResult`, by name:
        ``dataset_uri`` (the ``mnist.npz``), ``dataset_key``, ``cached``, ``source``,
        ``verification``, ``checksums``, ``counts``, ``image_shape``, ``data_sha256`` (the
        arrays' identity, as preprocess computes it), ``report_uri``, ``report_summary``,
        ``seconds`` and ``base_files`` (the files' URIs; on a cache hit, those the cache was
        made from).

    Raises:
        ConfigError: for a malformed source.
        SourceNotFound: a file, folder, bucket or key does not exist (HTTP 404 on every mirror).
        FetchError: a file could not be fetched (timeouts, connection errors, 5xx after retries)
            or is refused unread: larger than accepted, not a regular file, or a symlink that
            leaves the source folder.
        idx.IdxFormatError: a file is not well-formed gzip / IDX, or decompresses to more than
            accepted (a gzip bomb).
        ChecksumMismatch: a payload's SHA-256 differs from the expected one.
        DatasetError: the files disagree (image and label counts, shapes) or a label is not 0-9.
        DataValidationError: a validation threshold is violated (the report is stored, and the
            message gives its URI).
        StorageError: the store cannot be read or written.
    """
    start = time.perf_counter()
    expected = cfg.expected_sha256()
    verification = ("off" if expected is None
                    else "pinned" if cfg.checksums == "pinned" else "custom")
    sources = _sources(cfg, s3_client_kwargs)
    log.info("ingest: source %s (%s), verification %s, store %s",
             cfg.source, ", ".join(s.uri for s in sources), verification, store.uri)
    key: str | None = None
    if expected is None:
        log.warning("ingest: checksum verification is OFF (checksums='off'): any well-formed IDX "
                    "files are accepted; their payload SHA-256s are recorded, not checked")
    else:
        key = dataset_key(expected)
        cached = _read_cache(store, key, expected)
        if cached is not None:
            log.info("ingest: cache hit: skipped download and parse (key %s, %s)",
                     key, store.uri_for(_entry(key, DATASET_FILE)))
            summary = _check_and_log(cached["report"], cfg,
                                     store.uri_for(_entry(key, REPORT_FILE)), cached=True)
            return _result(store, key, cached, summary, cached=True, cfg=cfg,
                           verification=verification, start=start)
        log.info("ingest: cache miss (key %s): fetching the four files", key)

    payloads: dict[str, bytes] = {}
    checksums: dict[str, str] = {}
    uris: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mnist-ingest-") as tmp:
        for name in MNIST_FILES.values():
            payloads[name], checksums[name], uris[name] = _fetch_verified(
                sources, name, Path(tmp), expected[name] if expected else None, verification
            )

    if key is None:
        key = dataset_key(checksums)
        cached = _read_cache(store, key, checksums)
        if cached is not None:
            log.info("ingest: cache hit (key %s): files downloaded and hashed, parse and "
                     "validation skipped", key)
            summary = _check_and_log(cached["report"], cfg,
                                     store.uri_for(_entry(key, REPORT_FILE)), cached=True)
            return _result(store, key, cached, summary, cached=True, cfg=cfg,
                           verification=verification, start=start)
        log.info("ingest: cache miss (key %s)", key)

    arrays = _parse(payloads, uris)
    metrics = validation.compute_metrics(
        arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
    )
    report = validation.build_report(metrics, cfg.thresholds, dataset_key=key, source=cfg.source)
    complete: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "key": key,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": cfg.source,
        "fetched_from": uris,
        "verification": verification,
        "checksums": checksums,
        "counts": {"train": len(arrays["y_train"]), "test": len(arrays["y_test"])},
        "image_shape": list(arrays["x_train"].shape[1:]),
        "data_sha256": data_sha256({n: arrays[n] for n in RAW_ARRAYS}),
        "files": {"dataset": DATASET_FILE, "report": REPORT_FILE},
    }
    # The entry is written even when a check fails: it records verified, parsed data and its
    # metrics, and the checks are re-evaluated (and fail again) on every run that hits it.
    _write_cache(store, key, arrays, report, complete)
    log.info("ingest: cached %s train + %s test images at %s",
             f"{complete['counts']['train']:,}", f"{complete['counts']['test']:,}",
             store.uri_for(_entry(key, DATASET_FILE)))
    summary = _check_and_log(report, cfg, store.uri_for(_entry(key, REPORT_FILE)), cached=False)
    return _result(store, key, complete, summary, cached=False, cfg=cfg,
                   verification=verification, start=start)


def load_dataset(dataset_uri: str, store: Store) -> dict[str, np.ndarray]:
    """Load the arrays :func:`ingest_base` cached at ``dataset_uri``.

    Returns:
        ``{"x_train", "y_train", "x_test", "y_test"}`` as uint8 arrays.

    Raises:
        ObjectNotFound: if the data set does not exist.
        InvalidKey: if ``dataset_uri`` is not inside ``store``.
        ValueError: if an array is missing.
    """
    return load_npz(store, store.key_of(dataset_uri), RAW_ARRAYS)
