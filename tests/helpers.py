"""Shared test helpers (the one module test files import helpers from; no test file imports
another, nor a conftest module): tiny synthetic digits, IDX, gzip and PNG bytes, increments and
their reference, patch images and the hand-weighted model that reads them, a prepared data set
in a store, a small training config, a deterministic training crash, a loopback HTTP server and
a silent socket, typed stage results built by hand. Nothing here talks to anything but
127.0.0.1."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks.artifacts import save_npz
from mnist_tasks.config import (
    MNIST_FILES,
    IngestConfig,
    PreprocessConfig,
    TrainConfig,
    train_config,
)
from mnist_tasks.idx import encode_idx
from mnist_tasks.increments import Reference
from mnist_tasks.ingest import ingest
from mnist_tasks.preprocess import preprocess
from mnist_tasks.results import (
    Challenger,
    ChampionRecord,
    Check,
    CheckResult,
    EvaluateResult,
    GateDecision,
    IngestResult,
    Lineage,
    McNemar,
    RecallChange,
    TrainResult,
    TrainRuntime,
    Verdict,
)
from mnist_tasks.storage import LocalStore, Store
from mnist_tasks.userfiles import MARKER

REPO = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
RUN = "r1"
TEST_BUCKET = "mnist-test"  # the bucket the s3_env fixture makes on the S3 server
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRAIN_IMAGES = MNIST_FILES["train_images"]
TRAIN_LABELS = MNIST_FILES["train_labels"]
TEST_IMAGES = MNIST_FILES["test_images"]
TEST_LABELS = MNIST_FILES["test_labels"]


def seed_airflow_home(home: Path, template: Path) -> Path:
    """``home`` (made if missing) holding a copy of the migrated database ``template``."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, home / "airflow.db")
    return home


class AirflowCLI:
    """Runs the `airflow` CLI against one AIRFLOW_HOME (the end-to-end tests' ``airflow_home``),
    with this repo's dags/ and plugins/."""

    def __init__(self, home: Path, extra_env: dict[str, str | None] | None = None) -> None:
        """``extra_env`` values of None remove the variable."""
        self.home = home
        env: dict[str, str | None] = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            # `airflow dags test` on 3.3.2 cannot run DAGs with deadline alerts (see Makefile).
            "MNIST_DEADLINE_MARGIN_MINUTES": "off",
            **(extra_env or {}),
        }
        self.env = {k: v for k, v in env.items() if v is not None}

    def __call__(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AIRFLOW, *args], env=self.env, cwd=REPO, capture_output=True, text=True,
            timeout=timeout,
        )

    def dags_test(self, conf: dict[str, object]) -> subprocess.CompletedProcess[str]:
        return self("dags", "test", "mnist_training", "--conf", json.dumps(conf))


