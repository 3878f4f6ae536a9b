"""The Keras 3 model of each training preset, and how it is compiled.

Read a model top to bottom in :func:`build_model`; the presets' numbers (epochs, batch size,
learning rate, distortions) live in :mod:`mnist_tasks.config`, and what each preset is for in
the README's preset table. The recipes beyond the notebooks' (figures: docs/benchmarks.md):

* ``cnn``, a small convnet: conv 5x5 (24) and conv 3x3 (32), each followed by 2x2
  max-pooling and batch norm, then conv 3x3 (32, same padding) with batch norm on the 5x5
  maps, a dense layer of 256 with batch norm, softmax. 10 epochs of AdamW (weight decay
  0.05) with a one-cycle schedule peaking at 4e-3, on images shifted (±2 px), rotated (±8°)
  and zoomed (±8 %), label smoothing 0.1.
* ``cnn_best``, the same layout wider: 32, 32 and 64 filters and a dense layer of 512; 14
  epochs of the same optimizer, and the digits are rotated and zoomed a little more (±10°,
  ±10 %) and also distorted elastically.
* ``mlp_plus``, dense only: 784-800-10 with batch norm and dropout 0.2, 9 epochs on the cnn's
  distortions plus elastic ones, label smoothing 0.1; the notebooks' MLPs stop at about
  97.8 %.

Their test accuracy and fit time against plain Keras's: docs/benchmarks.md, "Better models for
the same CPU time". The distortions are made in NumPy in the input pipeline
(:mod:`mnist_tasks.augment`, two worker threads beside the model's steps), so a saved model is
only its network. Only Keras 3 APIs are used here, so the same code runs with
``KERAS_BACKEND=tensorflow`` or ``jax`` (cnn, cnn_best and mlp_plus each trained for an epoch
with JAX 0.10.2 on the CPU); Keras is imported inside the functions, so importing
this module never pulls in TensorFlow.

Usage::

    cfg = train_config("cnn")
    model = compile_model(build_model(cfg), cfg, steps_per_epoch=steps_per_epoch(54_000, 128))
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mnist_tasks.artifacts import NUM_CLASSES
from mnist_tasks.config import TrainConfig

if TYPE_CHECKING:
    import keras

IMAGE_SHAPE: tuple[int, int] = (28, 28)

# Presets trained on one-hot labels with categorical cross-entropy (as the first notebook);
# the others use integer labels with sparse categorical cross-entropy.
ONE_HOT_PRESETS: frozenset[str] = frozenset({"seed_mlp"})
ONE_CYCLE_PRESETS: frozenset[str] = frozenset({"fast_mlp", "cnn", "cnn_best", "mlp_plus"})
CONV_PRESETS: frozenset[str] = frozenset({"cnn", "cnn_best"})

# The cnn: a 5x5 convolution of CNN_FILTERS[0] filters, a 3x3 one of CNN_FILTERS[1], each
# followed by 2x2 max-pooling and batch norm, a 3x3 one of CNN_FILTERS[2] (same padding) on the 5x5
# maps, then a dense layer of CNN_DENSE units with batch norm. The third convolution costs
# about a fifth more per image; on the validation splits of seeds 42-44 it ended lower in
# loss on every seed (0.523/0.521/0.526 against 0.531/0.529/0.533; docs/benchmarks.md).
CNN_FILTERS: tuple[int, int, int] = (24, 32, 32)
CNN_DENSE = 256
CNN_BN_MOMENTUM = 0.9
# cnn_best: the cnn's layout with 32, 32 and 64 filters. On the validation splits of seeds
# 42-44 it ended lower in loss than the 32 | 32 net with dropout 0.2 it replaced, on every seed
# (docs/benchmarks.md); dropout lowered the cnn's accuracy there too, so it has none. Its dense
# layer of 512 (with the preset's weight decay) lowered the loss again on every seed, for
# about 9 % more time a step.
CNN_BEST_FILTERS: tuple[int, int, int] = (32, 32, 64)
CNN_BEST_DENSE = 512
# mlp_plus: dense layers of MLP_PLUS_UNITS with batch norm and dropout MLP_PLUS_DROPOUT.
MLP_PLUS_UNITS: tuple[int, ...] = (800,)
MLP_PLUS_DROPOUT = 0.2


def uses_one_hot(cfg: TrainConfig) -> bool:
    """Whether the preset's loss expects one-hot labels (else integer labels)."""
    return cfg.preset in ONE_HOT_PRESETS or cfg.label_smoothing > 0


