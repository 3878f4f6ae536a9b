"""What several stages share: the artifacts they pass on, and how to read, write and reuse them.

* constants: :data:`NUM_CLASSES`, the array names of a data set and of prepared data;
* ``.npz`` and JSON objects in a store: :func:`load_npz`, :func:`save_npz`, :func:`read_json`,
  :func:`write_json`, :func:`data_sha256`; typed results (:mod:`mnist_tasks.results`):
  :func:`write_result`, :func:`read_result`, and a retried stage's :func:`recorded_result`;
* prepared data (what preprocess writes, what train, evaluate, gate and register read):
  :class:`Prepared`, :func:`load_prepared`, :func:`prepared_record_uri`;
* models: :func:`load_keras_model` (safe mode), :func:`load_model_from_store`,
  :func:`predict_proba`, :func:`predict_classes`;
* the code's identity, for a run's inputs key: :func:`code_fingerprint`; where a run's
  candidates table is: :func:`candidates_key`; time and JSON: :func:`utc_now`,
  :func:`json_default`.

NumPy and Keras are imported only by the functions that need them, so the model registry (and
the Airflow UI plugin that reads it) can use the time and JSON helpers without loading either.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mnist_tasks.results import ResultError, from_json, to_json
from mnist_tasks.storage import ObjectNotFound, Store

if TYPE_CHECKING:
    import keras
    import numpy as np

log = logging.getLogger(__name__)

R = TypeVar("R")

NUM_CLASSES = 10  # the digits 0-9
# The cached data set written by ingest (uint8 images, labels).
RAW_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
# The prepared data written by preprocess (float32 images in [0, 1], uint8 labels).
PREPARED_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
# The held-out fresh parts of the accepted increments (never trained on): float32 images,
# uint8 labels, and for each image the index of its increment in meta["fresh_increments"].
# Absent from prepared data written before increments existed (then read as empty arrays).
FRESH_ARRAYS = ("x_fresh", "y_fresh", "fresh_increment")


# --- time and JSON ------------------------------------------------------------------------------


def utc_now() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for what the stages record: NumPy scalars and arrays, paths.

    Raises:
        TypeError: for anything else, naming the value and its type.
    """
    if isinstance(value, Path):
        return str(value)
    tolist = getattr(value, "tolist", None)  # NumPy scalars and arrays -> Python values
    if callable(tolist):
        return tolist()
    raise TypeError(f"{value!r} ({type(value).__name__}) is not JSON-serialisable")


def read_json(store: Store, key: str) -> Any:
    """The JSON object at ``key``.

    Raises:
        ObjectNotFound: if it does not exist.
        ValueError: if it is not valid JSON.
    """
    return json.loads(store.read_bytes(key))


def write_json(store: Store, key: str, obj: Any, *, indent: int = 2) -> None:
    """Write ``obj`` as indented JSON at ``key`` (atomically: the store's writes are)."""
    store.write_bytes(key, json.dumps(obj, indent=indent, default=json_default).encode())


def write_result(store: Store, key: str, result: Any) -> None:
    """Write a stage's typed result as its record at ``key`` (its :func:`to_json` form)."""
    write_json(store, key, to_json(result))


def read_result(store: Store, uri: str, cls: type[R]) -> R:
    """The ``cls`` result recorded at ``uri`` (a reference a later stage holds).

    Raises:
        ObjectNotFound: if there is no record.
        InvalidKey: if ``uri`` is not in ``store``.
        ValueError: if it is not valid JSON, or not a ``cls`` (ResultError, naming the field).
    """
    try:
        return from_json(cls, read_json(store, store.key_of(uri)))
    except ResultError as exc:
        raise ResultError(f"{uri}: {exc}") from None


def candidates_key(run_key: str) -> str:
    """Where select writes the run's candidates table (and register reads it)."""
    return f"runs/{run_key}/candidates.json"


# --- arrays -------------------------------------------------------------------------------------


def load_npz(
    store: Store, key: str, names: tuple[str, ...], *, optional: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Load the named arrays of an ``.npz`` object fully into memory.

    Args:
        optional: arrays loaded when present and left out of the result when not.

    Raises:
        ObjectNotFound: if the object does not exist.
        ValueError: if an array of ``names`` is missing, naming the object and the array.
    """
    import numpy as np

    with store.local_copy(key) as path, np.load(path, allow_pickle=False) as npz:
        missing = [n for n in names if n not in npz.files]
        if missing:
            raise ValueError(f"{store.uri_for(key)}: missing arrays {missing}")
        return {n: npz[n] for n in (*names, *(o for o in optional if o in npz.files))}


def save_npz(store: Store, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as an uncompressed ``.npz`` object, atomically."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="mnist-npz-") as tmp:
        path = Path(tmp) / "data.npz"
        np.savez(path, **arrays)  # type: ignore[arg-type]
        store.upload_file(path, key)


def data_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the raw arrays (names, shapes, dtypes and bytes): the data's identity."""
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.data)
    return h.hexdigest()


