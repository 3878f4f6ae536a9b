"""One storage API over ``file://`` (local folders) and ``s3://`` (boto3).

Every stage reads and writes through a :class:`Store`, so the pipeline behaves the same on a
laptop and against AWS S3 or MinIO. Keys are validated ``/``-separated paths that can never
escape the root. Both backends give atomic writes, a conditional create (``write_if_absent``:
If-None-Match), compare-and-swap (``write_if_match``: If-Match), one-request delimited
listings and completion markers; what each guarantees and how: docs/architecture.md#storage.

Usage::

    store = open_store("s3://bucket/prefix")          # or "file:///tmp/store", or "/tmp/store"
    store.write_bytes("runs/r1/metrics.json", b"{}")
    store.uri_for("runs/r1/metrics.json")              # "s3://bucket/prefix/runs/r1/metrics.json"
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+@-]*$")
_MARKER = re.compile(r"^_[A-Za-z0-9]+$")
MARKER = "_SUCCESS"  # the completion marker a producer writes last (Hadoop/Spark's name)
# A local folder changed this recently has no trusted token: a change within the same tick of
# the file system's clock (coarse: milliseconds on ext4, seconds elsewhere) may leave its mtime.
_TOKEN_MIN_AGE_S = 5.0


class StorageError(RuntimeError):
    """A storage operation failed; the message names the object URI and the problem."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """The object (or its bucket) does not exist."""


class Readable(Protocol):
    """A binary stream to read from: a file, an HTTP or S3 response body."""

    def read(self, size: int = -1, /) -> bytes: ...


class ObjectTooLarge(StorageError):
    """The object is larger than the caller accepts (see :meth:`Store.open_read`)."""


def _check_size(uri: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ObjectTooLarge(f"{uri}: {size:,} bytes is larger than the {max_bytes:,} accepted; "
                             "refusing to read it")


class InvalidKey(StorageError, ValueError):
    """A key is malformed or tries to leave the store root (``..``, absolute paths)."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise :class:`InvalidKey`.

    Safe means: non-empty ``/``-separated segments, each starting with a letter or digit and
    made of ``[A-Za-z0-9._=+@-]``; so no ``..``, no leading ``/``, no empty segment.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"invalid storage key {key!r}: must be a non-empty string")
    for seg in key.split("/"):
        if not _SEGMENT.match(seg):
            raise InvalidKey(
                f"invalid storage key {key!r}: segment {seg!r} is not allowed "
                "(use letters, digits and ._=+@-, no '..', no leading '/', no empty segment)"
            )
    return key


