"""Helpers for the ingest tests: tiny synthetic IDX data sets, a loopback HTTP server, a silent
socket, ingest in a child process with its memory measured. Nothing here talks to anything but
127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import socket
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tasks.config import MNIST_FILES
from mnist_tasks.idx import encode_idx

TRAIN_IMAGES = MNIST_FILES["train_images"]
TRAIN_LABELS = MNIST_FILES["train_labels"]
TEST_IMAGES = MNIST_FILES["test_images"]
TEST_LABELS = MNIST_FILES["test_labels"]


def make_arrays(n_train: int = 60, n_test: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28x28 uint8 images (no blanks, no duplicates), balanced labels 0-9."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }


def idx_files(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    """The four gzip-compressed IDX files of ``arrays``, by MNIST file name."""
    return {
        TRAIN_IMAGES: gzip.compress(encode_idx(arrays["x_train"]), mtime=0),
        TRAIN_LABELS: gzip.compress(encode_idx(arrays["y_train"]), mtime=0),
        TEST_IMAGES: gzip.compress(encode_idx(arrays["x_test"]), mtime=0),
        TEST_LABELS: gzip.compress(encode_idx(arrays["y_test"]), mtime=0),
    }


def write_folder(folder: Path, arrays: dict[str, np.ndarray] | None = None) -> Path:
    """Write the four .gz files of ``arrays`` (default: :func:`make_arrays`) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in idx_files(arrays if arrays is not None else make_arrays()).items():
        (folder / name).write_bytes(data)
    return folder


def payload_sha256(folder: Path) -> dict[str, str]:
    """SHA-256 of each file's decompressed payload (what IngestConfig.checksums expects)."""
    out = {}
    for name in MNIST_FILES.values():
        data = (folder / name).read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        out[name] = hashlib.sha256(data).hexdigest()
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ScriptedHttpServer

    def do_GET(self) -> None:
        srv = self.server
        with srv.lock:
            script = srv.script.get(self.path, [])
            action = script.pop(0) if len(script) > 1 else (script[0] if script else 200)
            srv.requests.append(self.path)
        if action != 200:
            self.send_error(int(action))
            return
        path = srv.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


class ScriptedHttpServer(http.server.ThreadingHTTPServer):
    """Serves files under ``root``; ``script[path]`` lists statuses to answer in turn (the last
    one repeats; 200 means serve the file)."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.script: dict[str, list[int]] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def http_server(root: Path) -> Iterator[ScriptedHttpServer]:
    """A :class:`ScriptedHttpServer` on a free loopback port, in a thread."""
    server = ScriptedHttpServer(root)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def silent_socket() -> Iterator[int]:
    """A loopback TCP port that accepts connections (the kernel does) but never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]
    finally:
        sock.close()


def write_zero_bomb(path: Path, n_bytes: int) -> int:
    """Write a one-member gzip file of ``n_bytes`` zeros (about 1,000:1); returns its size."""
    deflate = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    piece = bytes(1 << 20)
    with open(path, "wb") as fh:
        for _ in range(n_bytes >> 20):
            fh.write(deflate.compress(piece))
        fh.write(deflate.flush())
    return path.stat().st_size


# Runs ingest once and reports how much the process's resident memory grew while it ran.
#  * Everything ingest needs is imported first (and for an s3:// source the boto3 service model
#    loaded), so imports are not counted.
#  * The peak-RSS mark (VmHWM) is then reset (``5`` into /proc/self/clear_refs, Linux >= 4.0)
#    and the current RSS taken as the baseline; growth = VmHWM after ingest - that baseline.
#    Where the reset is not allowed, the peak since start is used: that can only overstate.
#  * The address space is capped 2 GiB above what is mapped, so code that reads without bound
#    (the old behaviour) ends in MemoryError in the child, not in the machine's OOM killer.
_CHILD = r"""
import json, resource, sys
from pathlib import Path

import boto3

from mnist_tasks.config import IngestConfig
from mnist_tasks.ingest import ingest
from mnist_tasks.storage import LocalStore


def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


kwargs, store_dir = json.loads(sys.argv[1]), sys.argv[2]
cfg = IngestConfig(**kwargs)
store = LocalStore(store_dir)
if cfg.source.startswith("s3://"):
    boto3.client("s3")
limit = status("VmSize") + (2 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    Path("/proc/self/clear_refs").write_text("5")
    reset = True
except OSError:
    reset = False
baseline = status("VmRSS")
try:
    ingest(cfg, store)
    error = None
except BaseException as exc:
    error = [type(exc).__name__, str(exc)[:2000]]
print(json.dumps({"error": error, "growth": status("VmHWM") - baseline, "reset": reset}))
"""


@dataclass(frozen=True)
class ChildRun:
    error_type: str | None  # the exception's class name, None if ingest succeeded
    message: str
    growth: int  # peak resident bytes above the baseline (see _CHILD)


def ingest_in_child(
    cfg_kwargs: dict[str, Any], store_dir: Path, timeout_s: float = 120
) -> ChildRun:
    """Run ``ingest(IngestConfig(**cfg_kwargs), LocalStore(store_dir))`` in a fresh Python and
    measure its peak memory growth; the environment (e.g. AWS_ENDPOINT_URL_S3) is inherited."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(cfg_kwargs), str(store_dir)],
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError(f"child failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    error = out["error"] or [None, ""]
    return ChildRun(error_type=error[0], message=error[1], growth=out["growth"])