def build_model(
    cfg: TrainConfig,
    *,
    input_shape: tuple[int, ...] = IMAGE_SHAPE,
    num_classes: int = NUM_CLASSES,
    mixed_precision: bool = False,
) -> keras.Model:
    """Build the (uncompiled) model of ``cfg.preset``.

    Args:
        cfg: the training config; only ``preset`` and ``seed`` shape the model.
        input_shape: one image's shape, (rows, cols).
        num_classes: the number of output classes.
        mixed_precision: compute in bfloat16 (``mixed_bfloat16``) with float32 weights; the
            softmax output stays float32 either way.

    Returns:
        A ``keras.Sequential`` model that maps float32 images in [0, 1] of ``input_shape`` to
        class probabilities of shape (num_classes,).

    Raises:
        ValueError: for an input shape the preset cannot take (the cnn needs 2-D images).
    """
    import keras

    if len(input_shape) != 2 and cfg.preset in CONV_PRESETS:
        raise ValueError(
            f"preset {cfg.preset!r} needs 2-D images (rows, cols); got input_shape={input_shape}"
        )
    previous_policy = keras.config.dtype_policy()
    if mixed_precision:
        # Layers take the global policy when they are built; restore it right after.
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        return _build(cfg, input_shape, num_classes)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _build(cfg: TrainConfig, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    import keras
    from keras import layers

    seed = cfg.seed

    if cfg.preset == "seed_mlp":
        body: list[keras.Layer] = [
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.3, seed=seed),
            layers.Dense(64, activation="relu"),
            layers.Dropout(0.3, seed=seed + 1),
        ]
    elif cfg.preset == "seed_wide_mlp":
        body = [
            layers.Flatten(),
            layers.Dense(
                512,
                activation="relu",
                kernel_regularizer=keras.regularizers.L2(0.001),
            ),
            layers.Dropout(0.3, seed=seed),
        ]
    elif cfg.preset == "fast_mlp":
        body = [
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
        ]
    elif cfg.preset == "cnn":
        # No augmentation layers: the distortions are made in the input pipeline
        # (mnist_tasks.augment, see mnist_tasks.train), so the saved model is only the network.
        # Valid padding keeps the maps small (28 -> 24 -> 12 -> 10 -> 5, then 5 in the third
        # convolution): about 1.5 M multiply-adds per image. The batch-norm momentum is 0.9
        # (Keras: 0.99) so the inference statistics follow the weights within tens of steps,
        # not hundreds.
        body = _convnet(input_shape, CNN_FILTERS, CNN_DENSE)
    elif cfg.preset == "cnn_best":
        body = _convnet(input_shape, CNN_BEST_FILTERS, CNN_BEST_DENSE)
    elif cfg.preset == "mlp_plus":
        body = [layers.Flatten()]
        for i, units in enumerate(MLP_PLUS_UNITS):
            body += [
                layers.Dense(units, use_bias=False),
                layers.BatchNormalization(momentum=CNN_BN_MOMENTUM),
                layers.Activation("relu"),
                layers.Dropout(MLP_PLUS_DROPOUT, seed=seed + i),
            ]
    else:  # TrainConfig validates the preset; this guards a preset added without a model.
        raise ValueError(f"no model is defined for preset {cfg.preset!r}")

    # The output layer always computes in float32: bfloat16 probabilities lose too much.
    head = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")
    model = keras.Sequential([keras.Input(shape=input_shape), *body, head], name=cfg.preset)
    return model


def _convnet(input_shape: tuple[int, ...], filters: tuple[int, ...], dense: int) -> list[Any]:
    """The convnets' body: conv 5x5 and conv 3x3 blocks, each pooled; a third filter count adds
    a 3x3 convolution (same padding, not pooled) on the small maps; then a dense layer with
    batch norm."""
    from keras import layers

    # Built before the blocks: a layer's initial weights follow the order layers are created
    # in, and the benchmarked figures (docs/benchmarks.md) are of this order.
    deeper = [layers.Conv2D(n, 3, padding="same", use_bias=False) for n in filters[2:]]
    return [
        layers.Reshape((*input_shape, 1)),
        *_conv_block(filters[0], 5),
        *_conv_block(filters[1], 3),
        *(layer for conv in deeper for layer in (
            conv, layers.BatchNormalization(momentum=CNN_BN_MOMENTUM), layers.Activation("relu"))),
        layers.Flatten(),
        layers.Dense(dense, use_bias=False),
        layers.BatchNormalization(momentum=CNN_BN_MOMENTUM),
        layers.Activation("relu"),
    ]