def marker_key(folder: str, name: str = MARKER) -> str:
    """``<folder>/<name>`` for a completion marker (``folder`` validated, or empty: the root).

    Raises:
        InvalidKey: for a bad folder, or a name that is not ``_`` and letters or digits.
    """
    if not _MARKER.match(name):
        raise InvalidKey(f"invalid marker name {name!r}: must be '_' then letters or digits")
    return f"{validate_key(folder)}/{name}" if folder else name


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store(ABC):
    """An object store rooted at :attr:`uri`."""

    uri: str

    def uri_for(self, key: str) -> str:
        """The full URI of ``key`` (for logs, XCom and metadata)."""
        return f"{self.uri.rstrip('/')}/{validate_key(key)}"

    def key_of(self, uri: str) -> str:
        """The key of an object URI inside this store (the inverse of :meth:`uri_for`).

        Raises:
            InvalidKey: if ``uri`` is not inside this store.
        """
        base = self.uri.rstrip("/") + "/"
        if not uri.startswith(base):
            raise InvalidKey(f"{uri!r} is not inside the store {self.uri!r}")
        return validate_key(uri[len(base):])

    def child(self, prefix: str) -> Store:
        """A store rooted at ``prefix`` inside this one."""
        return open_store(self.uri_for(prefix), **self._open_kwargs())

    def _open_kwargs(self) -> dict[str, Any]:
        return {}

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """Return the object's bytes. Raises :class:`ObjectNotFound`."""

    @abstractmethod
    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        """Return the object's bytes and its ETag. Raises :class:`ObjectNotFound`."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Atomically create or replace the object."""

    @abstractmethod
    def write_if_absent(self, key: str, data: bytes) -> bool:
        """Create the object only if no object has that key. Returns False if one exists."""

    @abstractmethod
    def write_if_match(self, key: str, data: bytes, etag: str) -> bool:
        """Replace the object only if its current ETag is ``etag``. False on a lost race."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object exists."""

    @abstractmethod
    def list(self, prefix: str = "") -> builtins.list[str]:
        """Sorted keys (relative to the store root) of all objects under ``prefix``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object; deleting a missing object is not an error."""

    @abstractmethod
    def download_file(self, key: str, dest: str | os.PathLike[str]) -> None:
        """Copy the object to a local file (written atomically). Raises :class:`ObjectNotFound`."""

    @abstractmethod
    def upload_file(self, src: str | os.PathLike[str], key: str) -> None:
        """Atomically store a local file as the object."""

    @contextlib.contextmanager
    def open_read(self, key: str, *, max_bytes: int) -> Iterator[Readable]:
        """Open the object for streaming reads, refusing it if it is larger than ``max_bytes``.

        The size is checked before any of the content is read (file size, S3 ``ContentLength``),
        so an oversize object costs no memory. This generic version reads the whole object;
        the stores here override it to stream.

        Raises:
            ObjectNotFound: if the object does not exist.
            ObjectTooLarge: if it is larger than ``max_bytes``.
        """
        data = self.read_bytes(key)
        _check_size(self.uri_for(key), len(data), max_bytes)
        yield io.BytesIO(data)

    def list_children(self, prefix: str = "", *, start_after: str | None = None
                      ) -> builtins.list[str]:
        """Sorted names of the immediate children (objects or 'folders') under ``prefix`` (the
        root when empty), only those sorting after ``start_after`` when it is given.

        The two stores here make it one delimited listing (S3 ``Delimiter='/'`` from
        ``StartAfter``; a local folder's entries), so its cost grows with the children after
        ``start_after`` on S3, never with what lies below them (a local folder that holds no
        object yet may be listed too). This generic version lists everything under ``prefix``.
        """
        base = validate_key(prefix) + "/" if prefix else ""
        names = {k[len(base):].split("/", 1)[0] for k in self.list(prefix) if k.startswith(base)}
        return sorted(n for n in names if start_after is None or n > start_after)

    def children_token(self, prefix: str = "") -> str | None:
        """A token that changes whenever an immediate child of ``prefix`` is added, removed or
        renamed, or None when the store cannot vouch for one (S3 has none).

        A caller that recorded the token with a listing may skip listing again while the token
        is the same.
        """
        return None

    def has_marker(self, folder: str, name: str = MARKER) -> bool:
        """Whether the completion marker ``<folder>/<name>`` exists (one request in the two
        stores here; this generic version lists the folder).

        Markers keep the Hadoop/Spark name (``_SUCCESS``), outside the key rules (a key segment
        may not start with ``_``), so they have these two methods of their own.
        """
        return marker_key(folder, name) in self.list(folder)

    def write_marker(self, folder: str, name: str = MARKER) -> None:
        """Write the empty completion marker ``<folder>/<name>`` (last, by a producer)."""
        raise NotImplementedError(f"{type(self).__name__} cannot write a marker")

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """Yield a local path holding the object (a temporary copy for remote stores)."""
        with tempfile.TemporaryDirectory(prefix="mnist-store-") as tmp:
            dest = Path(tmp) / Path(key).name
            self.download_file(key, dest)
            yield dest


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class LocalStore(Store):
    """A store in a local (or network-mounted) folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.uri_for(key)}: no such object") from None
        except IsADirectoryError:
            raise ObjectNotFound(f"{self.uri_for(key)}: is a folder, not an object") from None

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        data = self.read_bytes(key)
        return data, sha256_hex(data)

    def write_bytes(self, key: str, data: bytes) -> None:
        _atomic_write(self._path(key), data)

    def write_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write a temp file, then hard-link it into place: link() fails if the name exists,
        # so the object appears complete or not at all, and exactly one writer wins.
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = path.parent / f".{path.name}.lock"
        with open(lock_path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def write_if_match(self, key: str, data: bytes, etag: str) -> bool:
        with self._lock(key):
            try:
                _, current = self.read_with_etag(key)
            except ObjectNotFound:
                return False
            if current != etag:
                return False
            _atomic_write(self._path(key), data)
            return True

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> builtins.list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [validate_key(prefix)]
        if not base.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith("."):  # temp and lock files are never objects
                    continue
                rel = Path(dirpath, name).relative_to(self.root).as_posix()
                keys.append(rel)
        return sorted(keys)

    def list_children(self, prefix: str = "", *, start_after: str | None = None
                      ) -> builtins.list[str]:
        base = self._path(prefix) if prefix else self.root
        try:
            # Names only (no stat): a folder's entries are read whole, there is no StartAfter.
            names = [n for n in os.listdir(base) if not n.startswith(".")]
        except (FileNotFoundError, NotADirectoryError):
            return []
        if start_after is not None:
            names = [n for n in names if n > start_after]
        return sorted(names)

    def children_token(self, prefix: str = "") -> str | None:
        base = self._path(prefix) if prefix else self.root
        try:
            st = os.stat(base)
        except (FileNotFoundError, NotADirectoryError):
            return None
        # A folder's mtime moves when an entry is added, removed or renamed in it. Trusted only
        # once it is old enough that a later change cannot fall in the same clock tick.
        if not stat.S_ISDIR(st.st_mode) or time.time() - st.st_mtime < _TOKEN_MIN_AGE_S:
            return None
        return f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}"

    def has_marker(self, folder: str, name: str = MARKER) -> bool:
        return self.root.joinpath(*marker_key(folder, name).split("/")).is_file()

    def write_marker(self, folder: str, name: str = MARKER) -> None:
        _atomic_write(self.root.joinpath(*marker_key(folder, name).split("/")), b"")

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def download_file(self, key: str, dest: str | os.PathLike[str]) -> None:
        src = self._path(key)
        if not src.is_file():
            raise ObjectNotFound(f"{self.uri_for(key)}: no such object")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def upload_file(self, src: str | os.PathLike[str], key: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def open_read(self, key: str, *, max_bytes: int) -> Iterator[Readable]:
        path = self._path(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below; yields the handle
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(f"{self.uri_for(key)}: no such object") from None
        with fh:
            _check_size(self.uri_for(key), os.fstat(fh.fileno()).st_size, max_bytes)
            yield fh

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"{self.uri_for(key)}: no such object")
        yield path


class S3Store(Store):
    """A store under ``s3://bucket/prefix``.

    The boto3 client is built by :func:`s3_client` (the standard AWS configuration unless
    ``client_kwargs`` are given, e.g. from an Airflow connection), or passed in as ``client``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise InvalidKey(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = validate_key(prefix.strip("/")) if prefix.strip("/") else ""
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client
        self._client_kwargs = dict(client_kwargs or {})

    def _open_kwargs(self) -> dict[str, Any]:
        return {"client": self._client, "client_kwargs": self._client_kwargs}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self._client_kwargs)
        return self._client

    def _key(self, key: str) -> str:
        key = validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, key: str, exc: Exception) -> StorageError:
        from botocore.exceptions import ClientError

        uri = f"s3://{self.bucket}/{self._key(key)}"
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectNotFound(f"{uri}: no such object")
            if code == "NoSuchBucket":
                return ObjectNotFound(f"{uri}: bucket {self.bucket!r} does not exist")
            msg = exc.response.get("Error", {}).get("Message", "")
            return StorageError(f"{uri}: S3 error {code}: {msg}")
        return StorageError(f"{uri}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _code(exc: Exception) -> str:
        response = getattr(exc, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    def read_bytes(self, key: str) -> bytes:
        return self.read_with_etag(key)[0]

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return resp["Body"].read(), str(resp["ETag"])
        except Exception as exc:
            raise self._error(key, exc) from exc

    @contextlib.contextmanager
    def open_read(self, key: str, *, max_bytes: int) -> Iterator[Readable]:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._error(key, exc) from exc
        body = resp["Body"]
        try:
            # The reply's headers carry the size; the body has not been read yet.
            _check_size(self.uri_for(key), int(resp["ContentLength"]), max_bytes)
            yield _S3Body(body, lambda exc: self._error(key, exc))
        finally:
            body.close()

    def write_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:
            raise self._error(key, exc) from exc

    def write_if_absent(self, key: str, data: bytes) -> bool:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
            )
            return True
        except Exception as exc:
            if self._code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise self._error(key, exc) from exc

    def write_if_match(self, key: str, data: bytes, etag: str) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfMatch=etag)
            return True
        except Exception as exc:
            if self._code(exc) in (
                "PreconditionFailed",
                "412",
                "ConditionalRequestConflict",
                "NoSuchKey",
                "404",
            ):
                return False
            raise self._error(key, exc) from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as exc:
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(key, exc) from exc

    def list(self, prefix: str = "") -> builtins.list[str]:
        full = self._key(prefix) if prefix else self.prefix
        if full:
            full += "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: builtins.list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except Exception as exc:
            raise self._error(prefix or ".", exc) from exc
        # ``prefix`` may name an object itself (as a local file): asked only when nothing lies
        # under it, as a local folder and a file cannot share a name.
        if prefix and not keys and self.exists(prefix):
            keys.append(validate_key(prefix))
        return sorted(keys)

    def list_children(self, prefix: str = "", *, start_after: str | None = None
                      ) -> builtins.list[str]:
        full = self._key(prefix) if prefix else self.prefix
        if full:
            full += "/"
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "Delimiter": "/"}
        if start_after is not None:
            # Key order puts "b/" after "b-1/" ('/' sorts after '-'), so start after the bare
            # name: every child sorting after it comes after it as a key; the few extras that
            # key order lets through are filtered below.
            kwargs["StartAfter"] = full + start_after
        names: set[str] = set()
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(**kwargs):
                names.update(p["Prefix"][len(full):].rstrip("/")
                             for p in page.get("CommonPrefixes", []))
                names.update(o["Key"][len(full):] for o in page.get("Contents", []))
        except Exception as exc:
            raise self._error(prefix or ".", exc) from exc
        names.discard("")
        if start_after is not None:
            names = {n for n in names if n > start_after}
        return sorted(names)

    def has_marker(self, folder: str, name: str = MARKER) -> bool:
        key = f"{self.prefix}/{marker_key(folder, name)}" if self.prefix else marker_key(
            folder, name)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except Exception as exc:
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(folder or ".", exc) from exc

    def write_marker(self, folder: str, name: str = MARKER) -> None:
        key = f"{self.prefix}/{marker_key(folder, name)}" if self.prefix else marker_key(
            folder, name)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")
        except Exception as exc:
            raise self._error(folder or ".", exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._error(key, exc) from exc

    def download_file(self, key: str, dest: str | os.PathLike[str]) -> None:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
        try:
            self.client.download_file(self.bucket, self._key(key), str(tmp))
            os.replace(tmp, dest)
        except Exception as exc:
            raise self._error(key, exc) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def upload_file(self, src: str | os.PathLike[str], key: str) -> None:
        # A single PUT (not multipart) keeps the write atomic for files of our sizes (< 5 GB).
        try:
            with open(src, "rb") as fh:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=fh)
        except Exception as exc:
            raise self._error(key, exc) from exc


