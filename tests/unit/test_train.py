"""The train stage's parts on tiny synthetic digits: device and runtime, fit_arrays (logging,
seeds, early stopping across a resume), input checks. train() through a store (checkpoints,
resume, idempotent retries) is in tests/integration: test_train_resume.py, test_stages_store.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from mnist_tasks import TENSORFLOW_CPU_DEFAULTS, runtime
from mnist_tasks import train as train_mod
from mnist_tasks.artifacts import save_npz
from mnist_tasks.augment import Distortion
from mnist_tasks.config import train_config
from mnist_tasks.storage import Store
from tests.helpers import RUN, small_cfg, synthetic_digits


def arrays(n: int = 400) -> tuple[np.ndarray, ...]:
    x, y = synthetic_digits(n, seed=3)
    xv, yv = synthetic_digits(100, seed=4)
    return x.astype(np.float32) / 255, y, xv.astype(np.float32) / 255, yv


EPOCH_LINE = re.compile(
    r"^epoch (\d+)/(\d+) loss=\d\.\d{4} accuracy=\d\.\d{4} val_loss=\d\.\d{4} "
    r"val_accuracy=\d\.\d{4} time=\d+\.\ds samples/s=\d+ eta=\d+\.\ds"
)


# ---------------------------------------------------------------------------- runtime


def test_describe_devices_matches_what_keras_lists() -> None:
    """Device-agnostic: the same assertions hold on a CPU-only machine and on a GPU worker."""
    import keras

    device = runtime.describe_devices()
    gpus = [d for d in keras.distribution.list_devices() if d.lower().startswith("gpu")]
    assert device.threads >= 1
    assert device.backend == keras.backend.backend()
    if gpus:
        assert (device.kind, device.count) == ("GPU", len(gpus))
        assert device.name and device.describe().startswith(f"GPU: {device.name}")
    else:
        assert (device.kind, device.name, device.count) == ("CPU", "CPU", 1)
        assert device.bfloat16 is False
        assert device.describe() == f"CPU ({device.threads} threads)"


def _cpu() -> runtime.DeviceInfo:
    return runtime.DeviceInfo("CPU", "CPU", 1, 2, False, "tensorflow")


@pytest.fixture
def op_determinism_restored() -> Iterator[None]:
    """A CPU runtime turns TensorFlow's op determinism on for the process; on a GPU worker that
    would leak into later tests (GPU ops without a deterministic kernel then raise)."""
    from tensorflow.python.framework import config as tf_config

    before = tf_config.is_op_determinism_enabled()
    yield
    if not before:
        tf_config.disable_op_determinism()


@pytest.mark.usefixtures("op_determinism_restored")
def test_runtime_on_cpu_keeps_the_config_and_is_deterministic() -> None:
    rt = runtime.resolve_runtime(train_config("seed_mlp"), device=_cpu())
    assert (rt.batch_size, rt.learning_rate) == (128, 1e-3)
    assert rt.jit_compile is False  # TF on the CPU: op determinism instead of XLA
    assert rt.mixed_precision is False
    assert rt.deterministic is True
    assert rt.record().device == "CPU (2 threads)"


def test_runtime_without_a_device_uses_the_one_this_machine_has() -> None:
    rt = runtime.resolve_runtime(train_config("seed_mlp"))
    assert rt.device == runtime.describe_devices()
    assert rt.deterministic is (rt.device.kind == "CPU")


def _gpu(bf16: bool = True) -> runtime.DeviceInfo:
    return runtime.DeviceInfo("GPU", "NVIDIA H100 80GB HBM3", 1, 16, bf16, "tensorflow")


def test_runtime_on_a_gpu_scales_the_default_batch_and_enables_xla_and_bf16(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mnist_tasks.runtime")
    rt = runtime.resolve_runtime(train_config("seed_mlp"), device=_gpu())
    assert rt.batch_size == 512
    assert rt.learning_rate == pytest.approx(2e-3)
    assert rt.jit_compile is True and rt.mixed_precision is True
    assert rt.deterministic is False
    assert "batch size 128 -> 512" in caplog.text
    assert "training on GPU: NVIDIA H100 80GB HBM3" in caplog.text


def test_runtime_on_a_gpu_keeps_a_batch_size_the_user_chose() -> None:
    rt = runtime.resolve_runtime(train_config("seed_mlp", batch_size=64), device=_gpu(False))
    assert (rt.batch_size, rt.learning_rate) == (64, 1e-3)
    assert rt.mixed_precision is False  # no fast bfloat16 on this GPU
    explicit = runtime.resolve_runtime(
        train_config("seed_mlp", mixed_precision=False, jit_compile=False), device=_gpu())
    assert explicit.mixed_precision is False and explicit.jit_compile is False


# ---------------------------------------------------------------------------- fit_arrays


def test_fit_arrays_learns_and_logs_one_line_per_epoch(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mnist_tasks.train")
    x, y, xv, yv = arrays()
    fit = train_mod.fit_arrays(small_cfg("seed_mlp", epochs=3), x, y, xv, yv)
    assert fit.epochs_run == 3
    assert fit.history["epoch"] == [1, 2, 3]
    assert set(fit.history) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                                "seconds"}
    assert fit.history["val_accuracy"][-1] > 0.9
    assert fit.history["loss"][-1] < fit.history["loss"][0]
    messages = [r.getMessage() for r in caplog.records]
    assert "fitting seed_mlp: 3 epochs of 13 steps (batch 32, 16 steps per execution)" in messages
    lines = [m for m in messages if m.startswith("epoch ")]
    assert len(lines) == 3
    for i, line in enumerate(lines, 1):
        m = EPOCH_LINE.match(line)
        assert m, line
        assert (int(m.group(1)), int(m.group(2))) == (i, 3)
    proba = fit.model.predict(xv, verbose=0)
    assert proba.shape == (100, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("preset", ["seed_wide_mlp", "fast_mlp", "cnn", "cnn_best", "mlp_plus"])
def test_every_preset_trains_on_integer_labels(preset: str) -> None:
    x, y, xv, yv = arrays(200)
    # Batches of 16: 26 steps, enough for the batch-norm statistics to follow the weights.
    fit = train_mod.fit_arrays(small_cfg(preset, epochs=2, batch_size=16), x, y, xv, yv)
    assert fit.epochs_run == 2
    assert fit.history["loss"][1] < fit.history["loss"][0]
    assert fit.history["val_accuracy"][-1] > 0.3  # well above chance (0.1) after 26 steps


def _epoch(batches: object) -> tuple[np.ndarray, np.ndarray]:
    parts = [batches[i] for i in range(len(batches))]  # type: ignore[index, arg-type]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def test_shifted_batches_shift_each_image_by_whole_pixels_within_the_limit() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((50, 12, 12), dtype=np.float32) + 1  # no zeros: the border shows the shift
    y = np.arange(50)
    batches = train_mod.shifted_batches(x, y, batch_size=16, max_shift=2, seed=1)
    assert len(batches) == 4  # 16 + 16 + 16 + 2
    assert batches[3][0].shape == (2, 12, 12)
    seen = set()
    for _ in range(2):  # two epochs
        images, labels = _epoch(batches)
        assert sorted(labels) == list(range(50))  # each image once, with its own label
        for image, label in zip(images, labels, strict=True):
            padded = np.pad(x[label], 2)
            matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                       if np.array_equal(image, padded[2 - dy:14 - dy, 2 - dx:14 - dx])]
            assert len(matches) == 1, f"image {label} is not a whole-pixel shift within 2"
            seen.add(matches[0])
        batches.on_epoch_end()
    assert len(seen) > 15  # the shifts vary (25 are possible), (0, 0) among them or not


def test_shifted_batches_are_reproducible_and_reshuffled_each_epoch() -> None:
    x = np.random.default_rng(0).random((40, 8, 8), dtype=np.float32)
    y = np.arange(40)
    a = train_mod.shifted_batches(x, y, batch_size=8, max_shift=1, seed=(3, 0))
    b = train_mod.shifted_batches(x, y, batch_size=8, max_shift=1, seed=(3, 0))
    first = _epoch(a)
    np.testing.assert_array_equal(first[0], _epoch(b)[0])
    a.on_epoch_end()
    second = _epoch(a)
    assert not np.array_equal(first[1], second[1])  # a new order
    plain = train_mod.shifted_batches(x, y, batch_size=8, max_shift=0, seed=3)
    images, labels = _epoch(plain)
    np.testing.assert_array_equal(images, x[labels])  # 0: only shuffled


def test_batches_with_a_distortion_are_distorted_reproducibly_and_keep_their_labels() -> None:
    x = np.random.default_rng(0).random((40, 12, 12), dtype=np.float32)
    y = np.arange(40)
    warp = Distortion(rotation_degrees=10, zoom=0.1, shift_pixels=1, elastic_pixels=0.5)
    a = train_mod.shifted_batches(x, y, batch_size=16, max_shift=1, distortion=warp, seed=4)
    b = train_mod.shifted_batches(x, y, batch_size=16, max_shift=1, distortion=warp, seed=4)
    images, labels = _epoch(a)
    assert sorted(labels) == list(range(40))
    np.testing.assert_array_equal(images, _epoch(b)[0])
    # Made by worker threads in any order: a batch is the same whichever is made first.
    assert a.workers == train_mod.AUGMENT_WORKERS > 1
    c = train_mod.shifted_batches(x, y, batch_size=16, max_shift=1, distortion=warp, seed=4)
    np.testing.assert_array_equal(c[2][0], images[32:])  # the last batch made first
    changed = np.abs(images - x[labels]).mean(axis=(1, 2))
    assert (changed > 0.01).all()  # every image is distorted, none only copied
    assert images.dtype == np.float32 and images.shape == (40, 12, 12)
    a.on_epoch_end()
    again, labels2 = _epoch(a)
    order = np.argsort(labels2)
    assert not np.allclose(again[order], images[np.argsort(labels)])  # fresh draws each epoch


def test_shift_augmentation_needs_two_dimensional_images() -> None:
    x, y, xv, yv = arrays(50)
    with pytest.raises(ValueError,
                       match=r"shift_pixels=2, rotation_degrees=8.0, zoom=0.08 needs 2-D images"):
        train_mod.fit_arrays(small_cfg("cnn"), x.reshape(50, -1), y, xv, yv)


def test_same_seed_gives_the_same_history_and_another_seed_does_not() -> None:
    x, y, xv, yv = arrays(300)
    a = train_mod.fit_arrays(small_cfg(seed=5, epochs=2), x, y, xv, yv)
    b = train_mod.fit_arrays(small_cfg(seed=5, epochs=2), x, y, xv, yv)
    c = train_mod.fit_arrays(small_cfg(seed=6, epochs=2), x, y, xv, yv)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert a.history[key] == b.history[key]
    assert a.history["loss"] != c.history["loss"]
    for wa, wb in zip(a.model.get_weights(), b.model.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_fit_without_validation_data_still_trains() -> None:
    x, y, _, _ = arrays(200)
    fit = train_mod.fit_arrays(small_cfg("seed_wide_mlp", epochs=2), x, y, None, None)
    assert fit.epochs_run == 2
    assert "val_loss" not in fit.history


def test_bad_arrays_are_rejected_with_a_clear_message() -> None:
    x, y, xv, yv = arrays(50)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        train_mod.fit_arrays(small_cfg(), x, np.full(50, 12, np.uint8), xv, yv)
    with pytest.raises(ValueError, match="training data: x has shape"):
        train_mod.fit_arrays(small_cfg(), x, y[:10], xv, yv)


def test_early_stopping_state_restored_on_resume_stops_and_restores_best_weights() -> None:
    from mnist_tasks import models

    x, y, xv, yv = arrays(200)
    cfg = small_cfg("seed_wide_mlp", epochs=10, early_stopping_patience=2)
    model = models.compile_model(models.build_model(cfg), cfg, steps_per_epoch=7)
    best = [np.zeros_like(w) for w in model.get_weights()]  # a recognisable "best" state
    # As if two epochs were done, one without improvement, and a val_loss of 0 was the best:
    # the next epoch cannot improve, so patience (2) runs out after exactly one more epoch.
    resume = train_mod._Resume(
        epoch=2,
        history={"epoch": [1, 2], "loss": [1.0, 0.9], "val_loss": [0.0, 0.5]},
        early_stopping={"wait": 1, "best": 0.0, "best_epoch": 0, "stopped_epoch": 0},
        best_weights=best,
    )
    fit = train_mod.fit_arrays(cfg, x, y, xv, yv, resume_model=model, resume=resume)
    assert fit.epochs_run == 3
    assert fit.history["epoch"] == [1, 2, 3]
    assert fit.stopped_early is True
    assert fit.best_epoch == 1
    for w in fit.model.get_weights():
        assert not np.any(w)


def test_resuming_a_run_that_early_stopping_had_ended_trains_no_more() -> None:
    from mnist_tasks import models

    x, y, xv, yv = arrays(100)
    cfg = small_cfg("seed_wide_mlp", epochs=10, early_stopping_patience=1)
    model = models.compile_model(models.build_model(cfg), cfg, steps_per_epoch=4)
    best = [np.full_like(w, 0.5) for w in model.get_weights()]
    resume = train_mod._Resume(
        epoch=4, history={"epoch": [1, 2, 3, 4], "loss": [1.0, 0.8, 0.7, 0.75]},
        early_stopping={"wait": 1, "best": 0.1, "best_epoch": 2, "stopped_epoch": 3},
        best_weights=best,
    )
    fit = train_mod.fit_arrays(cfg, x, y, xv, yv, resume_model=model, resume=resume)
    assert (fit.epochs_run, fit.stopped_early, fit.best_epoch) == (4, True, 3)
    for w in fit.model.get_weights():
        np.testing.assert_array_equal(w, 0.5)


# ---------------------------------------------------------------------------- train()


def test_train_rejects_malformed_prepared_data(file_store: Store) -> None:
    save_npz(file_store, f"runs/{RUN}/preprocess/prepared.npz", {
        "x_train": np.zeros((10, 784), np.float32), "y_train": np.zeros(10, np.uint8),
        "x_val": np.zeros((0, 784), np.float32), "y_val": np.zeros(0, np.uint8),
        "x_test": np.zeros((5, 784), np.float32), "y_test": np.zeros(5, np.uint8),
    })
    file_store.write_bytes(f"runs/{RUN}/preprocess/prepared.json", b"{}")
    uri = file_store.uri_for(f"runs/{RUN}/preprocess/prepared.npz")
    with pytest.raises(ValueError, match=r"prepared.npz: x_train has shape \(10, 784\)"):
        train_mod.train(uri, small_cfg(), file_store, RUN)


def test_importing_the_library_sets_tensorflows_cpu_defaults_unless_the_user_did() -> None:
    """Both settings only count if they are in the environment before TensorFlow loads."""

    code = ("import os, json, mnist_tasks as m; "
            "print(json.dumps({k: os.environ.get(k) for k in m.TENSORFLOW_CPU_DEFAULTS}))")
    env = {k: v for k, v in os.environ.items() if k not in TENSORFLOW_CPU_DEFAULTS}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == {"TF_CPU_ALLOCATOR_USE_BFC": "1", "TF_ENABLE_ONEDNN_OPTS": "1"}
    env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out)["TF_ENABLE_ONEDNN_OPTS"] == "0"
