"""Configs: presets, overrides, and errors that name the parameter."""

from __future__ import annotations

import dataclasses
import re

import pytest

from mnist_tasks.config import (
    PRESET_NAMES,
    CheckConfig,
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


# -- the trigger parameters: one definition ----------------------------------------------------


def test_presets_come_from_the_presets_table() -> None:
    from mnist_tasks.config import PARAM_SPECS, PRESETS

    assert tuple(PRESETS) == PRESET_NAMES
    assert PARAM_SPECS["preset"].enum == PRESET_NAMES
    assert all(isinstance(p["description"], str) and p["description"] for p in PRESETS.values())
    assert "description" not in dataclasses.asdict(train_config("cnn"))


def test_the_configs_enforce_the_trigger_parameters_ranges() -> None:
    """The dataclasses check a field against the spec's range: change it once, both follow."""
    from mnist_tasks.config import TRIGGER_PARAMS

    # min_candidates: tested with the candidates below (it may not exceed their number).
    ranged = [s for s in TRIGGER_PARAMS if s.minimum is not None and s.name != "min_candidates"]
    assert {s.name for s in ranged} == {"epochs", "batch_size", "learning_rate", "seed",
                                        "min_accuracy", "champion_margin", "max_recall_drop",
                                        "fresh_drop_margin", "approval_timeout_minutes"}
    for spec in ranged:
        assert spec.maximum is not None
        step = 1 if spec.type == "integer" else 1e-9
        for value in (spec.minimum, spec.maximum):
            value = int(value) if spec.type == "integer" else value
            pipeline_config({"store": "/s", spec.name: value})
        for value in (spec.minimum - step, spec.maximum + step):
            value = int(value) if spec.type == "integer" else value
            with pytest.raises(ConfigError, match=f"'{spec.name}'"):
                pipeline_config({"store": "/s", spec.name: value})


def test_trigger_parameter_defaults_are_the_configs() -> None:
    from mnist_tasks.config import PARAM_SPECS, TrainConfig

    cfg = pipeline_config({name: spec.default for name, spec in PARAM_SPECS.items()})
    assert cfg.gate == GateConfig() and cfg.train == train_config(TrainConfig.preset)
    assert cfg.check == CheckConfig() and cfg.ingest.fail_on_quarantine is False
    assert cfg.store == "file:///tmp/mnist-store" and cfg.ingest.source == "default"


def test_unknown_trigger_keys_are_named_with_where_the_setting_lives() -> None:
    from mnist_tasks.config import check_trigger_params

    assert check_trigger_params({"preset": "cnn"}) == {"preset": "cnn"}
    with pytest.raises(ConfigError) as err:
        check_trigger_params({"preset": "cnn", "model_name": "x", "checksums": "off", "lr": 1})
    message = str(err.value)
    assert "'checksums', 'lr', 'model_name'" in message
    assert "checksums is set by the deployment (MNIST_CHECKSUMS)" in message
    assert "model_name is set by the deployment (MNIST_MODEL_NAME)" in message


@pytest.mark.parametrize(
    "store",
    ["file:///data/../../etc/x", "s3://bucket/a/../b", "/data/..", "../store",
     "file:///data/%2E%2E/x", "s3://bucket/a/%2e%2e/b"],
)
def test_a_store_with_dot_dot_segments_is_refused(store: str) -> None:
    with pytest.raises(ConfigError, match=r"'store'.*'\.\.' path segments"):
        pipeline_config({"store": store})


@pytest.mark.parametrize("store", ["file:///data/..x/y", "s3://bucket/a..b", "/data/x"])
def test_a_store_with_dots_in_names_is_fine(store: str) -> None:
    assert pipeline_config({"store": store}).store == store


def test_the_forms_store_pattern_refuses_dot_dot_too() -> None:
    import re

    from mnist_tasks.config import STORE_PATTERN

    assert re.match(STORE_PATTERN, "file:///data/x") and re.match(STORE_PATTERN, "s3://b-1/p")
    for store in ("file:///data/../../etc/x", "/a/..", "s3://bucket/../x", "ftp://x"):
        assert not re.match(STORE_PATTERN, store), store


def test_checksums_from_a_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mnist_tasks.config import MAX_JSON_FILE_BYTES, parse_checksums

    sums = tmp_path / "sums.json"
    sums.write_text('{"t10k-labels-idx1-ubyte.gz": "' + "a" * 64 + '"}')
    cfg = pipeline_config({"store": "/s", "checksums": f"@{sums}"})
    assert cfg.ingest.expected_sha256()["t10k-labels-idx1-ubyte.gz"] == "a" * 64
    for text, problem in (("nope", "is not JSON"), ("[1]", "JSON object"),
                          (" " * (MAX_JSON_FILE_BYTES + 1), "larger than")):
        sums.write_text(text)
        with pytest.raises(ConfigError, match=f"'MNIST_CHECKSUMS'.*{problem}"):
            parse_checksums(f"@{sums}", "MNIST_CHECKSUMS")
    with pytest.raises(ConfigError, match=r"'checksums'.*cannot read .*missing\.json"):
        parse_checksums(f"@{tmp_path / 'missing.json'}")


def test_deployment_values() -> None:
    from mnist_tasks.config import deployment_values

    assert deployment_values({}) == {"checksums": "pinned", "model_name": "mnist-classifier"}
    assert deployment_values({"MNIST_CHECKSUMS": "off", "MNIST_MODEL_NAME": "m2"}) == {
        "checksums": "off", "model_name": "m2"}
    with pytest.raises(ConfigError, match="'MNIST_MODEL_NAME'"):
        deployment_values({"MNIST_MODEL_NAME": "Bad Name"})
    with pytest.raises(ConfigError, match="'MNIST_CHECKSUMS'"):
        deployment_values({"MNIST_CHECKSUMS": "sometimes"})


@pytest.mark.parametrize(("env", "value", "expected"), [
    ("MNIST_RETRY_DELAY_SECONDS", None, 30.0),
    ("MNIST_RETRY_DELAY_SECONDS", " 2.5 ", 2.5),
    ("MNIST_WATCH_INTERVAL_MINUTES", "", 5),
    ("MNIST_SCORING_INTERVAL_MINUTES", "1440", 1440),
    ("MNIST_FEEDBACK_INTERVAL_MINUTES", "7", 7),
])
def test_env_number_parses_the_declared_setting(env: str, value: str | None,
                                                expected: float) -> None:
    from mnist_tasks.config import env_number

    got = env_number({} if value is None else {env: value}, env)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(("env", "value", "message"), [
    ("MNIST_WATCH_INTERVAL_MINUTES", "0", "'0': expected a whole number of minutes from 1 to"),
    ("MNIST_WATCH_INTERVAL_MINUTES", "2.5", "'2.5': expected a whole number of minutes"),
    ("MNIST_RETRY_DELAY_SECONDS", "nan", "'nan': expected a number of seconds from 1 to 3600"),
    ("MNIST_FEEDBACK_INTERVAL_MINUTES", "soon", "'soon': expected a whole number"),
])
def test_env_number_names_the_variable(env: str, value: str, message: str) -> None:
    from mnist_tasks.config import env_number

    with pytest.raises(ConfigError, match=re.escape(f"{env}={message}")):
        env_number({env: value}, env)


def test_scoring_and_feedback_settings_come_from_the_given_environ() -> None:
    from mnist_tasks.config import feedback_landing, scoring_config

    cfg = scoring_config({"MNIST_MODEL_NAME": "m2", "MNIST_SCORING_LABEL_QUEUE": "0",
                          "MNIST_SCORING_CONFIDENCE_THRESHOLD": "0.7"}, "s3://b/p/")
    assert (cfg.model_name, cfg.label_queue, cfg.confidence_threshold, cfg.landing) == (
        "m2", 0, 0.7, "s3://b/p/landing")
    with pytest.raises(ConfigError, match=r"^MNIST_SCORING_RESCORE_WINDOW='-1': scoring setting "
                                          r"rescore_window=-1: must be >= 0$"):
        scoring_config({"MNIST_SCORING_RESCORE_WINDOW": "-1"}, "/s")
    assert feedback_landing({}, "s3://b/p/") == "s3://b/p/feedback"
    assert feedback_landing({"MNIST_FEEDBACK_LANDING": " /in "}, "/s") == "/in"


@pytest.mark.parametrize(("value", "kwargs", "rule"), [
    (1.0, {"hi_open": True}, r"must be in \[0, 1\)"),
    (0, {"lo_open": True}, r"must be in \(0, 1\]"),
    (2, {}, "must be between 0 and 1"),
    (float("nan"), {}, "must be between 0 and 1"),
    (True, {}, "must be a number"),
    (0.5, {"integer": True}, "must be an integer"),
])
def test_one_validator_for_every_range(value: object, kwargs: dict[str, bool], rule: str) -> None:
    from mnist_tasks.config.checks import check_number

    with pytest.raises(ConfigError, match=rf"^parameter 'x' = .* is invalid: {rule}$"):
        check_number("x", value, 0, 1, **kwargs)
    with pytest.raises(ConfigError, match=r"must be >= 1$"):
        check_number("x", 0, 1)


# -- the issue 11 parameters: skip-when-unchanged, quarantines, fresh-data drop ----------------


def test_the_data_trigger_parameters_reach_their_configs() -> None:
    from mnist_tasks.config import PARAM_SPECS

    assert (PARAM_SPECS["force"].type, PARAM_SPECS["force"].default) == ("boolean", False)
    assert PARAM_SPECS["fail_on_quarantine"].schema() == {"type": "boolean"}
    assert PARAM_SPECS["fresh_drop_margin"].schema() == {
        "type": "number", "allOf": [{"minimum": 0.0, "maximum": 1.0}]}
    assert PARAM_SPECS["fresh_drop_margin"].default == 0.02
    cfg = pipeline_config({"store": "/s", "force": True, "fail_on_quarantine": True,
                           "fresh_drop_margin": 0.1})
    assert cfg.check == CheckConfig(force=True, fresh_drop_margin=0.1)
    assert cfg.ingest.fail_on_quarantine is True
    unset = pipeline_config({"store": "/s", "force": None, "fail_on_quarantine": None})
    assert unset.check.force is False and unset.ingest.fail_on_quarantine is False


def test_the_increment_policy_takes_fail_on_quarantine_from_the_ingest_config() -> None:
    from mnist_tasks.increments import IncrementPolicy

    cfg = pipeline_config({"store": "/s", "fail_on_quarantine": True})
    policy = IncrementPolicy(fail_on_quarantine=cfg.ingest.fail_on_quarantine)
    assert policy.fail_on_quarantine is True


@pytest.mark.parametrize(("param", "value"), [
    ("force", "yes"), ("force", 1), ("fail_on_quarantine", "true"),
    ("fresh_drop_margin", True), ("fresh_drop_margin", "0.1"),
])
def test_the_data_trigger_parameters_name_a_bad_value(param: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"'{param}'"):
        pipeline_config({"store": "/s", param: value})


# -- candidates (docs/candidates.md) -------------------------------------------------------------


def test_the_default_is_one_candidate_the_runs_own_config() -> None:
    from mnist_tasks.config import PARAM_SPECS

    for value in (PARAM_SPECS["candidates"].default, None, []):
        cfg = pipeline_config({"store": "/s", "preset": "fast_mlp", "epochs": 2,
                               "candidates": value})
        assert [(c.index, dict(c.overrides), c.train) for c in cfg.candidate_list] == [
            (0, {}, cfg.train)]
        assert cfg.min_candidates == 1


def test_candidates_override_the_runs_parameters() -> None:
    cfg = pipeline_config({"store": "/s", "preset": "fast_mlp", "epochs": 2, "seed": 7,
                           "candidates": [{"seed": 1}, {"preset": "seed_mlp",
                                                        "learning_rate": 0.01},
                                          {"epochs": 3, "batch_size": 64}]})
    got = [(c.train.preset, c.train.epochs, c.train.batch_size, c.train.learning_rate,
            c.train.seed) for c in cfg.candidate_list]
    fast, seed_mlp = train_config("fast_mlp"), train_config("seed_mlp")
    assert got == [("fast_mlp", 2, fast.batch_size, fast.learning_rate, 1),
                   ("seed_mlp", 2, seed_mlp.batch_size, 0.01, 7),
                   ("fast_mlp", 3, 64, fast.learning_rate, 7)]
    assert [c.label for c in cfg.candidate_list] == [
        "fast_mlp seed=1", "seed_mlp learning_rate=0.01", "fast_mlp epochs=3 batch_size=64"]


def test_every_candidate_shares_the_runs_validation_split() -> None:
    """seed_wide_mlp's preset splits 20 %; as a candidate of a fast_mlp run it is measured on
    the run's 10 % split, like the others (the split is made once, in preprocess)."""
    cfg = pipeline_config({"store": "/s", "preset": "fast_mlp",
                           "candidates": [{}, {"preset": "seed_wide_mlp", "seed": 3}]})
    assert {c.train.val_fraction for c in cfg.candidate_list} == {0.1}
    assert (cfg.preprocess.seed, cfg.preprocess.val_fraction) == (42, 0.1)


def test_a_sweep_expands_to_the_product_in_order() -> None:
    from mnist_tasks.config import expand_candidates

    assert expand_candidates([{"seed": [1, 2], "learning_rate": [0.001, 0.005]},
                              {"preset": "cnn"}]) == [
        {"seed": 1, "learning_rate": 0.001}, {"seed": 1, "learning_rate": 0.005},
        {"seed": 2, "learning_rate": 0.001}, {"seed": 2, "learning_rate": 0.005},
        {"preset": "cnn"}]
    assert expand_candidates({"seed": [1, 2]}) == [{"seed": 1}, {"seed": 2}]


@pytest.mark.parametrize(
    ("candidates", "message"),
    [
        ([{}, {"lr": 0.1}], "'candidates[1].lr' = 0.1 is invalid: is not a candidate field"),
        ([{"learning_rate": 5}], "'candidates[0].learning_rate' = 5 is invalid: must be between"),
        ([{}, {"seed": [1, -1]}], "'candidates[1].seed' = -1 is invalid"),
        ([{"epochs": 1.5}], "'candidates[0].epochs' = 1.5 is invalid: must be an integer"),
        ([{"preset": "resnet"}], "'candidates[0].preset' = 'resnet' is invalid: must be one"),
        ([{"seed": []}], "'candidates[0].seed' = [] is invalid: a sweep needs"),
        ([3], "'candidates[0]' = 3 is invalid: must be an object"),
        ("seed=1", "'candidates' = 'seed=1' is invalid: must be a list of objects"),
        ([{"seed": list(range(17))}], "at most 16 candidates"),
    ],
)
def test_bad_candidates_name_the_candidate_and_the_field(candidates: object,
                                                          message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        pipeline_config({"store": "/s", "candidates": candidates})


def test_min_candidates_is_between_one_and_the_number_of_candidates() -> None:
    two = [{"seed": 1}, {"seed": 2}]
    assert pipeline_config({"store": "/s", "candidates": two, "min_candidates": 2}
                           ).min_candidates == 2
    with pytest.raises(ConfigError, match="'min_candidates' = 3 is invalid: more than the 2"):
        pipeline_config({"store": "/s", "candidates": two, "min_candidates": 3})
    with pytest.raises(ConfigError, match="'min_candidates' = 0 is invalid: must be between"):
        pipeline_config({"store": "/s", "candidates": two, "min_candidates": 0})