def empty_fresh(image_shape: tuple[int, ...] = (28, 28)) -> dict[str, np.ndarray]:
    """The fresh arrays of prepared data without fresh images: all three of length 0."""
    import numpy as np

    return {"x_fresh": np.zeros((0, *image_shape), dtype=np.float32),
            "y_fresh": np.zeros(0, dtype=np.uint8),
            "fresh_increment": np.zeros(0, dtype=np.int32)}


def _no_images() -> np.ndarray:
    return empty_fresh()["x_fresh"]


def _no_labels() -> np.ndarray:
    return empty_fresh()["y_fresh"]


def _no_index() -> np.ndarray:
    return empty_fresh()["fresh_increment"]


@dataclass(frozen=True)
class Prepared:
    """The arrays a model is trained and evaluated on, plus their metadata.

    ``x_test``/``y_test`` are the benchmark (the fixed MNIST test set). ``x_fresh`` (float32,
    N x 28 x 28), ``y_fresh`` and ``fresh_increment`` (int, an index into
    ``meta["fresh_increments"]``, the list of increment ids) are the accepted increments'
    held-out parts, never trained on; all three have length 0 when the dataset version has no
    accepted increment, and for prepared data written before increments existed.
    ``meta["dataset_version"]`` is the dataset version's id (absent for such older data).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    meta: dict[str, Any]
    x_fresh: np.ndarray = field(default_factory=_no_images)
    y_fresh: np.ndarray = field(default_factory=_no_labels)
    fresh_increment: np.ndarray = field(default_factory=_no_index)

    @property
    def fresh_increments(self) -> list[str]:
        """The increment ids ``fresh_increment`` indexes (empty without fresh data)."""
        return [str(i) for i in self.meta.get("fresh_increments") or []]


def prepared_record_uri(prepared_uri: str) -> str:
    """The ``prepared.json`` beside the prepared arrays: preprocess's record of them."""
    return prepared_uri.rsplit("/", 1)[0] + "/prepared.json"


def load_prepared(prepared_uri: str, store: Store) -> Prepared:
    """Load the prepared data at ``prepared_uri`` and the ``prepared.json`` beside it.

    Raises:
        ObjectNotFound: if the prepared data or its metadata are missing.
        ValueError: if an array is missing.
    """
    arrays = load_npz(store, store.key_of(prepared_uri), PREPARED_ARRAYS, optional=FRESH_ARRAYS)
    if not all(name in arrays for name in FRESH_ARRAYS):
        arrays.update(empty_fresh(tuple(arrays["x_test"].shape[1:])))
    meta = read_json(store, store.key_of(prepared_record_uri(prepared_uri)))
    return Prepared(meta=meta, **arrays)


# --- models -------------------------------------------------------------------------------------