class _S3Body:
    """An S3 response body whose read errors (timeouts, dropped connections) become
    :class:`StorageError` naming the object, as every other S3Store error does."""

    def __init__(self, body: Any, error: Callable[[Exception], StorageError]) -> None:
        self._body = body
        self._error = error

    def read(self, size: int = -1, /) -> bytes:
        try:
            return bytes(self._body.read(size if size >= 0 else None))
        except Exception as exc:
            raise self._error(exc) from exc


def s3_client(
    client_kwargs: Mapping[str, Any] | None = None,
    *,
    timeout_s: float = 60.0,
    retries: int = 5,
) -> Any:
    """The one way this package builds a boto3 S3 client.

    Endpoint and credentials come the standard AWS way (environment, shared config, instance
    role; ``AWS_ENDPOINT_URL_S3`` for MinIO and other S3-compatible servers) unless
    ``client_kwargs`` give them, e.g. from an Airflow connection.

    Args:
        client_kwargs: extra ``boto3.client("s3", ...)`` arguments. A botocore ``Config`` under
            ``"config"`` is kept, with the timeouts and retries below taking precedence.
        timeout_s: read timeout; the connect timeout is the smaller of this and 10 s.
        retries: retries after the first attempt ("standard" mode: backoff, transient errors).

    Returns:
        A ``botocore`` S3 client (thread-safe).
    """
    import boto3
    from botocore.config import Config

    kwargs = dict(client_kwargs or {})
    config = Config(
        connect_timeout=min(timeout_s, 10.0),
        read_timeout=timeout_s,
        # total_max_attempts counts the first try; botocore's "max_attempts" would add one.
        retries={"total_max_attempts": retries + 1, "mode": "standard"},
    )
    if isinstance(kwargs.get("config"), Config):
        config = kwargs.pop("config").merge(config)
    return boto3.client("s3", config=config, **kwargs)


def open_store(
    uri: str,
    *,
    client: Any | None = None,
    client_kwargs: Mapping[str, Any] | None = None,
) -> Store:
    """Open the store at ``uri``: ``s3://bucket[/prefix]``, ``file:///path`` or a local path.

    Raises:
        ValueError: for an unsupported scheme or a malformed URI.
    """
    if not uri:
        raise ValueError("store URI is empty: give s3://bucket/prefix, file:///path or a folder")
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"store URI {uri!r} has no bucket: use s3://bucket/prefix")
        return S3Store(parsed.netloc, parsed.path, client=client, client_kwargs=client_kwargs)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"store URI {uri!r}: file:// URIs must be local (file:///path)")
        return LocalStore(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return LocalStore(uri)
    raise ValueError(
        f"store URI {uri!r}: unsupported scheme {parsed.scheme!r} (use s3:// or file://)"
    )

