"""Devices and runtime settings for training: what Keras sees, and the batch, learning rate,
XLA and precision a preset runs with on it.

The backend-specific spot of the library: the only code that may import TensorFlow or JAX,
each only when it is the active Keras backend. On a GPU a preset's default batch is multiplied
by :data:`GPU_BATCH_FACTOR` (capped at :data:`GPU_MAX_BATCH`) and its learning rate by the
square root, unless the user chose the batch size.

Usage::

    runtime = resolve_runtime(train_config("cnn"))      # logs the device and the settings
    runtime.batch_size, runtime.jit_compile, runtime.mixed_precision
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from mnist_tasks.config import PRESETS, TrainConfig
from mnist_tasks.results import TrainRuntime

log = logging.getLogger(__name__)

GPU_BATCH_FACTOR = 4
GPU_MAX_BATCH = 2048


@dataclass(frozen=True)
class DeviceInfo:
    """The device Keras trains on."""

    kind: str  # "CPU" or "GPU"
    name: str  # "CPU" or the GPU model, e.g. "NVIDIA H100 80GB HBM3"
    count: int  # number of GPUs (1 for the CPU)
    threads: int  # CPU threads available to this process
    bfloat16: bool  # whether the device computes bfloat16 fast (GPU compute capability >= 8)
    backend: str  # the Keras backend

    def describe(self) -> str:
        """A short phrase for logs: ``CPU (2 threads)`` or ``GPU: NVIDIA H100 ...``."""
        if self.kind == "GPU":
            more = f" (x{self.count})" if self.count > 1 else ""
            return f"GPU: {self.name}{more}"
        return f"CPU ({self.threads} threads)"


def describe_devices() -> DeviceInfo:
    """Which device Keras will train on.

    Uses ``keras.distribution.list_devices()``; the GPU's model name and compute capability
    come from the active backend (the one backend-specific helper, with
    :func:`_enable_determinism`).

    Returns:
        A :class:`DeviceInfo`.
    """
    import keras

    backend = keras.backend.backend()
    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        threads = os.cpu_count() or 1
    gpus = [d for d in keras.distribution.list_devices() if d.lower().startswith("gpu")]
    if not gpus:
        return DeviceInfo("CPU", "CPU", 1, threads, False, backend)
    name = "GPU"
    capability: tuple[int, ...] = (0,)
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            details = tf.config.experimental.get_device_details(
                tf.config.list_physical_devices("GPU")[0]
            )
            name = str(details.get("device_name", name))
            capability = tuple(details.get("compute_capability", capability))
        elif backend == "jax":
            import jax

            dev = jax.devices("gpu")[0]
            name = str(getattr(dev, "device_kind", name))
            cc = str(getattr(dev, "compute_capability", "0.0"))
            capability = tuple(int(p) for p in cc.split(".")[:2])
    except Exception as exc:  # the name is only for the log
        log.debug("could not read GPU details: %s", exc)
    return DeviceInfo("GPU", name, len(gpus), threads, capability >= (8, 0), backend)


def _enable_determinism(device: DeviceInfo) -> bool:
    """Make training reproducible where that is cheap; returns whether it is on.

    On the CPU with TensorFlow, turns on TF op determinism (which also makes ``tf.data``
    shuffling deterministic; Keras then skips XLA). JAX on the CPU is deterministic already.
    On a GPU determinism costs speed, so it is left off there.
    """
    if device.kind != "CPU":
        return False
    if device.backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    return True


@dataclass(frozen=True)
class Runtime:
    """The effective settings one training run uses (the config, resolved for the device)."""

    device: DeviceInfo
    batch_size: int
    learning_rate: float
    jit_compile: bool
    mixed_precision: bool
    deterministic: bool

    def record(self) -> TrainRuntime:
        """What the train result records of it (the device as one line)."""
        return TrainRuntime(
            device=self.device.describe(),
            backend=self.device.backend,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            jit_compile=self.jit_compile,
            mixed_precision=self.mixed_precision,
            deterministic=self.deterministic,
        )


def resolve_runtime(cfg: TrainConfig, device: DeviceInfo | None = None) -> Runtime:
    """Seed everything and resolve the config's ``"auto"`` settings for the device.

    * ``jit_compile="auto"``: XLA on a GPU; on the CPU only with JAX (with TensorFlow on the
      CPU, op determinism wins and Keras runs without XLA).
    * ``mixed_precision="auto"``: bfloat16 on a GPU that computes it fast (Ampere or newer).
    * On a GPU, a preset's default batch size is scaled up (see :data:`GPU_BATCH_FACTOR`).

    Returns:
        The :class:`Runtime`; its settings are also logged.
    """
    import keras

    device = device or describe_devices()
    keras.utils.set_random_seed(cfg.seed)
    on_gpu = device.kind == "GPU"
    deterministic = _enable_determinism(device)

    # XLA: on a GPU; with JAX always (it compiles anyway); with TensorFlow on the CPU not.
    auto_jit = on_gpu or device.backend == "jax"
    jit = auto_jit if cfg.jit_compile == "auto" else bool(cfg.jit_compile)
    if jit and deterministic and device.backend == "tensorflow":
        log.warning("jit_compile=True is ignored on the CPU with TensorFlow: op determinism "
                    "(for reproducible runs) and XLA do not mix there")
        jit = False

    if cfg.mixed_precision == "auto":
        mixed = on_gpu and device.bfloat16
    else:
        mixed = bool(cfg.mixed_precision)
        if mixed and not on_gpu:
            log.warning("mixed_precision=True on the CPU: bfloat16 is usually slower there")

    batch, lr = cfg.batch_size, cfg.learning_rate
    if on_gpu and cfg.batch_size == PRESETS[cfg.preset].get("batch_size"):
        batch = min(GPU_MAX_BATCH, max(cfg.batch_size, cfg.batch_size * GPU_BATCH_FACTOR))
        lr = cfg.learning_rate * math.sqrt(batch / cfg.batch_size)
        log.info("GPU: batch size %d -> %d, learning rate %g -> %g (square-root scaling); "
                 "set batch_size to choose it yourself", cfg.batch_size, batch,
                 cfg.learning_rate, lr)
    runtime = Runtime(device, batch, lr, jit, mixed, deterministic)
    log.info("training on %s with Keras %s (%s backend): batch %d, jit_compile=%s, "
             "mixed_precision=%s, deterministic=%s", device.describe(), keras.__version__,
             device.backend, batch, jit, "bfloat16" if mixed else "off", deterministic)
    return runtime