def _conv_block(filters: int, kernel: int) -> list[Any]:
    """A convolution (valid padding, no bias), 2x2 max-pooling, then batch norm and ReLU.

    Pooling first, then batch norm and ReLU on a quarter of the values: on a CPU without
    AVX-512 the cnn's step took about a third less CPU, and on the validation splits of seeds
    42-44 it ended lower in loss on every seed (docs/benchmarks.md, session 13)."""
    from keras import layers

    return [
        layers.Conv2D(filters, kernel, use_bias=False),
        layers.MaxPooling2D(2),
        layers.BatchNormalization(momentum=CNN_BN_MOMENTUM),
        layers.Activation("relu"),
    ]


def supports_jit(model: keras.Model) -> bool:
    """Whether every layer of ``model`` can run under XLA on the active backend."""
    return all(layer.supports_jit for layer in model.layers)


def make_optimizer(cfg: TrainConfig, *, steps_per_epoch: int, learning_rate: float) -> Any:
    """The preset's optimizer: Adam, or AdamW where the config has a weight decay; for the
    presets in ``ONE_CYCLE_PRESETS`` with a one-cycle schedule.

    Args:
        cfg: the training config.
        steps_per_epoch: optimizer steps in one epoch (for the schedules).
        learning_rate: the peak learning rate (``cfg.learning_rate`` unless scaled for a GPU
            batch).

    Returns:
        A ``keras.optimizers.Adam`` or ``keras.optimizers.AdamW``: stock Keras, so a saved
        model loads with ``keras.saving.load_model`` and a checkpoint resumes the same decay.
    """
    import keras

    total = max(1, steps_per_epoch * cfg.epochs)
    if cfg.preset in ONE_CYCLE_PRESETS:
        # One cycle: a short linear warm-up to the peak, then cosine decay to zero by the last
        # step; with a fixed, small epoch budget this beats a constant rate clearly.
        warmup = max(1, min(steps_per_epoch // 2, total // 10))
        lr: Any = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate / 10,
            decay_steps=max(1, total - warmup),
            alpha=0.0,
            warmup_target=learning_rate,
            warmup_steps=warmup,
        )
    else:
        lr = learning_rate
    if cfg.weight_decay:
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=cfg.weight_decay)
    return keras.optimizers.Adam(learning_rate=lr)


def compile_model(
    model: keras.Model,
    cfg: TrainConfig,
    *,
    steps_per_epoch: int,
    learning_rate: float | None = None,
    jit_compile: bool | str = "auto",
) -> keras.Model:
    """Compile ``model`` with the preset's optimizer, loss and accuracy metric.

    Args:
        model: from :func:`build_model`.
        cfg: the training config (loss, learning rate, steps_per_execution).
        steps_per_epoch: optimizer steps per epoch, for learning-rate schedules.
        learning_rate: the peak learning rate; ``cfg.learning_rate`` if None.
        jit_compile: passed to ``model.compile``.

    Returns:
        ``model``, compiled.
    """
    import keras

    loss: Any = "sparse_categorical_crossentropy"
    if cfg.label_smoothing:  # (Keras's sparse cross-entropy has no label smoothing)
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    elif uses_one_hot(cfg):
        loss = "categorical_crossentropy"
    model.compile(
        optimizer=make_optimizer(
            cfg,
            steps_per_epoch=steps_per_epoch,
            learning_rate=cfg.learning_rate if learning_rate is None else learning_rate,
        ),
        loss=loss,
        metrics=["accuracy"],
        steps_per_execution=cfg.steps_per_execution,
        jit_compile=jit_compile,
    )
    return model


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of ``n_samples`` (the last batch may be partial)."""
    return max(1, math.ceil(n_samples / batch_size))