def load_keras_model(path: str | Path, *, compile: bool = False) -> keras.Model:
    """Load a ``.keras`` model file in safe mode (no arbitrary code from the file runs).

    Args:
        path: a local ``.keras`` file.
        compile: also restore the optimizer and loss (needed to continue training).

    Returns:
        The model.

    Raises:
        ValueError: if the file is not a loadable Keras model; the message names the file.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such model file")
    try:
        with warnings.catch_warnings():
            # Compiling while loading checks XLA support before allow_jit() below can lift
            # Keras's blanket flag on the augmentation layers; the caller sets jit_compile.
            warnings.filterwarnings("ignore", message="Model doesn't support `jit_compile")
            model = keras.saving.load_model(path, safe_mode=True, compile=compile)
    except Exception as exc:
        raise ValueError(f"{path}: not a loadable Keras model: {exc}") from exc
    return _allow_jit(model)


def _allow_jit(model: keras.Model) -> keras.Model:
    """Let XLA compile a loaded model with random image-augmentation layers on JAX.

    Keras marks RandomTranslation/RandomRotation/RandomZoom ``supports_jit = False`` on every
    backend (TensorFlow's image-transform op has no XLA kernel), which on JAX would run the
    whole step op by op; their JAX implementation compiles fine. Today's presets have no such
    layer (shifts are made in the input pipeline); cnn versions registered before that have.
    """
    import keras

    if keras.backend.backend() == "jax":
        for layer in model.layers:
            layer.supports_jit = True
    return model


def load_model_from_store(store: Store, model_uri: str) -> keras.Model:
    """Download the model at ``model_uri`` to a temporary file and load it in safe mode.

    Raises:
        ObjectNotFound: if the model does not exist.
        InvalidKey: if ``model_uri`` is not in ``store``.
        ValueError: if it is not a loadable Keras model.
    """
    key = store.key_of(model_uri)
    with tempfile.TemporaryDirectory(prefix="mnist-model-") as tmp:
        path = Path(tmp) / "model.keras"
        store.download_file(key, path)
        try:
            return load_keras_model(path)
        except ValueError as exc:
            raise ValueError(f"{model_uri}: {exc}") from exc


def full_batches(x: np.ndarray, batch_size: int) -> Iterable[tuple[np.ndarray, int]]:
    """``x`` in batches of exactly ``batch_size`` rows, each with its count of real rows: the
    last is padded with zeros (slice its outputs to the count).

    Batch by batch, not ``model.predict``: with TensorFlow's op determinism on (a training
    process), predict's tf.data pipeline logs an "E0000 ... use_unbounded_threadpool" line. And
    one shape: TensorFlow traces a model's predict step once per input shape, and a stage that
    predicts with a few models on odd-sized sets traced often enough for TensorFlow to log its
    "triggered tf.function retracing" warning in the task's log.
    """
    import numpy as np

    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
        yield batch, n


def predict_proba(model: keras.Model, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities, float32 of shape (N, classes)."""
    import numpy as np

    if len(x) == 0:
        return np.zeros((0, int(model.output_shape[-1])), dtype=np.float32)
    return np.concatenate([np.asarray(model.predict_on_batch(batch), np.float32)[:n]
                           for batch, n in full_batches(x, batch_size)])


def predict_classes(model: keras.Model, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The predicted class of each example, int64 of shape (N,)."""
    import numpy as np

    return np.argmax(predict_proba(model, x, batch_size), axis=1).astype(np.int64)


# --- code identity ------------------------------------------------------------------------------


@functools.cache
def code_fingerprint() -> str:
    """SHA-256 (hex) over the library's code: the sorted ``mnist_tasks/*.py`` files, each as
    its name and its bytes.

    Part of a run's inputs key: a model trained by other code is not "the same inputs", even on
    the same data and config. Computed once per process.
    """
    h = hashlib.sha256(b"mnist-tasks/code-fingerprint/1\n")
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        data = path.read_bytes()
        h.update(f"{path.name}:{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


# --- retries ------------------------------------------------------------------------------------


def recorded_result(
    store: Store,
    key: str,
    cls: type[R],
    inputs: Mapping[str, Any],
    *,
    requires: Iterable[str] = (),
) -> R | None:
    """The result an earlier attempt of a stage recorded at ``key``, if it still holds.

    A stage writes its result record last, after its artifacts; a retry calls this first and
    returns what it gets instead of doing the work again.

    Args:
        store: the run's store.
        key: the recorded result (e.g. ``runs/<run-key>/train/result.json``).
        cls: the result's type.
        inputs: what the result must have been made from: each key must be in the recorded
            JSON with an equal value.
        requires: keys of artifacts that must still exist for the result to be usable.

    Returns:
        The recorded result, or None when there is none, it is unreadable or not a ``cls``
        (logged), it was made from other inputs (logged), or a required artifact is missing.
    """
    uri = store.uri_for(key)
    try:
        recorded = read_json(store, key)
    except ObjectNotFound:
        return None
    except ValueError as exc:
        log.warning("ignoring unreadable %s: %s", uri, exc)
        return None
    if not isinstance(recorded, dict):
        log.warning("ignoring %s: not a JSON object", uri)
        return None
    changed = sorted(k for k, v in inputs.items() if recorded.get(k) != v)
    if changed:
        log.warning("%s was made from other inputs (%s differ); doing the work again",
                    uri, ", ".join(changed))
        return None
    if not all(store.exists(k) for k in requires):
        return None
    try:
        return from_json(cls, recorded)
    except ResultError as exc:  # written by another version of the stage
        log.warning("ignoring %s: %s; doing the work again", uri, exc)
        return None
