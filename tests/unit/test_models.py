"""Model builders: each preset's architecture, loss, schedule and dtype policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnist_tasks import models
from mnist_tasks.config import PRESET_NAMES, ConfigError, train_config


def _layers(model: object) -> list[tuple[str, object]]:
    out = []
    for layer in model.layers:  # type: ignore[attr-defined]
        cfg = layer.get_config()
        detail = cfg.get("units") or cfg.get("rate") or cfg.get("filters")
        out.append((type(layer).__name__, detail))
    return out


def test_seed_mlp_is_the_first_notebook_exactly() -> None:
    model = models.build_model(train_config("seed_mlp"))
    assert _layers(model) == [
        ("Flatten", None), ("Dense", 128), ("Dropout", 0.3), ("Dense", 64), ("Dropout", 0.3),
        ("Dense", 10),
    ]
    acts = [layer.get_config().get("activation") for layer in model.layers]
    assert acts == [None, "relu", None, "relu", None, "softmax"]
    assert model.count_params() == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert model.input_shape == (None, 28, 28) and model.output_shape == (None, 10)


def test_seed_wide_mlp_is_the_second_notebook() -> None:
    model = models.build_model(train_config("seed_wide_mlp"))
    assert _layers(model) == [("Flatten", None), ("Dense", 512), ("Dropout", 0.3), ("Dense", 10)]
    reg = model.layers[1].get_config()["kernel_regularizer"]
    assert reg["class_name"] == "L2" and reg["config"]["l2"] == pytest.approx(0.001)
    assert model.count_params() == 784 * 512 + 512 + 512 * 10 + 10


def test_cnn_is_a_small_convnet_with_batch_norm_and_no_augmentation_layers() -> None:
    model = models.build_model(train_config("cnn"))
    assert _layers(model) == [
        ("Reshape", None),
        ("Conv2D", 24), ("MaxPooling2D", None), ("BatchNormalization", None), ("Activation", None),
        ("Conv2D", 32), ("MaxPooling2D", None), ("BatchNormalization", None), ("Activation", None),
        ("Conv2D", 32), ("BatchNormalization", None), ("Activation", None),
        ("Flatten", None), ("Dense", 256), ("BatchNormalization", None), ("Activation", None),
        ("Dense", 10),
    ]
    convs = [la.get_config() for la in model.layers if type(la).__name__ == "Conv2D"]
    assert [(c["kernel_size"], c["padding"]) for c in convs] == [
        ((5, 5), "valid"), ((3, 3), "valid"), ((3, 3), "same")]
    # The shifts are made in the input pipeline (TrainConfig.shift_pixels), never flips.
    assert train_config("cnn").shift_pixels == 2
    assert not any("Random" in type(la).__name__ or "Flip" in type(la).__name__
                   for la in model.layers)
    # Inference is deterministic: two calls agree exactly.
    x = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(model(x, training=False)),
                                  np.asarray(model(x, training=False)))
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("preset", ["cnn", "cnn_best"])
def test_convnets_need_two_dimensional_images(preset: str) -> None:
    with pytest.raises(ValueError, match=rf"preset '{preset}' needs 2-D images"):
        models.build_model(train_config(preset), input_shape=(784,))


def test_cnn_best_is_the_cnn_wider_with_distortions_in_the_pipeline() -> None:
    model = models.build_model(train_config("cnn_best"))
    assert _layers(model) == [
        ("Reshape", None),
        ("Conv2D", 32), ("MaxPooling2D", None), ("BatchNormalization", None), ("Activation", None),
        ("Conv2D", 32), ("MaxPooling2D", None), ("BatchNormalization", None), ("Activation", None),
        ("Conv2D", 64), ("BatchNormalization", None), ("Activation", None),
        ("Flatten", None), ("Dense", 512), ("BatchNormalization", None), ("Activation", None),
        ("Dense", 10),
    ]
    convs = [la.get_config() for la in model.layers if type(la).__name__ == "Conv2D"]
    assert [(c["kernel_size"], c["padding"]) for c in convs] == [
        ((5, 5), "valid"), ((3, 3), "valid"), ((3, 3), "same")]
    assert model.layers[-5].output.shape == (None, 5 * 5 * 64)  # flattened 5x5 maps of the third
    cfg = train_config("cnn_best")
    assert cfg.rotation_degrees > 0 and cfg.elastic_pixels > 0  # made in the input pipeline
    assert cfg.epochs > train_config("cnn").epochs
    assert cfg.weight_decay == train_config("cnn").weight_decay > 0  # both AdamW


def test_mlp_plus_is_dense_only() -> None:
    model = models.build_model(train_config("mlp_plus"))
    kinds = {type(la).__name__ for la in model.layers}
    assert kinds <= {"Flatten", "Dense", "BatchNormalization", "Activation", "Dropout"}, kinds
    units = [d for kind, d in _layers(model) if kind == "Dense"]
    assert tuple(units) == (*models.MLP_PLUS_UNITS, 10)
    assert train_config("mlp_plus").rotation_degrees > 0  # distortions, in the pipeline


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_every_preset_outputs_probabilities(preset: str) -> None:
    model = models.build_model(train_config(preset))
    x = np.random.default_rng(1).random((3, 28, 28), dtype=np.float32)
    proba = np.asarray(model(x, training=False))
    assert proba.shape == (3, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_mixed_precision_computes_in_bfloat16_with_a_float32_output() -> None:
    import keras

    before = keras.config.dtype_policy().name
    model = models.build_model(train_config("seed_mlp"), mixed_precision=True)
    assert keras.config.dtype_policy().name == before  # the global policy is restored
    dense = [la for la in model.layers if isinstance(la, keras.layers.Dense)]
    assert [la.dtype_policy.name for la in dense[:-1]] == ["mixed_bfloat16"] * 2
    assert dense[0].kernel.dtype == "float32"  # weights stay float32
    assert dense[-1].dtype_policy.name == "float32"
    hidden = dense[0](np.zeros((2, 784), np.float32))
    assert keras.backend.standardize_dtype(hidden.dtype) == "bfloat16"
    out = model(np.zeros((2, 28, 28), np.float32))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_losses_follow_the_notebooks() -> None:
    assert models.uses_one_hot(train_config("seed_mlp"))
    assert not models.uses_one_hot(train_config("seed_wide_mlp"))
    cfg = train_config("seed_wide_mlp")
    model = models.compile_model(models.build_model(cfg), cfg, steps_per_epoch=10)
    assert model.loss == "sparse_categorical_crossentropy"
    cfg = train_config("seed_mlp", steps_per_execution=4)
    model = models.compile_model(models.build_model(cfg), cfg, steps_per_epoch=10)
    assert model.loss == "categorical_crossentropy"
    assert model.steps_per_execution == 4
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    # Label smoothing needs one-hot labels (Keras's sparse cross-entropy has none).
    cfg = train_config("cnn", label_smoothing=0.1)
    assert models.uses_one_hot(cfg)
    model = models.compile_model(models.build_model(cfg), cfg, steps_per_epoch=10)
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)


def test_fast_mlp_schedule_warms_up_then_decays_to_zero() -> None:
    cfg = train_config("fast_mlp", epochs=4, learning_rate=0.004)
    opt = models.make_optimizer(cfg, steps_per_epoch=100, learning_rate=0.004)
    schedule = opt.learning_rate if callable(opt.learning_rate) else opt._learning_rate
    lrs = [float(schedule(step)) for step in (0, 40, 200, 399)]  # warm-up: 40 steps
    assert lrs[0] < lrs[1]  # warming up
    assert lrs[1] == pytest.approx(0.004, rel=1e-3)  # the peak
    assert lrs[1] > lrs[2] > lrs[3]
    assert lrs[3] < 1e-4  # about zero at the end


def test_weight_decay_makes_the_optimizer_adamw_and_survives_a_checkpoint(tmp_path: Path) -> None:
    import keras

    cfg = train_config("cnn", epochs=1, weight_decay=0.0)
    assert type(models.make_optimizer(cfg, steps_per_epoch=10, learning_rate=0.003)) is (
        keras.optimizers.Adam)
    cfg = train_config("cnn", epochs=1)
    model = models.compile_model(models.build_model(cfg), cfg, steps_per_epoch=10)
    assert type(model.optimizer) is keras.optimizers.AdamW
    assert model.optimizer.weight_decay == pytest.approx(0.05)
    # A checkpoint (the model with its optimizer) comes back with the same decay.
    x = np.zeros((8, 28, 28), dtype=np.float32)
    model.fit(x, np.eye(10, dtype=np.float32)[np.arange(8) % 10], epochs=1, verbose=0)
    model.save(tmp_path / "checkpoint.keras")
    restored = keras.saving.load_model(tmp_path / "checkpoint.keras", safe_mode=True)
    assert type(restored.optimizer) is keras.optimizers.AdamW
    assert restored.optimizer.weight_decay == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="weight_decay"):
        train_config("cnn", weight_decay=-0.1)


def test_steps_per_epoch_counts_the_partial_last_batch() -> None:
    assert models.steps_per_epoch(1000, 128) == 8
    assert models.steps_per_epoch(1024, 128) == 8
    assert models.steps_per_epoch(0, 128) == 1


def test_every_preset_model_can_run_under_xla() -> None:
    # No preset has an augmentation layer any more (TensorFlow's image-transform op has no
    # XLA kernel); artifacts._allow_jit still lifts the flag for older cnn models loaded on JAX.
    for preset in PRESET_NAMES:
        assert models.supports_jit(models.build_model(train_config(preset))) is True