def synthetic_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 28x28 images and balanced labels 0-9 (shuffled): class c is a bright 7x6
    patch at its own place over faint noise, so a small model learns it in an epoch or two.
    No image is blank and none repeats (the noise differs)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        r, col = 2 + (c // 4) * 9, 1 + (c % 4) * 7
        x[i, r:r + 7, col:col + 6] = rng.integers(180, 256, size=(7, 6))
    return x, y.astype(np.uint8)


def make_arrays(n_train: int = 60, n_test: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    """A raw data set (what ingest stores) of :func:`synthetic_digits`; train and test differ."""
    x_train, y_train = synthetic_digits(n_train, seed=2 * seed + 1)
    x_test, y_test = synthetic_digits(n_test, seed=2 * seed + 2)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def make_prepared(store: Store, run_key: str = RUN, n_train: int = 600, n_test: int = 200,
                  val_fraction: float = 0.1, seed: int = 0,
                  dataset_key: str = "data/mnist.npz", *,
                  arrays: dict[str, np.ndarray] | None = None, split_seed: int = 7) -> str:
    """Write ``arrays`` (default: :func:`make_arrays` of ``n_train``, ``n_test``, ``seed``) to
    ``dataset_key`` and run the real preprocess stage on it; returns the prepared URI."""
    save_npz(store, dataset_key, arrays if arrays is not None
             else make_arrays(n_train, n_test, seed))
    result = preprocess(store.uri_for(dataset_key),
                        PreprocessConfig(val_fraction=val_fraction, seed=split_seed), store,
                        run_key)
    return result.prepared_uri


def small_cfg(preset: str = "seed_mlp", **overrides: Any) -> TrainConfig:
    """``preset`` for tests: 3 epochs of batch 32 unless overridden."""
    values: dict[str, Any] = {"epochs": 3, "batch_size": 32, **overrides}
    return train_config(preset, **values)


def train_model_file(folder: Path) -> Path:
    """A seed_mlp trained for two epochs on :func:`make_prepared` data, saved as
    ``folder/model.keras`` (what the ``model_file`` fixture hands out)."""
    from mnist_tasks.artifacts import load_prepared
    from mnist_tasks.storage import LocalStore
    from mnist_tasks.train import fit_arrays

    store = LocalStore(folder / "store")
    data = load_prepared(make_prepared(store), store)
    fit = fit_arrays(small_cfg(epochs=2), data.x_train, data.y_train, data.x_val, data.y_val)
    path = folder / "model.keras"
    fit.model.save(path)
    return path


def put_model(store: Store, model_file: Path, key: str = f"runs/{RUN}/train/model.keras") -> str:
    """Upload ``model_file`` to ``key``; returns its URI."""
    store.upload_file(model_file, key)
    return store.uri_for(key)


class SimulatedCrash(BaseException):
    """A crash of the training process, raised from the train stage's ``on_checkpoint`` hook.

    Not an ``Exception``: the stage logs and ignores an ``Exception`` from its hook (progress
    bookkeeping must not stop training); this one ends the run, as a kill would, at a point
    that is known exactly: right after a checkpoint is complete in the store."""


def crash_after(epoch: int, then: Callable[[dict[str, Any]], None] | None = None
                ) -> Callable[[dict[str, Any]], None]:
    """An ``on_checkpoint`` hook that passes each record to ``then`` and raises
    :class:`SimulatedCrash` on the record of ``epoch`` (before passing it on)."""

    def hook(record: dict[str, Any]) -> None:
        if record["epoch"] == epoch:
            raise SimulatedCrash(f"killed after the checkpoint of epoch {epoch}")
        if then is not None:
            then(record)

    return hook


def train_until_crash(epoch: int, prepared_uri: str, cfg: TrainConfig, store: Store,
                      run_key: str = RUN,
                      on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
                      **kwargs: Any) -> None:
    """Train until the process 'dies' right after the checkpoint of ``epoch`` is stored."""
    from mnist_tasks.train import train

    with pytest.raises(SimulatedCrash):
        train(prepared_uri, cfg, store, run_key, on_checkpoint=crash_after(epoch, on_checkpoint),
              **kwargs)


def gz(payload: bytes) -> bytes:
    """``payload`` gzip-compressed, the same bytes on every run (no timestamp)."""
    return gzip.compress(payload, mtime=0)


def gz_idx(array: np.ndarray) -> bytes:
    """``array`` as a gzip-compressed IDX file (:func:`gz`)."""
    return gz(encode_idx(array))


def png(image: np.ndarray, mode: str | None = None) -> bytes:
    """``image`` as PNG bytes (PIL's mode from its dtype and shape, or converted to ``mode``)."""
    from PIL import Image

    img = Image.fromarray(image)
    if mode is not None:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def idx_files(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    """The four gzip-compressed IDX files of ``arrays``, by MNIST file name."""
    return {
        TRAIN_IMAGES: gz_idx(arrays["x_train"]),
        TRAIN_LABELS: gz_idx(arrays["y_train"]),
        TEST_IMAGES: gz_idx(arrays["x_test"]),
        TEST_LABELS: gz_idx(arrays["y_test"]),
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


# -- increments: sparse random digits, the reference they are checked against, landed folders ----


def sparse_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct random uint8 'digits' (a fifth of the pixels inked) and labels cycling
    0..9: what the increment tests land and check."""
    rng = np.random.default_rng(seed)
    images = np.where(rng.random((n, 28, 28)) < 0.2, rng.integers(1, 256, (n, 28, 28)), 0)
    return images.astype(np.uint8), (np.arange(n) % 10).astype(np.uint8)


def reference_data(n_train: int = 2000, n_test: int = 300
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The base an increment is checked against: training images and labels
    (:func:`sparse_digits`, seed 1) and test images (seed 2)."""
    x, y = sparse_digits(n_train, seed=1)
    return x, y, sparse_digits(n_test, seed=2)[0]


def increment_reference(n_train: int = 2000, n_test: int = 300) -> Reference:
    """The increments' :class:`Reference` of :func:`reference_data`."""
    return Reference.build(*reference_data(n_train, n_test))


def land_files(root: Path, inc_id: str, files: dict[str, bytes], *,
               marker: bool = True) -> Path:
    """Write ``files`` (relative names: bytes) into the increment folder
    ``root/increments/inc_id``, then its completion marker unless ``marker`` is False."""
    folder = root / "increments" / inc_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    if marker:
        (folder / MARKER).write_bytes(b"")
    return folder


# -- patch digits: digit d is a bright 4x4 patch at its own place; a model reads them exactly -----


def patch_at(digit: int) -> tuple[slice, slice]:
    """Where ``digit``'s 4x4 patch lies in a 28x28 image (two rows of five places)."""
    row, col = 2 + (digit // 5) * 12, 2 + (digit % 5) * 5
    return slice(row, row + 4), slice(col, col + 4)


def patch_images(labels: np.ndarray, seed: int | np.random.Generator | None = None, *,
                 moved: bool = False) -> np.ndarray:
    """uint8 28x28 images, each its label's patch at 255 over faint noise (from ``seed``; a
    black background for None). ``moved`` draws each patch where the next digit's belongs,
    so :func:`patch_model` reads every image wrong."""
    if seed is None:
        x = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    else:
        x = np.random.default_rng(seed).integers(0, 40, size=(len(labels), 28, 28),
                                                 dtype=np.uint8)
    for i, digit in enumerate(labels):
        x[i][patch_at((int(digit) + 1) % 10 if moved else int(digit))] = 255
    return x


def patch_model(mapping: dict[int, int] | None = None) -> Any:
    """Flatten + Dense(10, softmax) with hand-set weights (no training) that sends the patch of
    digit d to class ``mapping.get(d, d)``: 100 % on :func:`patch_images` without a mapping."""
    import keras

    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    weights = np.zeros((28 * 28, 10), dtype=np.float32)
    for digit in range(10):
        mask = np.zeros((28, 28), dtype=np.float32)
        mask[patch_at(digit)] = 1.0
        weights[:, (mapping or {}).get(digit, digit)] += mask.ravel()
    model.layers[-1].set_weights([weights, np.zeros(10, dtype=np.float32)])
    return model


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


@dataclass
class LineageGraph:
    """The datasets and jobs of OpenLineage events (the file transport's JSON lines): each
    dataset as (namespace, name), each job as ``namespace/name``."""

    inputs_of: dict[str, set[tuple[str, str]]]
    outputs_of: dict[str, set[tuple[str, str]]]
    jobs: dict[tuple[str, str], set[str]]  # dataset -> the jobs that wrote it
    facets: dict[tuple[str, str], dict[str, Any]]  # dataset -> its facets (its writer's first)

    def reaches(self, start: tuple[str, str], end: tuple[str, str]) -> bool:
        """Whether a chain of jobs leads from dataset ``start`` to dataset ``end``."""
        seen, todo = {start}, [start]
        while todo:
            ds = todo.pop()
            for job, ins in self.inputs_of.items():
                if ds in ins:
                    for out in self.outputs_of.get(job, set()) - seen:
                        seen.add(out)
                        todo.append(out)
        return end in seen

    def describe(self) -> str:
        return "\n".join(f"{job}: {sorted(self.inputs_of.get(job, ()))} -> "
                         f"{sorted(self.outputs_of.get(job, ()))}"
                         for job in sorted({*self.inputs_of, *self.outputs_of}))


def lineage_graph(lines: list[str]) -> LineageGraph:
    """The graph of the COMPLETE events among ``lines``."""
    graph = LineageGraph({}, {}, {}, {})
    for line in lines:
        event = json.loads(line)
        if event.get("eventType") != "COMPLETE":
            continue
        job = f"{event['job']['namespace']}/{event['job']['name']}"
        for side, into in (("inputs", graph.inputs_of), ("outputs", graph.outputs_of)):
            for ds in event.get(side) or ():
                key = (ds["namespace"], ds["name"])
                into.setdefault(job, set()).add(key)
                facets, known = ds.get("facets") or {}, graph.facets.get(key, {})
                if side == "outputs":
                    graph.jobs.setdefault(key, set()).add(job)
                    graph.facets[key] = {**known, **facets}
                else:  # the writer's facets win over a reader's
                    graph.facets[key] = {**facets, **known}
    return graph


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


# Runs one function in a fresh Python and reports how much its resident memory grew meanwhile.
#  * The function's module is imported first (and boto3's S3 service model loaded), so imports
#    are not counted.
#  * The peak-RSS mark (VmHWM) is then reset (``5`` into /proc/self/clear_refs, Linux >= 4.0)
#    and the current RSS taken as the baseline; growth = VmHWM after the call - that baseline.
#    Where the reset is not allowed, the peak since start is used: that can only overstate.
#  * The address space is capped 2 GiB above what is mapped, so code that reads without bound
#    ends in MemoryError in the child, not in the machine's OOM killer.
_CHILD = r"""
import importlib, json, resource, sys
from pathlib import Path

import boto3


def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


module, _, name = sys.argv[1].partition(":")
func = getattr(importlib.import_module(module), name)
args = json.loads(sys.argv[2])
boto3.client("s3", region_name="us-east-1")
limit = status("VmSize") + (2 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    Path("/proc/self/clear_refs").write_text("5")
except OSError:
    pass
baseline = status("VmRSS")
try:
    value = func(*args)
    error = None
except BaseException as exc:
    value, error = None, [type(exc).__name__, str(exc)[:2000]]
print(json.dumps({"error": error, "growth": status("VmHWM") - baseline, "value": value}))
"""


@dataclass(frozen=True)
class ChildRun:
    error_type: str | None  # the exception's class name, None if the call succeeded
    message: str
    growth: int  # peak resident bytes above the baseline (see _CHILD)
    value: Any = None  # what the call returned (JSON)


def call_in_child(target: str, *args: Any, timeout_s: float = 120) -> ChildRun:
    """Call ``target`` ("module:function") with JSON-able ``args`` in a fresh Python and
    measure its peak memory growth; the environment (e.g. AWS_ENDPOINT_URL_S3) is inherited."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, target, json.dumps(args)],
        capture_output=True, text=True, timeout=timeout_s, check=False,
        cwd=REPO,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError(f"child failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    error = out["error"] or [None, ""]
    return ChildRun(error_type=error[0], message=error[1], growth=out["growth"],
                    value=out["value"])


def run_ingest(cfg_kwargs: dict[str, Any], store_dir: str) -> None:
    """``ingest`` into a folder store (for :func:`call_in_child`)."""
    ingest(IngestConfig(**cfg_kwargs), LocalStore(store_dir))


def ingest_in_child(
    cfg_kwargs: dict[str, Any], store_dir: Path, timeout_s: float = 120
) -> ChildRun:
    """Run ``ingest(IngestConfig(**cfg_kwargs), LocalStore(store_dir))`` in a fresh Python and
    measure its peak memory growth (:func:`call_in_child`)."""
    return call_in_child("tests.helpers:run_ingest", cfg_kwargs, str(store_dir),
                         timeout_s=timeout_s)


# -- how `make test` spreads the suite over its pytest-xdist workers (tests/conftest.py) ----------
# The Celery deployment's scenarios live in files named test_celery_*.py (a collection check
# enforces it), split into two halves of about equal length: each xdist worker runs one half on
# a deployment of its own (the session fixture is per process), since the training DAG runs one
# run at a time (max_active_runs=1) and one deployment would run every scenario's runs in a row.
CELERY_FILE_PREFIX = "test_celery_"
CELERY_SECOND_HALF = frozenset({"test_celery_approval.py", "test_celery_scoring.py"})


def xdist_scope(nodeid: str) -> str:
    """The unit of work an xdist worker takes whole: a half of the deployment's scenarios; the
    tests against the MLflow server (one server for them all); a
    file of DAG, integration or end-to-end tests (they share module set-ups: an Airflow home, a
    DagBag, a browser, a trained model); a single unit test."""
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    if parts[-1].startswith(CELERY_FILE_PREFIX):
        return "celery-deployment-" + ("2" if parts[-1] in CELERY_SECOND_HALF else "1")
    if "unit" in parts[:-1]:
        return nodeid
    if "mlflow" in nodeid:  # one worker starts the MLflow server (the mlflow_server fixture)
        return "mlflow"
    return path


# -- typed stage results, built by hand (what a stage would return) -------------------------------
# Each builder gives a plausible result; keyword arguments replace its fields.

RUNS = "file:///s/runs/r"


def lineage(**fields: Any) -> Lineage:
    return dataclasses.replace(Lineage(
        dataset_version="0123456789abcdef", inputs_key="fedcba9876543210",
        code_fingerprint="c0de" * 16, increments=(), quarantined=()), **fields)


def ingest_result(**fields: Any) -> IngestResult:
    return dataclasses.replace(IngestResult(
        dataset_uri="file:///s/cache/datasets/k/mnist.npz", dataset_key="k", cached=False,
        source="/data/mnist", verification="pinned",
        checksums={name: f"{i:064x}" for i, name in enumerate(sorted(MNIST_FILES.values()))},
        counts={"train": 60, "test": 30}, image_shape=(28, 28), data_sha256="d" * 64,
        report_uri="file:///s/cache/datasets/k/validation.json",
        report_summary={"passed": True}, seconds=0.5, dataset_version="0123456789abcdef",
        dataset_manifest_uri="file:///s/datasets/0123456789abcdef/manifest.json",
        increments=(), quarantined=(), increments_new=(), increments_ignored=(),
        increments_changed=(), increments_source="file:///data/mnist/increments"), **fields)


def check_result(**fields: Any) -> CheckResult:
    return dataclasses.replace(CheckResult(
        decision="TRAIN", covered_by=None, dataset_uri="file:///s/cache/datasets/k/mnist.npz",
        dataset_version="0123456789abcdef", inputs_key="fedcba9876543210",
        champion_version=None, champion_inputs_key=None, champion_fresh={}, warnings=(),
        force=False, lineage=lineage()), **fields)


def train_result(**fields: Any) -> TrainResult:
    return dataclasses.replace(TrainResult(
        model_uri=f"{RUNS}/train/model.keras", history_uri=f"{RUNS}/train/history.json",
        prepared_uri=f"{RUNS}/preprocess/prepared.npz", train_uri=f"{RUNS}/train/result.json",
        preset="tiny", epochs_run=0, fit_seconds=0.0, checkpoint_seconds=0.0, device="CPU",
        resumed_from_epoch=0, best_val_accuracy=None, best_epoch=None, stopped_early=False,
        n_train=40, n_val=10, params={"preset": "tiny", "seed": 1},
        runtime=TrainRuntime(device="CPU", backend="tensorflow", batch_size=32,
                             learning_rate=0.001, jit_compile=False, mixed_precision=False,
                             deterministic=True),
        candidate=None), **fields)


def evaluate_result(**fields: Any) -> EvaluateResult:
    return dataclasses.replace(EvaluateResult(
        metrics_uri=f"{RUNS}/evaluate/metrics.json", report_uri=f"{RUNS}/evaluate/report.txt",
        predictions_uri=f"{RUNS}/evaluate/predictions.npy", plots={}, test_accuracy=0.9812,
        test_loss=0.061, n_test=10_000, fresh=None, fresh_accuracy=None,
        fresh_predictions_uri=None, model_uri=f"{RUNS}/train/model.keras",
        model_sha256="a" * 64, prepared_uri=f"{RUNS}/preprocess/prepared.npz",
        history_uri=f"{RUNS}/train/history.json", train_uri=f"{RUNS}/train/result.json",
        result_uri=f"{RUNS}/evaluate/result.json"), **fields)


def recall_rows(**drops: float) -> dict[str, RecallChange]:
    """Per-digit recall: champion 0.98 everywhere, the challenger lower by ``drops``
    (``d3=0.004``), else higher by 0.002."""
    return {str(d): RecallChange(champion=0.98, challenger=0.98 - drops.get(f"d{d}", -0.002),
                                 drop=drops.get(f"d{d}", -0.002)) for d in range(10)}


def gate_decision(verdict: Verdict = "PROMOTE", *, champion: int | None = 3, p: float = 0.001,
                  b: int = 40, c: int = 90, per_digit: dict[str, RecallChange] | None = None,
                  **fields: Any) -> GateDecision:
    """A gate decision over champion ``champion`` (None: the first model) with McNemar's
    ``p``, ``b`` and ``c``."""
    return dataclasses.replace(GateDecision(
        decision=verdict,
        reasons=("threshold PASS: benchmark: test accuracy 0.9812 >= minimum 0.9700",
                 "champion PASS: benchmark: challenger 0.9812 vs champion v3 0.9762"),
        checks=(Check("threshold", True, "test accuracy 0.9812 >= minimum 0.9700", "benchmark"),
                Check("champion", True, "challenger 0.9812 vs champion v3 0.9762",
                      "benchmark")),
        challenger=Challenger(accuracy=0.9812, loss=0.061, run_key="r",
                              predictions_uri=f"{RUNS}/evaluate/predictions.npy"),
        champion=None if champion is None else ChampionRecord(
            version=champion, accuracy=0.9762,
            model_uri=f"file:///s/registry/m/versions/{champion:06d}/model.keras",
            predictions_uri=f"{RUNS}/gate/champion_predictions.npy"),
        mcnemar=None if champion is None else McNemar(
            b=b, c=c, p_value=p, method="exact binomial", significant=p < 0.05),
        per_digit_recall={} if champion is None else (
            per_digit if per_digit is not None else recall_rows()),
        fresh=None, config={"min_accuracy": 0.97, "significance": 0.05},
        decided_at="2026-11-22T04:00:00.000+00:00", decision_uri=f"{RUNS}/gate/decision.json",
        evaluation_uri=f"{RUNS}/evaluate/result.json",
        prepared_uri=f"{RUNS}/preprocess/prepared.npz"), **fields)
