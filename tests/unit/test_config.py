"""Configs: presets, overrides, and errors that name the parameter."""

from __future__ import annotations

import dataclasses

import pytest

from mnist_tasks.config import (
    PRESET_NAMES,
    ConfigError,
    GateConfig,
    IngestConfig,
    pipeline_config,
    run_key,
    train_config,
)


def test_seed_mlp_is_the_first_notebook() -> None:
    cfg = train_config("seed_mlp")
    assert (cfg.epochs, cfg.batch_size, cfg.val_fraction, cfg.early_stopping_patience) == (
        10, 128, 0.1, 0,
    )


def test_seed_wide_mlp_is_the_second_notebook() -> None:
    cfg = train_config("seed_wide_mlp")
    assert (cfg.epochs, cfg.val_fraction, cfg.early_stopping_patience) == (50, 0.2, 3)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_every_preset_builds_and_is_frozen(preset: str) -> None:
    cfg = train_config(preset)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3  # type: ignore[misc]


def test_overrides_replace_single_fields_and_none_keeps_the_preset() -> None:
    cfg = train_config("cnn", epochs=2, batch_size=None)
    assert cfg.epochs == 2 and cfg.batch_size == train_config("cnn").batch_size


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"learning_rate": 5.0}, "learning_rate"),
        ({"seed": -3}, "seed"),
        ({"dropout": 0.1}, "dropout"),
    ],
)
def test_bad_training_values_name_the_parameter(kwargs: dict, param: str) -> None:
    with pytest.raises(ConfigError, match=f"'{param}'"):
        train_config("seed_mlp", **kwargs)


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match=r"'preset'.*must be one of"):
        train_config("resnet")


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"store": ""}, "store"),
        ({"store": "/s", "min_accuracy": 1.2}, "min_accuracy"),
        ({"store": "/s", "champion_margin": -0.1}, "champion_margin"),
        ({"store": "/s", "model_name": "../evil"}, "model_name"),
        ({"store": "/s", "checksums": "maybe"}, "checksums"),
        ({"store": "/s", "colour": "red"}, "colour"),
    ],
)
def test_pipeline_config_names_the_bad_param(params: dict, param: str) -> None:
    with pytest.raises(ConfigError, match=f"'{param}"):
        pipeline_config(params)


def test_pipeline_config_carries_the_presets_split_to_preprocess() -> None:
    cfg = pipeline_config({"store": "/s", "preset": "seed_wide_mlp", "seed": 7})
    assert cfg.preprocess.val_fraction == 0.2 and cfg.preprocess.seed == 7
    assert cfg.gate == GateConfig()


def test_custom_checksums_must_be_sha256() -> None:
    with pytest.raises(ConfigError, match=r"checksums\[train-images-idx3-ubyte.gz\]"):
        IngestConfig(checksums={"train-images-idx3-ubyte.gz": "abc"})
    assert IngestConfig(checksums="off").expected_sha256() is None


def test_run_key_is_safe_deterministic_and_collision_free() -> None:
    a = run_key("scheduled__2026-11-21T00:00:00+00:00")
    assert a == run_key("scheduled__2026-11-21T00:00:00+00:00")
    assert ":" not in a and "+" not in a
    assert run_key("a:b") != run_key("a_b")
    assert run_key("manual_1") == "manual_1"
    with pytest.raises(ConfigError):
        run_key("  ")
