"""Helpers for the ingest tests: tiny synthetic IDX data sets, a loopback HTTP server, a silent
socket. Nothing here talks to anything but 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
