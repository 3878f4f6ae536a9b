"""Train: fit the preset's Keras 3 model on the prepared data, with checkpoints for resume.

Writes under ``runs/<run-key>/train/`` ``model.keras`` (loads with ``safe_mode=True``),
``history.json`` (per-epoch metrics and seconds) and last ``result.json``, the result (a retry
finds it and returns it). While training, ``checkpoints/`` holds the model and optimizer state
after the latest epoch and ``checkpoint.json`` naming it, written after the files it names: a
killed task resumes from there (docs/architecture.md, Resume after a crash). Batches come from
NumPy (:func:`shifted_batches`: shuffled each epoch, shifted or distorted for a preset that
augments, :mod:`mnist_tasks.augment`); one log line per epoch. Only Keras 3 APIs are used,
so JAX works too; the backend-specific spot is :mod:`mnist_tasks.runtime`.

Run it alone: ``python -m mnist_tasks train --prepared @preprocess.json --store URI --run-id ID``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_tasks import models
from mnist_tasks.artifacts import (
    NUM_CLASSES,
    load_keras_model,
    load_prepared,
    read_json,
    recorded_result,
    write_json,
    write_result,
)
from mnist_tasks.augment import Distortion
from mnist_tasks.config import ConfigError, TrainConfig
from mnist_tasks.results import TrainResult, to_json
from mnist_tasks.runtime import Runtime, resolve_runtime
from mnist_tasks.storage import ObjectNotFound, Store

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
# Threads that make distorted training batches while the model trains (shifted_batches).
AUGMENT_WORKERS = 2
CHECKPOINT_MARKER = "checkpoint.json"


# --------------------------------------------------------------------------------------------
# The fit itself, on in-memory arrays (also what bench/train.py calls).
# --------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """What :func:`fit_arrays` produced."""

    model: keras.Model
    history: dict[str, list[float]]  # "epoch", "loss", "accuracy", "val_loss", ..., "seconds"
    fit_seconds: float  # wall time of model.fit in this process (incl. checkpoint uploads)
    epochs_run: int  # epochs completed in total (including those before a resume)
    runtime: Runtime
    stopped_early: bool = False
    best_epoch: int | None = None  # 1-based epoch of the best val_loss (early stopping)
    checkpoint_seconds: float = 0.0


@dataclass
class _Resume:
    """State restored from a checkpoint."""

    epoch: int  # epochs already completed
    history: dict[str, list[float]]
    early_stopping: dict[str, Any] | None = None
    best_weights: list[np.ndarray] | None = None
    uri: str = ""


# Called after each epoch with (epoch completed, model, history so far, early-stopping state,
# best weights); returns the seconds it took.
CheckpointFn = Callable[
    [int, "keras.Model", dict[str, list[float]], dict[str, Any] | None, list[np.ndarray] | None],
    float,
]


@dataclass
class _EpochTracker:
    """Per-epoch bookkeeping: timing, history, checkpoint, one log line."""

    model: Any
    epochs: int
    n_train: int
    history: dict[str, list[float]]
    early_stopping: Any = None
    checkpoint: CheckpointFn | None = None
    checkpoint_seconds: float = 0.0
    _t0: float = 0.0
    _elapsed: list[float] = field(default_factory=list)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - self._t0
        logs = logs or {}
        done = epoch + 1
        self.history.setdefault("epoch", []).append(done)
        for key in HISTORY_KEYS:
            if key in logs:
                self.history.setdefault(key, []).append(float(logs[key]))
        self.history.setdefault("seconds", []).append(round(seconds, 4))
        ckpt = 0.0
        if self.checkpoint is not None:
            es_state, best = _early_stopping_state(self.early_stopping)
            ckpt = self.checkpoint(done, self.model, self.history, es_state, best)
            self.checkpoint_seconds += ckpt
        self._elapsed.append(seconds + ckpt)
        recent = self._elapsed[-3:]
        eta = (self.epochs - done) * sum(recent) / len(recent)
        metrics = " ".join(f"{k}={float(logs[k]):.4f}" for k in HISTORY_KEYS if k in logs)
        log.info("epoch %d/%d %s time=%.1fs samples/s=%.0f eta=%.1fs%s", done, self.epochs,
                 metrics, seconds, self.n_train / max(seconds, 1e-9), eta,
                 f" checkpoint={ckpt:.2f}s" if self.checkpoint is not None else "")


def _early_stopping_state(es: Any) -> tuple[dict[str, Any] | None, list[np.ndarray] | None]:
    if es is None:
        return None, None
    best = None if es.best is None else float(es.best)
    state = {"wait": int(es.wait), "best": best, "best_epoch": int(es.best_epoch),
             "stopped_epoch": int(es.stopped_epoch)}
    weights = None if es.best_weights is None else [np.asarray(w) for w in es.best_weights]
    return state, weights


def shifted_batches(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    max_shift: int = 0,
    distortion: Distortion | None = None,
    seed: int | Sequence[int] = 0,
    shuffle: bool = True,
) -> Any:
    """The batches of one epoch, shuffled, each image shifted by a random whole number of pixels.

    Every epoch draws a new order and, per image, a shift in ``[-max_shift, max_shift]`` along
    rows and columns (the uncovered border is 0, the background). A batch is cut from a
    zero-padded copy of its images with one strided view and one gather, a few milliseconds
    in NumPy: no projective transform, and nothing added to the model. Draws come from a NumPy
    generator seeded with ``seed``, so a run is reproducible.

    A batch that is distorted (``distortion``) is made in one of :data:`AUGMENT_WORKERS`
    threads (Keras's ``PyDataset`` workers), while the model trains on the batches before it:
    made one at a time, in the thread that feeds the model, they kept the model waiting (mlp_plus's
    fit took twice as long). Each batch draws from its own generator, seeded with ``seed``,
    the epoch and the batch's index, so the threads' timing never changes what is drawn.

    This is also how the validation data reaches Keras (``max_shift=0, shuffle=False``): with
    TensorFlow's op determinism on, Keras's own array pipeline (a parallel ``tf.data`` map) is
    rewritten by TensorFlow, which logs an ``E0000 ... use_unbounded_threadpool`` line per fit.

    Args:
        x: images, shape (N, rows, cols) (any shape when ``max_shift`` is 0).
        y: labels (N, ...), passed through unchanged.
        batch_size: images per batch (the last batch may be smaller).
        max_shift: the largest shift in pixels (0: no shift).
        distortion: if active, each image is distorted by it instead (rotation, zoom,
            sub-pixel shift, elastic; :mod:`mnist_tasks.augment`) and ``max_shift`` is unused.
        seed: seeds the order and the shifts (``numpy.random.default_rng``).
        shuffle: draw a new order every epoch (else the arrays' order).

    Returns:
        A ``keras.utils.PyDataset`` for ``model.fit`` (one pass is one epoch).
    """
    import keras

    warp = distortion if distortion is not None and distortion.active else None
    entropy = [int(s) for s in np.atleast_1d(np.asarray(seed))]

    class ShiftedBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=AUGMENT_WORKERS if warp is not None else 1)
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(x))
            self.offsets = np.zeros((len(x), 2), np.intp)
            self.epoch = -1
            self.on_epoch_end()

        def __len__(self) -> int:
            return max(1, math.ceil(len(x) / batch_size))

        def on_epoch_end(self) -> None:
            # Keras calls this between epochs, after the last batch of one and before the
            # first of the next, never while a worker makes a batch.
            self.epoch += 1
            if shuffle:
                self.order = self.rng.permutation(len(x))
            if max_shift:
                self.offsets = self.rng.integers(0, 2 * max_shift + 1, size=(len(x), 2))

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            rows = self.order[index * batch_size:(index + 1) * batch_size]
            images = x[rows]
            if warp is not None:
                rng = np.random.default_rng([*entropy, self.epoch, index])
                return warp.apply(images, rng), y[rows]
            if max_shift:
                s = max_shift
                padded = np.pad(images, ((0, 0), (s, s), (s, s)))
                windows = np.lib.stride_tricks.sliding_window_view(
                    padded, images.shape[1:], axis=(1, 2))  # (n, 2s+1, 2s+1, rows, cols)
                off = self.offsets[rows]
                images = windows[np.arange(len(rows)), off[:, 0], off[:, 1]]
            return images, y[rows]

    return ShiftedBatches()


def _describe(d: Distortion) -> str:
    """``shifted by up to 2 px, rotated by up to 8°, ...`` for the log."""
    parts = [f"shifted by up to {d.shift_pixels:g} px" if d.shift_pixels else "",
             f"rotated by up to {d.rotation_degrees:g}°" if d.rotation_degrees else "",
             f"zoomed by up to {d.zoom:.0%}" if d.zoom else "",
             f"elastically distorted ({d.elastic_pixels:g} px)" if d.elastic_pixels else ""]
    return ", ".join(p for p in parts if p)


def _check_arrays(x: np.ndarray, y: np.ndarray, name: str, num_classes: int) -> None:
    if x.ndim < 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: x has shape {x.shape} but y has shape {y.shape}; "
                         "expected N images and N labels")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{name}: labels must be in [0, {num_classes}), "
                         f"got {int(y.min())}..{int(y.max())}")


def fit_arrays(
    cfg: TrainConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    *,
    runtime: Runtime | None = None,
    checkpoint: CheckpointFn | None = None,
    resume_model: keras.Model | None = None,
    resume: _Resume | None = None,
    callbacks: Sequence[Any] = (),
    num_classes: int = NUM_CLASSES,
) -> FitResult:
    """Build, compile and fit the preset's model on in-memory arrays.

    The plain fit path, with no store: :func:`train` adds loading, checkpoints and uploads;
    ``bench/train.py`` calls this directly.

    Args:
        cfg: the training config.
        x_train: float32 images in [0, 1], shape (N, rows, cols).
        y_train: integer labels, shape (N,).
        x_val: validation images (or None / empty for no validation).
        y_val: validation labels.
        runtime: from :func:`resolve_runtime` (resolved here if None).
        checkpoint: called after each epoch to save a checkpoint.
        resume_model: a compiled model restored from a checkpoint (then ``resume`` says where).
        resume: the restored epoch, history and early-stopping state.
        callbacks: more ``keras.callbacks.Callback`` objects, run after the built-in ones.
        num_classes: the number of classes.

    Returns:
        A :class:`FitResult` with the trained model and its history.

    Raises:
        ValueError: if the arrays' shapes or labels do not fit together.
    """
    import keras

    _check_arrays(x_train, y_train, "training data", num_classes)
    has_val = x_val is not None and y_val is not None and len(x_val) > 0
    if has_val:
        assert x_val is not None and y_val is not None
        _check_arrays(x_val, y_val, "validation data", num_classes)
    distortion = Distortion(rotation_degrees=cfg.rotation_degrees, zoom=cfg.zoom,
                            shift_pixels=cfg.shift_pixels, elastic_pixels=cfg.elastic_pixels)
    if distortion.active and x_train.ndim != 3:
        augmenting = ", ".join(f"{k}={getattr(cfg, k)}" for k in (
            "shift_pixels", "rotation_degrees", "zoom", "elastic_pixels") if getattr(cfg, k))
        raise ValueError(f"training data: {augmenting} needs 2-D images "
                         f"(N, rows, cols); x has shape {x_train.shape}")
    # Whole-pixel shifts alone take shifted_batches' cheaper path (a strided view, no resampling).
    warped = distortion.active and distortion != Distortion(shift_pixels=cfg.shift_pixels)
    runtime = runtime or resolve_runtime(cfg)
    n_train = len(x_train)
    steps = models.steps_per_epoch(n_train, runtime.batch_size)

    if resume_model is not None:
        model = resume_model
    else:
        model = models.build_model(cfg, input_shape=tuple(x_train.shape[1:]),
                                   num_classes=num_classes,
                                   mixed_precision=runtime.mixed_precision)
    jit = runtime.jit_compile and models.supports_jit(model)
    if runtime.jit_compile and not jit:
        log.info("XLA off: the %s model has layers that cannot run under XLA on the %s "
                 "backend", cfg.preset, runtime.device.backend)
    if resume_model is not None:
        model.jit_compile = jit  # restored with the compile settings of the saving process
    else:
        models.compile_model(model, cfg, steps_per_epoch=steps,
                             learning_rate=runtime.learning_rate, jit_compile=jit)

    log.info("fitting %s: %d epochs of %d steps (batch %d, %d steps per execution)%s",
             cfg.preset, cfg.epochs, steps, runtime.batch_size, cfg.steps_per_execution,
             f", images {_describe(distortion)}" if distortion.active else "")

    def labels(y: np.ndarray) -> np.ndarray:
        if models.uses_one_hot(cfg):
            return np.asarray(keras.utils.to_categorical(y, num_classes), dtype=np.float32)
        return np.asarray(y, dtype=np.int32)

    initial_epoch = resume.epoch if resume else 0
    history: dict[str, list[float]] = (
        {k: list(v) for k, v in resume.history.items()} if resume else {}
    )
    hooks: list[Any] = []
    es = None
    if cfg.early_stopping_patience > 0:
        monitor = "val_loss" if has_val else "loss"
        if not has_val:
            log.warning("no validation data: early stopping monitors the training loss")
        es = keras.callbacks.EarlyStopping(monitor=monitor,
                                           patience=cfg.early_stopping_patience,
                                           restore_best_weights=True)
        hooks.append(es)
        if resume and resume.early_stopping:
            state, best_weights = resume.early_stopping, resume.best_weights

            def restore_es(logs: dict[str, Any] | None = None) -> None:
                # Runs right after EarlyStopping.on_train_begin reset it.
                es.wait = state["wait"]
                es.best = state["best"]
                es.best_epoch = state["best_epoch"]
                es.best_weights = best_weights

            hooks.append(keras.callbacks.LambdaCallback(on_train_begin=restore_es))

    tracker = _EpochTracker(model, cfg.epochs, n_train, history, es, checkpoint)
    hooks.append(keras.callbacks.LambdaCallback(on_epoch_begin=tracker.on_epoch_begin,
                                                on_epoch_end=tracker.on_epoch_end))
    hooks.extend(callbacks)
    stopped_before = bool(resume and resume.early_stopping
                          and resume.early_stopping.get("stopped_epoch", 0) > 0)
    start = time.perf_counter()
    fitted = not (initial_epoch >= cfg.epochs or stopped_before)
    if not fitted:
        # The checkpoint is of the last epoch (or early stopping had already ended training).
        if resume and resume.best_weights is not None:
            model.set_weights(resume.best_weights)
    else:
        # Batches from NumPy (shuffled, and shifted when the preset augments); a resumed run
        # draws from a seed of its own, (seed, epoch), so it stays reproducible.
        train_batches = shifted_batches(x_train, labels(y_train), batch_size=runtime.batch_size,
                                        max_shift=cfg.shift_pixels,
                                        distortion=distortion if warped else None,
                                        seed=(cfg.seed, initial_epoch))
        val_batches = None
        if x_val is not None and y_val is not None and has_val:  # inference: larger batches
            val_batches = shifted_batches(x_val, labels(y_val),
                                          batch_size=max(runtime.batch_size, 1024),
                                          shuffle=False)
        model.fit(
            train_batches,
            epochs=cfg.epochs,
            initial_epoch=initial_epoch,
            validation_data=val_batches,
            callbacks=hooks,
            verbose=0,
        )
    fit_seconds = time.perf_counter() - start
    epochs_run = len(history.get("epoch", []))
    best_epoch = None
    stopped = False
    if es is not None and fitted:
        stopped = es.stopped_epoch > 0
        best_epoch = int(es.best_epoch) + 1 if es.best is not None else None
    elif es is not None and resume and resume.early_stopping:
        stopped = stopped_before
        best_epoch = int(resume.early_stopping["best_epoch"]) + 1
    return FitResult(model, history, fit_seconds, epochs_run, runtime, stopped, best_epoch,
                     tracker.checkpoint_seconds)


# --------------------------------------------------------------------------------------------
# Checkpoints in the store.
# --------------------------------------------------------------------------------------------


class _StoreCheckpoints:
    """Checkpoints under ``runs/<run-key>/train/checkpoints/`` in the store.

    Each epoch's files go to their own folder; ``checkpoint.json`` names the folder and is
    written after its files, so a reader trusts only complete checkpoints. Older folders are
    deleted once the marker points past them.
    """

    def __init__(self, store: Store, prefix: str, identity: dict[str, Any], workdir: Path):
        self.store = store
        self.prefix = prefix
        self.identity = identity  # what must match for a checkpoint to be resumed
        self.workdir = workdir

    @property
    def marker(self) -> str:
        return f"{self.prefix}/{CHECKPOINT_MARKER}"

    def save(
        self,
        epoch: int,
        model: keras.Model,
        history: dict[str, list[float]],
        es_state: dict[str, Any] | None,
        best_weights: list[np.ndarray] | None,
    ) -> float:
        start = time.perf_counter()
        folder = f"{self.prefix}/epoch-{epoch:04d}"
        local = self.workdir / f"epoch-{epoch:04d}"
        local.mkdir(parents=True, exist_ok=True)
        model.save(local / "model.keras")  # weights and optimizer state
        self.store.upload_file(local / "model.keras", f"{folder}/model.keras")
        best_key = None
        if best_weights is not None:
            best_key = f"{folder}/best_weights.npz"
            np.savez(local / "best_weights.npz", *best_weights)
            self.store.upload_file(local / "best_weights.npz", best_key)
        marker = {
            "epoch": epoch,
            "model_key": f"{folder}/model.keras",
            "best_weights_key": best_key,
            "early_stopping": es_state,
            "history": history,
            "identity": self.identity,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json(self.store, self.marker, marker, indent=1)
        self._prune(keep=f"{folder}/")
        for path in local.iterdir():
            path.unlink()
        local.rmdir()
        return time.perf_counter() - start

    def _prune(self, keep: str) -> None:
        for key in self.store.list(self.prefix):
            if key != self.marker and not key.startswith(keep):
                self.store.delete(key)

    def load(self) -> tuple[keras.Model, _Resume] | None:
        """The latest complete checkpoint, if it was made by this same training job."""
        try:
            marker = read_json(self.store, self.marker)
        except ObjectNotFound:
            return None
        except ValueError as exc:
            log.warning("ignoring unreadable checkpoint marker %s: %s",
                        self.store.uri_for(self.marker), exc)
            return None
        uri = self.store.uri_for(marker.get("model_key") or self.marker)
        if marker.get("identity") != self.identity:
            log.warning("ignoring checkpoint %s: it was made with other parameters or data; "
                        "training from scratch", uri)
            self.clear()
            return None
        local = self.workdir / "resume"
        try:
            self.store.download_file(marker["model_key"], local / "model.keras")
            model = load_keras_model(local / "model.keras", compile=True)
            best_weights = None
            if marker.get("best_weights_key"):
                self.store.download_file(marker["best_weights_key"], local / "best.npz")
                with np.load(local / "best.npz", allow_pickle=False) as npz:
                    best_weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        except (ObjectNotFound, ValueError, OSError) as exc:
            log.warning("ignoring incomplete checkpoint %s: %s", uri, exc)
            return None
        resume = _Resume(int(marker["epoch"]), marker["history"], marker.get("early_stopping"),
                         best_weights, uri)
        return model, resume

    def clear(self) -> None:
        for key in self.store.list(self.prefix):
            self.store.delete(key)


# --------------------------------------------------------------------------------------------
# The train stage.
# --------------------------------------------------------------------------------------------


def train(
    prepared_uri: str,
    cfg: TrainConfig,
    store: Store,
    run_key: str,
    *,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    previous: Mapping[str, Any] | None = None,
    candidate: int | None = None,
) -> TrainResult:
    """Train ``cfg.preset`` on the prepared data and store the model and its history.

    Resumes from the run's latest checkpoint when an earlier attempt was killed, and returns
    the recorded result without training when this run already finished.

    Args:
        prepared_uri: ``prepared.npz`` written by the preprocess stage.
        cfg: the training config.
        store: the store holding the run's data.
        run_key: the run's key (``config.run_key(run_id)``).
        on_checkpoint: called after each checkpoint is complete in the store with
            ``{"epoch", "epochs", "checkpoint_uri", "saved_at"}`` (the DAG keeps it in
            Airflow's task state store); an error in it is logged and training goes on.
        previous: the last such record from an earlier attempt, if the caller kept one: the
            resume is checked against it, and a mismatch (a checkpoint lost or older than
            reported) is logged as a warning.
        candidate: the candidate's index when the run trains several (docs/candidates.md):
            its files, checkpoints included, go under ``runs/<run-key>/candidates/<i>/train``;
            None (one candidate): ``runs/<run-key>/train``.

    Returns:
        The model and history URIs, how the fit went (epochs, seconds, the device, the epoch
        it resumed from, the best validation accuracy), the config and the effective runtime
        settings; also recorded as ``result.json`` (``train_uri``).

    Raises:
        ObjectNotFound: if the prepared data does not exist.
        ValueError: if the prepared arrays are malformed.
        ConfigError: if ``cfg.batch_size`` is larger than the training set (known only now:
            the set's size depends on the increments and the split).
    """
    prefix = (f"runs/{run_key}/train" if candidate is None
              else f"runs/{run_key}/candidates/{candidate}/train")
    params = dataclasses.asdict(cfg)
    recorded = recorded_result(store, f"{prefix}/result.json", TrainResult,
                               {"params": params, "prepared_uri": prepared_uri},
                               requires=[f"{prefix}/model.keras"])
    if recorded is not None:
        log.info("train: %s already trained (%d epochs, best val_accuracy=%s); reusing it",
                 recorded.model_uri, recorded.epochs_run, recorded.best_val_accuracy)
        return recorded

    prepared = load_prepared(prepared_uri, store)
    for split in ("train", "val", "test"):
        x, y = getattr(prepared, f"x_{split}"), getattr(prepared, f"y_{split}")
        if x.ndim != 3 or x.shape[0] != y.shape[0] or x.shape[1:] != prepared.x_train.shape[1:]:
            raise ValueError(f"{prepared_uri}: x_{split} has shape {x.shape} and y_{split} "
                             f"{y.shape}; expected (N, rows, cols) images and N labels")
    if len(prepared.x_train) == 0:
        raise ValueError(f"{prepared_uri}: no training images")
    if cfg.batch_size > len(prepared.x_train):
        raise ConfigError(f"parameter 'batch_size' = {cfg.batch_size} is invalid: larger than "
                          f"the {len(prepared.x_train)} training images of {prepared_uri}")

    runtime = resolve_runtime(cfg)
    identity = {
        "params": params,
        "prepared_uri": prepared_uri,
        "fingerprint": prepared.meta.get("fingerprint"),
        "runtime": {k: v for k, v in to_json(runtime.record()).items() if k != "device"},
    }
    with tempfile.TemporaryDirectory(prefix="mnist-train-") as tmp:
        workdir = Path(tmp)
        checkpoints = _StoreCheckpoints(store, f"{prefix}/checkpoints", identity, workdir)
        restored = checkpoints.load()
        resume_model, resume = restored if restored else (None, None)
        resumed_from = resume.epoch if resume else 0
        if resume:
            log.info("resuming from epoch %d of %d (%s)", resume.epoch, cfg.epochs, resume.uri)
        _check_against_previous(previous, resumed_from)

        def checkpoint(epoch: int, *state: Any) -> float:
            seconds = checkpoints.save(epoch, *state)
            if on_checkpoint is not None:
                record = {"epoch": epoch, "epochs": cfg.epochs,
                          "checkpoint_uri": store.uri_for(checkpoints.marker),
                          "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                try:
                    on_checkpoint(record)
                except Exception as exc:  # progress bookkeeping must never stop training
                    log.warning("could not record the progress of epoch %d: %s", epoch, exc)
            return seconds

        fit = fit_arrays(cfg, prepared.x_train, prepared.y_train, prepared.x_val,
                         prepared.y_val, runtime=runtime, checkpoint=checkpoint,
                         resume_model=resume_model, resume=resume)

        # The model and history first, the result marker last.
        model_path = workdir / "model.keras"
        fit.model.save(model_path)
        store.upload_file(model_path, f"{prefix}/model.keras")
        history_doc = {**fit.history, "preset": cfg.preset, "best_epoch": fit.best_epoch,
                       "stopped_early": fit.stopped_early, "resumed_from_epoch": resumed_from}
        write_json(store, f"{prefix}/history.json", history_doc, indent=1)

    val_acc = fit.history.get("val_accuracy") or []
    best_val = max(val_acc) if val_acc else None
    result = TrainResult(
        model_uri=store.uri_for(f"{prefix}/model.keras"),
        history_uri=store.uri_for(f"{prefix}/history.json"),
        prepared_uri=prepared_uri,
        train_uri=store.uri_for(f"{prefix}/result.json"),
        preset=cfg.preset,
        epochs_run=fit.epochs_run,
        fit_seconds=round(fit.fit_seconds, 3),
        checkpoint_seconds=round(fit.checkpoint_seconds, 3),
        device=runtime.device.describe(),
        resumed_from_epoch=resumed_from,
        best_val_accuracy=None if best_val is None else float(best_val),
        best_epoch=fit.best_epoch,
        stopped_early=fit.stopped_early,
        n_train=len(prepared.x_train),
        n_val=len(prepared.x_val),
        params=params,
        runtime=runtime.record(),
        candidate=candidate,
    )
    write_result(store, f"{prefix}/result.json", result)
    checkpoints.clear()
    best_txt = f"{best_val:.4f}" if best_val is not None else "n/a (no validation data)"
    log.info("trained %s: %d epochs in %.1f s on %s%s, best val_accuracy=%s, model -> %s",
             cfg.preset, fit.epochs_run, fit.fit_seconds, runtime.device.kind,
             f" (resumed from epoch {resumed_from})" if resumed_from else "", best_txt,
             result.model_uri)
    return result


def _check_against_previous(previous: Mapping[str, Any] | None, resumed_from: int) -> None:
    """Compare what an earlier attempt reported with what the store holds now, and say so."""
    if not previous or not isinstance(previous.get("epoch"), int):
        return
    reported, uri = previous["epoch"], previous.get("checkpoint_uri", "?")
    if resumed_from == reported:
        log.info("the previous attempt reported epoch %d as checkpointed (%s): resuming there",
                 reported, uri)
    elif resumed_from == 0:
        log.warning("the previous attempt reported epoch %d as checkpointed (%s), but no usable "
                    "checkpoint is in the store now: training from scratch", reported, uri)
    elif resumed_from < reported:
        log.warning("the previous attempt reported epoch %d as checkpointed (%s), but the "
                    "store's newest is epoch %d: resuming from epoch %d", reported, uri,
                    resumed_from, resumed_from)
    else:  # the store is ahead: the attempt died between the checkpoint and its report
        log.info("the store holds epoch %d, newer than the %d the previous attempt reported: "
                 "resuming from epoch %d", resumed_from, reported, resumed_from)
