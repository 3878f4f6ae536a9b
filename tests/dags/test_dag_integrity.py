"""DAG integrity: both DAGs parse; the training DAG is the stage chain with the expected settings,
scheduled weekly or on new increments, its params are the library's trigger parameters; the
landing check is one task with the increments asset as outlet; both stay cheap to parse."""

from __future__ import annotations

import dataclasses
import gc
import importlib
import itertools
import json
import subprocess
import sys
import types
import weakref
from datetime import timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAG_FILE = DAGS / "mnist_training.py"
WATCH_FILE = DAGS / "mnist_increments_watch.py"
SCORING_FILE = DAGS / "mnist_batch_scoring.py"
DAG_IDS = ["mnist_batch_scoring", "mnist_feedback", "mnist_increments_watch", "mnist_training"]

# The chain of CONTRACT.md: each task takes only the previous task's result; train is mapped
# over the candidates (from check's result), select picks one of them.
CHAIN = ["ingest", "check", "preprocess", "train", "select", "evaluate", "gate", "approve",
         "register"]
EXPECTED_EDGES = [*itertools.pairwise(CHAIN), ("check", "candidates"), ("candidates", "train")]
# Classic operators (no op_args): approve takes the gate's result as its `decision` field.
OPERATORS = {"approve"}


def _bag(dag_folder: Path):  # type: ignore[no-untyped-def]
    """Parse as the DAG processor, task runner and `airflow dags test` do: a BundleDagBag,
    which puts the bundle's folder (dags/) on sys.path so the DAG file can import its glue."""
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=str(dag_folder), bundle_path=DAGS)


@pytest.fixture(scope="module")
def dagbag():  # type: ignore[no-untyped-def]
    return _bag(DAGS)


@pytest.fixture(scope="module")
def dag(dagbag):  # type: ignore[no-untyped-def]
    return dagbag.dags["mnist_training"]


@pytest.fixture(scope="module")
def watch(dagbag):  # type: ignore[no-untyped-def]
    return dagbag.dags["mnist_increments_watch"]


@pytest.fixture(scope="module", params=DAG_IDS)
def any_dag(request, dagbag):  # type: ignore[no-untyped-def]
    return dagbag.dags[request.param]


@pytest.fixture(scope="module")
def glue(dagbag):  # type: ignore[no-untyped-def]
    """The glue's modules (dags/mnist_airflow/), imported as the DAG files import them, once
    the bag has put dags/ on sys.path."""
    return types.SimpleNamespace(**{
        name: importlib.import_module(f"mnist_airflow.{name}")
        for name in ("common", "stages", "training", "notes", "scoring")})


def test_no_import_errors(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dag_ids) == DAG_IDS


def test_the_glue_module_is_not_parsed_as_a_dag_file(dagbag) -> None:  # type: ignore[no-untyped-def]
    from airflow.utils.file import list_py_file_paths

    assert "mnist_airflow/" in (DAGS / ".airflowignore").read_text().split()
    assert sorted(list_py_file_paths(str(DAGS))) == [
        str(SCORING_FILE), str(DAGS / "mnist_feedback.py"), str(WATCH_FILE), str(DAG_FILE)]
    assert sorted(stat.file for stat in dagbag.dagbag_stats) == [
        "mnist_batch_scoring.py", "mnist_feedback.py", "mnist_increments_watch.py",
        "mnist_training.py"]


def test_each_dag_file_holds_one_dag_and_no_warning(dagbag) -> None:  # type: ignore[no-untyped-def]
    # What keeps parsing fast is checked without a clock (a wall-time limit failed on this
    # 2-core machine under load): test_parsing_a_dag_file_imports_no_heavy_libraries.
    assert len(dagbag.dagbag_stats) == 4
    for stat in dagbag.dagbag_stats:
        assert (stat.dag_num, stat.warning_num) == (1, 0), stat


def test_the_graph_is_the_stage_chain(dag) -> None:  # type: ignore[no-untyped-def]
    edges = sorted((t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids)
    assert edges == sorted(EXPECTED_EDGES)
    # ... and each task's only input is the previous task's result.
    for previous, task_id in EXPECTED_EDGES:
        if task_id in OPERATORS:
            continue
        if task_id == "train":
            continue  # mapped: below
        args = dag.get_task(task_id).op_args
        assert [a.operator.task_id for a in args] == [previous], task_id
        assert dag.get_task(task_id).op_kwargs == {}, task_id
    assert list(dag.get_task("ingest").op_args) == []


def test_train_is_mapped_over_the_candidates_and_select_runs_when_all_are_done(dag) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk import TriggerRule
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    train = dag.get_task("train")
    assert isinstance(train, MappedOperator)
    # The prepared data is the same for every instance; the candidate index is what is mapped.
    assert train.partial_kwargs["op_kwargs"]["prepared"].operator.task_id == "preprocess"
    assert train.op_kwargs_expand_input.value["candidate"].operator.task_id == "candidates"
    select = dag.get_task("select")
    # A failed candidate must not stop the run: select runs once every instance is done.
    assert select.trigger_rule == TriggerRule.ALL_DONE
    assert [a.operator.task_id for a in select.op_args] == ["train"]
    assert dag.get_task("evaluate").trigger_rule == TriggerRule.ALL_SUCCESS


def test_candidates_param_is_validated_by_the_form(dag) -> None:  # type: ignore[no-untyped-def]
    """The form's JSON schema takes a list of overrides (a list value: a sweep) and refuses an
    unknown field or an out-of-range value; the library checks again (tests/unit)."""
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    assert dag.params["candidates"] == [{}] and dag.params["min_candidates"] == 1
    params = copy.deepcopy(dag.params)
    params["candidates"] = [{"preset": "fast_mlp", "seed": [1, 2]}, {"learning_rate": 0.01}]
    for bad in ([{"lr": 0.1}], [{"learning_rate": 5}], [{"preset": "resnet"}], [],
                [{"seed": [1, "x"]}], [{}] * 17):
        with pytest.raises(ParamValidationError, match="param candidates"):
            params["candidates"] = bad


def test_the_candidates_reach_the_config(dag, glue) -> None:  # type: ignore[no-untyped-def]
    import copy

    params = copy.deepcopy(dag.params)
    params["preset"], params["epochs"] = "fast_mlp", 1
    params["candidates"] = [{"seed": [1, 2]}, {"preset": "seed_mlp", "learning_rate": 0.01}]
    params["min_candidates"] = 2
    cfg = glue.common.pipeline_config(params.validate(), environ={})
    cands = cfg.candidate_list
    assert [(c.train.preset, c.train.seed, c.train.epochs) for c in cands] == [
        ("fast_mlp", 1, 1), ("fast_mlp", 2, 1), ("seed_mlp", 42, 1)]
    assert cands[2].train.learning_rate == 0.01 and cfg.min_candidates == 2


def test_schedule_and_concurrency(dag) -> None:  # type: ignore[no-untyped-def]
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.tags and "mnist" in dag.tags


def test_training_runs_weekly_or_when_increments_land(dag) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk import Asset, AssetAll, AssetOrTimeSchedule, CronTriggerTimetable

    schedule = dag.timetable
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert isinstance(schedule.timetable, CronTriggerTimetable)
    # "@weekly", as cron: Sundays at 00:00 UTC.
    assert (schedule.timetable.expression, str(schedule.timetable.timezone)) == (
        "0 0 * * 0", "UTC")
    assert schedule.asset_condition == AssetAll(
        Asset(name="mnist_increments", uri="mnist://increments"))
    # ... and the scheduler sees both: the serialized DAG keeps the cron and the asset.
    from airflow.serialization.serialized_objects import DagSerialization

    served = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert type(served.timetable).__name__ == "AssetOrTimeSchedule"
    assert [key.name for key, _ in served.timetable.asset_condition.iter_assets()] == [
        "mnist_increments"]
    assert served.timetable.description == "Triggered by assets or At 00:00, only on Sunday"


def test_every_task_retries_with_backoff_and_timeout(any_dag) -> None:  # type: ignore[no-untyped-def]
    for t in any_dag.tasks:
        assert t.retries >= 2, t.task_id
        assert t.retry_exponential_backoff, t.task_id
        assert t.execution_timeout is not None and t.execution_timeout > timedelta(0), t.task_id


def test_train_runs_in_its_pool_and_queue_with_a_long_timeout(dag, glue) -> None:  # type: ignore[no-untyped-def]
    train = dag.get_task("train")
    assert (train.pool, train.queue) == (glue.training.TRAIN_POOL, glue.training.TRAIN_QUEUE)
    assert train.execution_timeout == timedelta(hours=6)
    assert dag.get_task("evaluate").execution_timeout == timedelta(minutes=30)


def test_gate_short_circuits_register(dag) -> None:  # type: ignore[no-untyped-def]
    gate = dag.get_task("gate")
    assert type(gate).__name__ == "_ShortCircuitDecoratedOperator"
    # A REJECT (returned as False) skips approve and register both, whatever their rules.
    assert gate.ignore_downstream_trigger_rules is True


def test_register_emits_the_registry_asset(dag) -> None:  # type: ignore[no-untyped-def]
    outlets = dag.get_task("register").outlets
    assert [a.name for a in outlets] == ["mnist_model_registry"]


def test_params_are_the_librarys_trigger_parameters(dag) -> None:  # type: ignore[no-untyped-def]
    """One definition: type, range, enum, default, title and description all come from config."""
    import os

    from mnist_tasks.config import PARAM_SPECS, PRESETS

    assert list(dag.params) == list(PARAM_SPECS)
    for name, spec in PARAM_SPECS.items():
        param = dag.params.get_param(name)
        section = {"section": spec.section} if spec.section else {}
        assert param.schema == {"title": spec.title, **section, **spec.schema()}, name
        assert param.description == spec.help, name
        default = (os.environ.get(spec.env) if spec.env else None) or spec.default
        assert param.value == default, name
    assert dag.params.get_param("preset").schema["enum"] == list(PRESETS)
    assert dag.params.get_param("epochs").schema["type"] == ["null", "integer"]
    for name in ("force", "fail_on_quarantine"):  # switches on the form, off by default
        assert dag.params.get_param(name).schema["type"] == "boolean", name
        assert dag.params.get_param(name).value is False, name
    assert dag.params.get_param("seed").schema["allOf"] == [{"minimum": 0,
                                                             "maximum": 2**31 - 1}]
    for preset, values in PRESETS.items():  # the form describes every preset, with its values
        assert (f"{preset} ({values['epochs']} epochs, batch {values['batch_size']}, "
                f"learning rate {values['learning_rate']:g}): {values['description']}"
                in PARAM_SPECS["preset"].description)


def test_the_form_shows_the_groups_as_sections(dag) -> None:  # type: ignore[no-untyped-def]
    """Training fields in the form's first, open section; the others in their own sections."""
    sections = {name: dag.params.get_param(name).schema.get("section") for name in dag.params}
    assert {n for n, s in sections.items() if s is None} == {
        "preset", "epochs", "batch_size", "learning_rate", "seed", "force", "candidates",
        "min_candidates"}
    assert sections["min_accuracy"] == sections["champion_margin"] == "Gate"
    assert sections["approval"] == sections["approval_timeout_minutes"] == "Approval"
    assert sections["source"] == sections["store"] == "Data and store"


def test_the_form_does_not_clamp_a_number_it_refuses_it(dag) -> None:  # type: ignore[no-untyped-def]
    """Airflow's trigger form clamps a number field to a top-level minimum/maximum without a
    word; the ranges sit under allOf, so the value stays and the trigger is refused naming it,
    and the field's description gives the range."""
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    for name in dag.params:
        schema = dag.params.get_param(name).schema
        assert "minimum" not in schema and "maximum" not in schema, name
    assert "from 1 to 1,000" in dag.params.get_param("epochs").description
    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError, match="epochs: 0 is less than the minimum of 1"):
        params["epochs"] = 0
    with pytest.raises(ParamValidationError, match=r"min_accuracy: 1\.5 is greater than the "
                                                   r"maximum of 1"):
        params["min_accuracy"] = 1.5
    params["epochs"] = None  # unset: the preset's
    params["min_accuracy"] = 1.0


def test_a_bad_value_that_reaches_a_run_fails_its_first_task_in_one_line(dag, glue) -> None:  # type: ignore[no-untyped-def]
    """A run whose params got past the form (an older DAG version's schema, a hand-made run)
    fails ingest without retries, with the library's one-line message."""
    from airflow.sdk.exceptions import AirflowFailException

    for key, value, rule in (("epochs", 0, "must be between 1 and 1000"),
                             ("min_accuracy", 1.5, "must be between 0.0 and 1.0")):
        params = {**dag.params.validate(), key: value}
        with pytest.raises(AirflowFailException) as err:
            glue.common.pipeline_config(params, environ={})
        assert str(err.value) == f"parameter '{key}' = {value} is invalid: {rule}"


def test_a_deployment_default_comes_from_the_environment(glue) -> None:  # type: ignore[no-untyped-def]
    params = glue.common.trigger_params({"MNIST_STORE": "s3://bucket/mnist", "MNIST_SOURCE": ""})
    assert params["store"].value == "s3://bucket/mnist"
    assert params["source"].value == "default"


@pytest.mark.parametrize(
    ("conf", "param"),
    [
        ({"epochs": 0}, "epochs"),
        ({"preset": "resnet"}, "preset"),
        ({"min_accuracy": 1.5}, "min_accuracy"),
        ({"store": "ftp://x"}, "store"),
        ({"store": "file:///data/../../etc/x"}, "store"),
        ({"store": "s3://bucket/a/../b"}, "store"),
        ({"batch_size": "big"}, "batch_size"),
        ({"force": "yes"}, "force"),
        ({"fail_on_quarantine": 1}, "fail_on_quarantine"),
        ({"fresh_drop_margin": 1.5}, "fresh_drop_margin"),
    ],
)
def test_bad_params_are_refused(dag, conf: dict, param: str) -> None:  # type: ignore[no-untyped-def]
    """What the trigger form and the REST API do with a conf: each bad value names its param."""
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError, match=f"param {param}"):
        for key, value in conf.items():
            params[key] = value


def test_default_params_are_valid(dag, glue) -> None:  # type: ignore[no-untyped-def]
    cfg = glue.common.pipeline_config(dag.params.validate(), environ={})
    assert cfg.train.preset == "seed_mlp" and cfg.gate.min_accuracy == 0.97
    assert cfg.ingest.checksums == "pinned" and cfg.model_name == "mnist-classifier"
    assert (cfg.check.force, cfg.check.fresh_drop_margin) == (False, 0.02)
    assert cfg.ingest.fail_on_quarantine is False


def test_the_data_params_from_a_trigger_reach_the_config(dag, glue) -> None:  # type: ignore[no-untyped-def]
    import copy

    params = copy.deepcopy(dag.params)
    for key, value in {"force": True, "fail_on_quarantine": True,
                       "fresh_drop_margin": 0.05}.items():
        params[key] = value
    cfg = glue.common.pipeline_config(params.validate(), environ={})
    assert (cfg.check.force, cfg.check.fresh_drop_margin) == (True, 0.05)
    assert cfg.ingest.fail_on_quarantine is True


def test_unknown_conf_keys_fail_the_first_task_naming_them(dag, glue) -> None:  # type: ignore[no-untyped-def]
    """Airflow itself accepts keys that are not params (it merges them in, unchecked), so the
    glue that every task calls first refuses them, without retries."""
    from airflow.sdk.exceptions import AirflowFailException
    from airflow.serialization.serialized_objects import DagSerialization

    conf = {"checksums": "off", "model_name": "another-model", "epoch": 3}
    served = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    merged = served.params.deep_merge(conf).validate()  # what a trigger's validation does
    assert merged["checksums"] == "off"  # ... it lets them through

    params = {**dag.params.validate(), **conf}
    with pytest.raises(AirflowFailException) as err:
        glue.common.pipeline_config(params, environ={})
    message = str(err.value)
    assert "'checksums', 'epoch', 'model_name'" in message
    assert "MNIST_CHECKSUMS" in message and "MNIST_MODEL_NAME" in message


def test_checksums_and_model_name_are_deployment_settings(dag, glue, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk.exceptions import AirflowFailException

    params = dag.params.validate()
    cfg = glue.common.pipeline_config(params, environ={"MNIST_CHECKSUMS": "off",
                                                "MNIST_MODEL_NAME": "another-model"})
    assert (cfg.ingest.checksums, cfg.model_name) == ("off", "another-model")
    digest = "0" * 64
    sums = tmp_path / "sums.json"
    sums.write_text(json.dumps({"t10k-labels-idx1-ubyte.gz": digest}))
    cfg = glue.common.pipeline_config(params, environ={"MNIST_CHECKSUMS": f"@{sums}"})
    assert cfg.ingest.expected_sha256()["t10k-labels-idx1-ubyte.gz"] == digest
    sums.write_text("not json")
    with pytest.raises(AirflowFailException, match=r"MNIST_CHECKSUMS.*not JSON"):
        glue.common.pipeline_config(params, environ={"MNIST_CHECKSUMS": f"@{sums}"})
    with pytest.raises(AirflowFailException, match="MNIST_MODEL_NAME"):
        glue.common.pipeline_config(params, environ={"MNIST_MODEL_NAME": "../evil"})


def test_a_store_with_dot_dot_fails_the_task_naming_store(dag, glue) -> None:  # type: ignore[no-untyped-def]
    """The form's pattern refuses it; a percent-encoded one gets past the pattern, not the task."""
    from airflow.sdk.exceptions import AirflowFailException

    params = {**dag.params.validate(), "store": "file:///data/%2e%2e/%2e%2e/etc/x"}
    with pytest.raises(AirflowFailException, match=r"'store'.*'\.\.' path segments"):
        glue.common.pipeline_config(params, environ={})


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("dag_file", [DAG_FILE, WATCH_FILE, SCORING_FILE], ids=lambda p: p.name)
def test_parsing_a_dag_file_imports_no_heavy_libraries(dag_file: Path) -> None:
    mods = _modules_after(
        f"import runpy, sys; sys.path.insert(0, {str(DAGS)!r}); runpy.run_path({str(dag_file)!r})"
    )
    assert "mnist_airflow.common" in mods and "mnist_tasks.config" in mods
    # boto3 is not on the list: with the Amazon provider installed (S3 events through SQS),
    # Airflow itself imports it when an Asset is declared (the provider's s3 URI handler).
    heavy = {"tensorflow", "keras", "numpy", "sklearn", "matplotlib", "mnist_tasks.train",
             "mnist_tasks.pipeline", "mnist_tasks.increments", "mnist_tasks.score",
             "mnist_tasks.storage"}
    assert not (heavy & mods), heavy & mods


def test_library_never_imports_airflow() -> None:
    import pkgutil

    import mnist_tasks

    names = [m.name for m in pkgutil.walk_packages(mnist_tasks.__path__, "mnist_tasks.")]
    assert "mnist_tasks.train" in names and "mnist_tasks.registry" in names
    mods = _modules_after("\n".join(f"import {n}" for n in names if not n.endswith("__main__")))
    assert not any(m == "airflow" or m.startswith("airflow.") for m in mods)
    for path in Path(mnist_tasks.__file__).parent.rglob("*.py"):
        text = path.read_text()
        assert "import airflow" not in text and "from airflow" not in text, path


def test_the_plugin_takes_its_settings_from_the_library_not_the_dag_glue() -> None:
    """The API server loads plugins with plugins/ on sys.path, not dags/: the Models page gets
    its settings and S3 credentials through mnist_tasks.settings, never the DAG's glue."""
    code = (
        "import os, runpy\n"
        "os.environ['MNIST_STORE'] = 'file:///tmp/x'\n"
        f"plugin = runpy.run_path({str(REPO / 'plugins' / 'mnist_models.py')!r})\n"
        "cfg = plugin['settings']()\n"
        "assert cfg.store_or_default == 'file:///tmp/x', cfg\n"
    )
    mods = _modules_after(code)
    assert "mnist_tasks.settings" in mods and "mnist_airflow" not in mods
    assert "sys.path" not in (REPO / "plugins" / "mnist_models.py").read_text()


def test_the_dag_glue_and_the_library_settings_agree(glue) -> None:  # type: ignore[no-untyped-def]
    from mnist_tasks import settings

    assert glue.common.DAG_ID == settings.TRAINING_DAG_ID
    assert glue.common.MODEL_REGISTRY.name == settings.REGISTRY_ASSET


def test_the_tasks_hand_the_mlflow_settings_and_their_run_url_to_the_library(
        glue, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk.exceptions import AirflowFailException

    settings = glue.common.deployment_settings({
        "MNIST_REGISTRY": "mlflow+http://mlflow:5000",
        "MNIST_MLFLOW_TRACKING_URI": "mlflow+http://mlflow:5000"})
    assert settings.registry == settings.mlflow_tracking == "mlflow+http://mlflow:5000"
    with pytest.raises(AirflowFailException, match="MNIST_REGISTRY"):  # no retry: a bad setting
        glue.common.deployment_settings({"MNIST_REGISTRY": "http://mlflow:5000"})
    # The MLflow run links back to the Airflow run: under [api] base_url, else the API URL.
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example/sub/")
    assert glue.common.airflow_run_url("mnist_training", "manual__2026-12-01T00:00:00+00:00",
                                       settings) == ("https://airflow.example/sub/dags/"
                                                     "mnist_training/runs/manual__2026-12-01T"
                                                     "00%3A00%3A00%2B00%3A00")
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "")
    assert glue.common.airflow_run_url("d", "r", settings) is None  # a relative link: none
    with_api = glue.common.deployment_settings({"MNIST_AIRFLOW_API_URL": "http://af:8080"})
    assert glue.common.airflow_run_url("d", "r", with_api) == "http://af:8080/dags/d/runs/r"


def _dag_with_margin(monkeypatch, margin: str | None):  # type: ignore[no-untyped-def]
    """Parse the DAG file afresh with MNIST_DEADLINE_MARGIN_MINUTES set (or unset) for it."""
    if margin is None:
        monkeypatch.delenv("MNIST_DEADLINE_MARGIN_MINUTES", raising=False)
    else:
        monkeypatch.setenv("MNIST_DEADLINE_MARGIN_MINUTES", margin)
    bag = _bag(DAG_FILE)
    return bag, bag.dags.get("mnist_training")


def _deadlines(dag):  # type: ignore[no-untyped-def]
    if dag.deadline is None:
        return []
    return dag.deadline if isinstance(dag.deadline, list) else [dag.deadline]


@pytest.mark.parametrize(("margin", "minutes"), [(None, 60), ("15", 15), ("90.5", 90.5)])
def test_deadline_alert_on_runs_far_longer_than_usual(monkeypatch, margin, minutes) -> None:  # type: ignore[no-untyped-def]
    bag, dag = _dag_with_margin(monkeypatch, margin)
    assert bag.import_errors == {}
    deadlines = _deadlines(dag)
    assert len(deadlines) == 1
    alert = deadlines[0]
    assert type(alert.reference).__name__ == "AverageRuntimeDeadline"
    assert alert.interval == timedelta(minutes=minutes)
    assert alert.callback.path == "mnist_tasks.alerts.deadline_missed"


@pytest.mark.parametrize("margin", ["off", "0", ""])
def test_deadline_alert_can_be_switched_off(monkeypatch, margin) -> None:  # type: ignore[no-untyped-def]
    bag, dag = _dag_with_margin(monkeypatch, margin)
    assert bag.import_errors == {}
    assert _deadlines(dag) == []


def test_bad_deadline_margin_is_an_import_error_naming_the_variable(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bag, dag = _dag_with_margin(monkeypatch, "an hour")
    assert dag is None
    (message,) = bag.import_errors.values()
    assert "MNIST_DEADLINE_MARGIN_MINUTES" in message and "an hour" in message


def test_failure_callback_on_every_task(any_dag) -> None:  # type: ignore[no-untyped-def]
    for t in any_dag.tasks:
        callbacks = t.on_failure_callback
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        assert [c.__name__ for c in callbacks] == ["on_failure"], t.task_id


def test_every_dag_and_task_says_what_it_does(any_dag) -> None:  # type: ignore[no-untyped-def]
    """The UI's DAG description and each task's Details -> Description (its doc_md)."""
    assert any_dag.description and any_dag.doc_md
    for t in any_dag.tasks:
        assert t.doc_md and "\n" not in t.doc_md.strip(), t.task_id


def test_the_training_description_names_both_triggers(dag) -> None:  # type: ignore[no-untyped-def]
    """The UI shows an asset-or-time schedule as its asset only: the description says both."""
    assert dag.description == (
        "Retrains the MNIST classifier: Weekly (At 00:00, only on Sunday, UTC) or when new "
        "labeled increments land (asset mnist_increments), whichever comes first.")


def test_task_logs_show_a_summary_not_the_returned_value(any_dag) -> None:  # type: ignore[no-untyped-def]
    python_tasks = [t for t in any_dag.tasks if t.task_id != "approve"]
    for t in python_tasks:
        shown = (t.partial_kwargs.get("show_return_value_in_logs")
                 if hasattr(t, "partial_kwargs") else t.show_return_value_in_logs)
        assert shown is False, t.task_id


def test_a_stages_log_lines_are_not_folded_into_a_group(glue, caplog) -> None:  # type: ignore[no-untyped-def]
    """Airflow folds the lines between ::group:: and ::endgroup:: away: an operator must see
    the per-epoch lines without opening anything."""
    import logging

    stage_log = logging.getLogger("mnist_tasks.train")

    @dataclasses.dataclass(frozen=True)
    class Trained:
        epochs_run: int

    def stage() -> Trained:
        stage_log.info("epoch 1/1 loss=0.1")
        return Trained(epochs_run=1)

    with caplog.at_level(logging.INFO):
        glue.stages.run_stage("probe", stage)
    lines = [r.getMessage() for r in caplog.records]
    assert "epoch 1/1 loss=0.1" in lines
    assert not [line for line in lines if "::group::" in line or "::endgroup::" in line]
    assert lines[-1].startswith("SUMMARY probe finished in ") and lines[-1].endswith(
        "epochs_run=1")


def test_tensorflow_starts_up_on_stdout_not_stderr() -> None:
    """Airflow logs a task's stderr as ERROR lines; TensorFlow's C++ start-up lines go there
    as it loads, whatever TF_CPP_MIN_LOG_LEVEL says, unless the glue imports it."""
    code = (f"import sys; sys.path.insert(0, {str(DAGS)!r}); from mnist_airflow import stages; "
            "stages.import_tensorflow_quietly(); import tensorflow; "
            "sys.stderr.write('stderr still works')")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("TF_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr == "stderr still works", out.stderr[-2000:]
    assert "oneDNN custom operations" in out.stdout


@pytest.mark.parametrize(("summary", "note"), [
    ({"decision": "UNCHANGED", "covered_by": 3}, "UNCHANGED (v3)"),
    ({"decision": "PROMOTE", "preset": "fast_mlp", "test_accuracy": 0.99123, "version": 4,
      "candidates": [{"chosen": True, "epochs": 2, "epochs_run": 2}]},
     "fast_mlp · 2 epochs · PROMOTE v4 (99.12 %)"),
    ({"decision": "REJECT", "preset": "fast_mlp", "test_accuracy": 0.9599,
      "candidates": [{"chosen": True, "epochs": 2, "epochs_run": 2}, {"chosen": False}],
      "reasons": ["threshold FAIL: benchmark: test accuracy 0.9599 < minimum 0.9700",
                  "champion INFO: no champion yet: threshold only"]},
     "fast_mlp · 2 epochs · best of 2 candidates · REJECT (threshold: benchmark: test "
     "accuracy 0.9599 < minimum 0.9700)"),
    ({"decision": "PROMOTE", "preset": "cnn", "test_accuracy": 0.995, "version": 5,
      "candidates": [{"chosen": True, "epochs": 8, "epochs_run": 8}],
      "approval": {"outcome": "override", "by": "alice"}},
     "cnn · 8 epochs · PROMOTE v5 (99.50 %) · approval: override by alice"),
    ({"preset": "seed_mlp"}, "seed_mlp · no decision: stopped before the gate"),
])
def test_the_run_note_says_what_the_run_did(glue, summary, note) -> None:  # type: ignore[no-untyped-def]
    assert glue.notes.run_note(summary) == note


def test_the_run_note_is_written_by_the_dags_callbacks(dag, glue) -> None:  # type: ignore[no-untyped-def]
    """No task can set its run's note in Airflow 3.3: the DAG's callbacks do, through the REST
    API when one is configured, and say so when not."""
    assert dag.on_success_callback == [glue.notes.note_the_run] or \
        dag.on_success_callback == glue.notes.note_the_run
    assert dag.on_failure_callback == [glue.notes.note_the_run] or \
        dag.on_failure_callback == glue.notes.note_the_run
    assert glue.notes.post_run_note("mnist_training", "r", "n", environ={}) == (
        "not set on the run: MNIST_AIRFLOW_API_URL is not set")
    refused = glue.notes.post_run_note("mnist_training", "r", "n", environ={
        "MNIST_AIRFLOW_API_URL": "http://127.0.0.1:9", "MNIST_AIRFLOW_TOKEN": "t"})
    assert refused.startswith("not set on the run: http://127.0.0.1:9: ")


def test_stages_run_with_long_lived_objects_frozen_and_garbage_collected(glue) -> None:  # type: ignore[no-untyped-def]
    """`run_stage` collects, then freezes what is alive: full collections skip Airflow's heap."""

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    @dataclasses.dataclass(frozen=True)
    class Probed:
        model_uri: str
        test_accuracy: float

    gc.unfreeze()
    probe = Cycle()
    garbage = weakref.ref(probe)
    del probe  # unreachable, but only the cyclic collector can free it
    seen: dict[str, object] = {}

    def stage() -> Probed:
        seen["frozen"] = gc.get_freeze_count()
        seen["garbage_alive"] = garbage() is not None
        return Probed("file:///m.keras", 0.98)

    try:
        # The typed result goes to XCom as its JSON.
        assert glue.stages.run_stage("probe", stage) == {
            "model_uri": "file:///m.keras", "test_accuracy": 0.98}
        assert isinstance(seen["frozen"], int) and seen["frozen"] > 10_000
        assert seen["garbage_alive"] is False
    finally:
        gc.unfreeze()


# -- the landing check: mnist_increments_watch ---------------------------------------------------


def test_the_watch_is_one_task_that_emits_the_increments_asset(watch, glue) -> None:  # type: ignore[no-untyped-def]
    assert [t.task_id for t in watch.tasks] == ["land"]
    land = watch.get_task("land")
    # (Airflow normalises the URI "mnist://increments" to "mnist://increments/".)
    assert [(a.name, a.uri) for a in land.outlets] == [("mnist_increments", "mnist://increments/")]
    assert land.outlets == [glue.common.MNIST_INCREMENTS]
    assert land.execution_timeout == timedelta(minutes=10)
    assert not dict(watch.params)  # nothing to set: source and store are the deployment's


def test_the_watch_runs_every_few_minutes_one_at_a_time(watch) -> None:  # type: ignore[no-untyped-def]
    assert _schedule_in_words(watch) == ("*/5 * * * *", "Every 5 minutes")
    assert watch.catchup is False and watch.max_active_runs == 1
    assert watch.tags and "mnist" in watch.tags and watch.doc_md
    assert watch.description.startswith("Looks for new labeled increments every 5 minutes")


def _schedule_in_words(dag):  # type: ignore[no-untyped-def]
    """What the UI shows for the DAG's schedule: the served timetable's summary, and the
    description it shows beside it."""
    from airflow.serialization.serialized_objects import DagSerialization

    served = DagSerialization.from_dict(DagSerialization.to_dict(dag)).timetable
    return served.summary, served.description


def _watch_with_interval(monkeypatch, value: str | None):  # type: ignore[no-untyped-def]
    if value is None:
        monkeypatch.delenv("MNIST_WATCH_INTERVAL_MINUTES", raising=False)
    else:
        monkeypatch.setenv("MNIST_WATCH_INTERVAL_MINUTES", value)
    bag = _bag(WATCH_FILE)
    return bag, bag.dags.get("mnist_increments_watch")


@pytest.mark.parametrize(("value", "summary", "words"), [
    (None, "*/5 * * * *", "Every 5 minutes"), ("", "*/5 * * * *", "Every 5 minutes"),
    ("1", "*/1 * * * *", "Every minute"), (" 60 ", "0 */1 * * *", "Every hour"),
    ("180", "0 */3 * * *", "Every 3 hours"), ("1440", "0 */24 * * *", "Every 24 hours"),
    ("7", "0:07:00", ""), ("90", "1:30:00", "")])
def test_the_watch_interval_comes_from_the_environment(monkeypatch, value, summary, words) -> None:  # type: ignore[no-untyped-def]
    """Cron where one fits the interval (the UI then describes it in words), else a delta."""
    bag, watch = _watch_with_interval(monkeypatch, value)
    assert bag.import_errors == {}
    assert _schedule_in_words(watch) == (summary, words)


@pytest.mark.parametrize("value", ["0", "-5", "five", "2.5", "1441"])
def test_a_bad_watch_interval_is_an_import_error_naming_the_variable(monkeypatch, value) -> None:  # type: ignore[no-untyped-def]
    bag, watch = _watch_with_interval(monkeypatch, value)
    assert watch is None
    (message,) = bag.import_errors.values()
    assert "MNIST_WATCH_INTERVAL_MINUTES" in message and repr(value) in message


def _training_with_schedule(monkeypatch, value: str | None):  # type: ignore[no-untyped-def]
    if value is None:
        monkeypatch.delenv("MNIST_TRAINING_SCHEDULE", raising=False)
    else:
        monkeypatch.setenv("MNIST_TRAINING_SCHEDULE", value)
    bag = _bag(DAG_FILE)
    return bag, bag.dags.get("mnist_training")


@pytest.mark.parametrize(("value", "cron"), [(None, "0 0 * * 0"), ("0 3 * * 1", "0 3 * * 1"),
                                             ("@daily", "0 0 * * *")])
def test_the_training_time_schedule_comes_from_the_environment(monkeypatch, value, cron) -> None:  # type: ignore[no-untyped-def]
    bag, training = _training_with_schedule(monkeypatch, value)
    assert bag.import_errors == {}
    assert training.timetable.timetable.expression == cron
    assert [a.name for a in training.timetable.asset_condition.objects] == ["mnist_increments"]


def test_training_schedule_off_is_data_triggered_only(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from airflow.timetables.simple import AssetTriggeredTimetable

    bag, training = _training_with_schedule(monkeypatch, "off")
    assert bag.import_errors == {}
    assert type(training.timetable) is AssetTriggeredTimetable or (
        type(training.timetable).__name__ == "AssetTriggeredTimetable")


def test_a_bad_training_schedule_is_an_import_error_naming_the_variable(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bag, training = _training_with_schedule(monkeypatch, "every tuesday")
    assert training is None
    (message,) = bag.import_errors.values()
    assert "MNIST_TRAINING_SCHEDULE" in message and "'every tuesday'" in message


def test_a_quarantine_that_fails_the_run_is_not_retried(glue) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_tasks.increments import IncrementQuarantined

    def quarantined() -> dict[str, object]:
        raise IncrementQuarantined("fail_on_quarantine: increment bad-label is quarantined")

    def broken() -> dict[str, object]:
        raise OSError("the store is unreachable")

    with pytest.raises(AirflowFailException, match="bad-label is quarantined"):
        glue.stages.run_stage("ingest", quarantined)
    with pytest.raises(OSError):  # anything else keeps its retries
        glue.stages.run_stage("ingest", broken)


def test_the_deployment_sets_the_default_preset_and_retry_delay(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MNIST_PRESET", "fast_mlp")
    monkeypatch.setenv("MNIST_RETRY_DELAY_SECONDS", "5")
    bag, training = _training_with_schedule(monkeypatch, None)
    assert bag.import_errors == {}
    assert training.params["preset"] == "fast_mlp"
    assert all(t.retry_delay == timedelta(seconds=5) for t in training.tasks)


@pytest.mark.parametrize(("name", "value"), [("MNIST_PRESET", "resnet"),
                                             ("MNIST_RETRY_DELAY_SECONDS", "soon")])
def test_a_bad_preset_or_retry_delay_is_an_import_error_naming_it(monkeypatch, name, value) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(name, value)
    bag, training = _training_with_schedule(monkeypatch, None)
    assert training is None
    (message,) = bag.import_errors.values()
    assert name in message and repr(value) in message


# -- approval (issue 12): gate -> approve -> register --------------------------------------------


def test_approve_is_airflows_approval_operator_fed_by_the_gate(dag, glue) -> None:  # type: ignore[no-untyped-def]
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.sdk.definitions.xcom_arg import XComArg

    from mnist_tasks import approve as library

    approve = dag.get_task("approve")
    assert isinstance(approve, ApprovalOperator)
    assert isinstance(approve.decision, XComArg) and approve.decision.operator.task_id == "gate"
    assert "decision" in approve.template_fields
    assert approve.options == list(library.OPTIONS)  # the library's labels are Airflow's
    assert approve.defaults == [library.DEFAULT_ANSWER] == ["Reject"]  # on a timeout
    # The request's form: only the comment (the DAG's params stay out of it).
    assert list(approve.serialized_params) == ["comment"]
    assert approve.serialized_params["comment"]["schema"]["type"] == ["null", "string"]
    # The wait is response_timeout (set per run); execution_timeout bounds the execute phase.
    assert approve.response_timeout == timedelta(days=1)
    assert approve.execution_timeout == timedelta(minutes=30)
    # register's only input is approve's result (the final decision).
    assert [a.operator.task_id for a in dag.get_task("register").op_args] == ["approve"]


def test_the_approval_params_are_on_the_form(dag, glue) -> None:  # type: ignore[no-untyped-def]
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    approval = dag.params.get_param("approval")
    assert approval.schema["enum"] == ["off", "borderline", "always"]
    assert dag.params.get_param("approval_timeout_minutes").value == 1440
    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError, match="param approval"):
        params["approval"] = "sometimes"
    with pytest.raises(ParamValidationError, match="param approval_timeout_minutes"):
        params["approval_timeout_minutes"] = 0
    params = glue.common.trigger_params({"MNIST_APPROVAL": "borderline"})
    assert params["approval"].value == "borderline"
    with pytest.raises(ValueError, match="MNIST_APPROVAL='maybe'"):
        glue.common.trigger_params({"MNIST_APPROVAL": "maybe"})


class _Ti:
    def __init__(self) -> None:
        self.skipped: list[str] = []


@pytest.fixture
def run_approve(dag, monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """Run the approve task's execute() as the worker would, without a database: the
    request (upsert + park) and the skip are recorded instead of sent."""
    import copy

    from airflow.sdk.exceptions import TaskAwaitingInput
    from mnist_airflow import approval

    approve = copy.copy(dag.get_task("approve"))
    asked: dict[str, object] = {}

    def upsert(**kwargs: object) -> None:
        asked.update(kwargs)

    monkeypatch.setattr("airflow.providers.standard.operators.hitl.upsert_hitl_detail", upsert)
    # Patched where the approve task looks them up.
    monkeypatch.setattr(approval, "notify", lambda context, message: None)
    monkeypatch.setattr(approval, "s3_client_kwargs", lambda: None)
    ti = _Ti()
    monkeypatch.setattr(type(approve), "skip",
                        lambda self, ti, tasks: ti.skipped.extend(t.task_id for t in tasks))

    def context(decision: dict, params: dict) -> dict:
        approve.decision = decision
        return {"params": {**dag.params.validate(), "store": f"file://{tmp_path}",
                           "comment": None, **params},
                "dag": dag, "run_id": "manual__1", "task": approve,
                "task_instance": type("T", (), {"id": "x"})(), "ti": ti}

    def run(decision: dict, **params: object) -> tuple[object, dict]:
        try:
            return approve.execute(context(decision, params)), asked
        except TaskAwaitingInput as parked:
            asked["parked_timeout"] = parked.timeout
            return None, asked

    def answer(decision: dict, event: dict, **params: object) -> dict:
        """Resume with ``event``, as the answer (or the timeout sweep) does on a worker."""
        return dict(approve.execute_complete(context(decision, params), event))

    run.ti = ti  # type: ignore[attr-defined]
    run.answer = answer  # type: ignore[attr-defined]
    run.store = tmp_path  # type: ignore[attr-defined]
    return run


def _gate_xcom(verdict: str = "PROMOTE", **fields: object) -> dict:
    """The gate task's XCom: its decision's JSON (over champion v3 unless said otherwise)."""
    from mnist_tasks.results import RecallChange, to_json
    from tests.helpers import gate_decision

    recall = {"3": RecallChange(champion=0.98, challenger=0.97, drop=0.01)}
    return to_json(gate_decision(verdict, **{"p": 0.3, "b": 50, "c": 60, "per_digit": recall,
                                             **fields}))


PROMOTE_OVER_V3 = _gate_xcom()


@pytest.mark.parametrize("mode", ["off", "borderline"])
def test_approval_off_or_a_clear_case_passes_the_decision_on(run_approve, mode) -> None:  # type: ignore[no-untyped-def]
    clear_win = _gate_xcom(per_digit={}, p=0.001)
    result, asked = run_approve(clear_win, approval=mode)
    assert asked == {} and run_approve.ti.skipped == []
    assert result["decision"] == "PROMOTE" and result["approval"]["asked"] is False
    assert result["decision_uri"] == clear_win["decision_uri"]  # register reads it from there


def test_approve_refuses_what_is_not_the_gates_decision(run_approve) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="GateDecision: missing 'checks'"):
        run_approve({k: v for k, v in PROMOTE_OVER_V3.items() if k != "checks"})


@pytest.mark.parametrize("mode", ["borderline", "always"])
def test_approval_on_parks_the_task_with_the_gates_report(run_approve, mode) -> None:  # type: ignore[no-untyped-def]
    result, asked = run_approve(PROMOTE_OVER_V3, approval=mode, approval_timeout_minutes=2.5)
    assert result is None  # parked in awaiting_input: no worker slot held
    assert asked["parked_timeout"] == timedelta(minutes=2.5)
    assert asked["options"] == ["Approve", "Reject"] and asked["defaults"] == ["Reject"]
    assert "### Gate decision: PROMOTE" in asked["body"]
    assert "/models/?dag_id=mnist_training&run_id=manual__1" in asked["body"]
    assert "Promote mnist-classifier from run manual__1?" in asked["subject"]
    assert asked["params"]["comment"]["schema"]["type"] == ["null", "string"]  # optional


def test_a_request_about_a_reject_requires_the_comment(run_approve) -> None:  # type: ignore[no-untyped-def]
    _, asked = run_approve(REJECTED_BY_GATE, approval="always")
    schema = asked["params"]["comment"]["schema"]
    assert (schema["type"], schema["minLength"]) == ("string", 1)  # the form requires it


def test_a_gate_reject_reaches_a_person_only_with_always(glue) -> None:  # type: ignore[no-untyped-def]
    from mnist_tasks import approve

    assert [m for m in ("off", "borderline", "always") if approve.asks_on_reject(m)] == [
        "always"]


def _event(choice: str, comment: str | None = None, *, by: str | None = "alice",
           timedout: bool = False) -> dict:
    from datetime import UTC, datetime

    return {"chosen_options": [choice], "params_input": {"comment": comment},
            "responded_at": datetime(2026, 11, 22, 4, 0, tzinfo=UTC),
            "responded_by_user": {"id": "7", "name": by} if by else None, "timedout": timedout}


REJECTED_BY_GATE = {**_gate_xcom("REJECT"), "reasons": ["threshold FAIL"]}


@pytest.mark.parametrize(("gate", "event", "final", "outcome", "register_skipped"), [
    (PROMOTE_OVER_V3, _event("Approve", "ok"), "PROMOTE", "approved", False),
    (PROMOTE_OVER_V3, _event("Reject", "not now"), "REJECT", "rejected", True),
    (PROMOTE_OVER_V3, _event("Reject", None, by=None, timedout=True), "REJECT", "timed out",
     True),
    (REJECTED_BY_GATE, _event("Approve", "threshold too high"), "PROMOTE", "override", False),
], ids=["approve", "reject", "timeout", "override"])
def test_the_answer_decides_what_register_gets(run_approve, gate, event, final, outcome,  # type: ignore[no-untyped-def]
                                               register_skipped) -> None:
    result = run_approve.answer(gate, event, approval="always")
    assert result["decision"] == final and result["gate_decision"] == gate["decision"]
    record = result["approval"]
    assert record["outcome"] == outcome and record["at"] == "2026-11-22T04:00:00+00:00"
    assert record["by"] == (event["responded_by_user"] or {}).get("name")
    assert run_approve.ti.skipped == (["register"] if register_skipped else [])
    saved = json.loads((run_approve.store / "runs" / "manual__1" / "approval.json").read_text())
    assert saved["approval"]["outcome"] == outcome and saved["decision"] == final


def test_an_override_without_a_reason_fails_the_task_saying_why(run_approve) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match=r"^override refused: an override of the "
                                                   r"gate's REJECT needs a written reason"):
        run_approve.answer(REJECTED_BY_GATE, _event("Approve", "  "), approval="always")
    saved = json.loads((run_approve.store / "runs" / "manual__1" / "approval.json").read_text())
    assert saved["approval"]["outcome"] == "override refused" and saved["decision"] == "REJECT"
# -- the scoring DAG (mnist_batch_scoring) -------------------------------------------------------


def test_scoring_graph_plans_prepares_scores_shards_in_parallel_then_commits(dagbag) -> None:  # type: ignore[no-untyped-def]
    scoring = dagbag.dags["mnist_batch_scoring"]
    edges = sorted((t.task_id, d) for t in scoring.tasks for d in t.downstream_task_ids)
    assert edges == [("commit", "health"), ("plan", "commit"), ("plan", "prepare"),
                     ("prepare", "score"), ("score", "commit")]
    assert [a.name for a in scoring.get_task("health").outlets] == ["mnist_model_health"]
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    assert isinstance(scoring.get_task("score"), MappedOperator)  # one task per shard
    # commit runs when every shard scored, and also when there were none (all rejected).
    assert scoring.get_task("commit").trigger_rule == "none_failed_min_one_success"
    assert scoring.max_active_runs == 1 and scoring.catchup is False


def test_feedback_dag_is_one_task_on_an_interval_emitting_model_health(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["mnist_feedback"]
    assert [t.task_id for t in dag.tasks] == ["feedback"]
    assert [a.name for a in dag.get_task("feedback").outlets] == ["mnist_model_health"]
    assert _schedule_in_words(dag) == ("*/5 * * * *", "Every 5 minutes")
    assert dag.max_active_runs == 1 and dag.catchup is False


def test_scoring_runs_on_a_registry_event_or_the_interval(dagbag, glue, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk import AssetAll, AssetOrTimeSchedule, DeltaTriggerTimetable

    schedule = dagbag.dags["mnist_batch_scoring"].timetable
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert isinstance(schedule.timetable, DeltaTriggerTimetable)
    assert schedule.timetable.delta == timedelta(minutes=5)
    assert schedule.asset_condition == AssetAll(glue.common.MODEL_REGISTRY)
    monkeypatch.setenv("MNIST_SCORING_INTERVAL_MINUTES", "0")
    with pytest.raises(ValueError, match="MNIST_SCORING_INTERVAL_MINUTES='0'"):
        glue.scoring.scoring_timetable()


def test_scoring_settings_errors_fail_the_task_naming_the_variable(glue, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("MNIST_SCORING_SHARD_SIZE", "0")
    with pytest.raises(AirflowFailException, match="shard_size=0"):
        glue.scoring.open_scoring({"MNIST_SCORING_SHARD_SIZE": "0", "MNIST_STORE": "file:///tmp/x"})


QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/mnist-landing"


def _events_bag(monkeypatch, value: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MNIST_LANDING_EVENTS", value)
    return _bag(DAGS)


def test_events_mode_schedules_on_landing_events_and_nothing_polls(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """MNIST_LANDING_EVENTS: the watch runs on the asset an SQS watcher feeds, with a second
    task for the landed batches, and scoring on (registry | landed batches), no interval."""
    from airflow.sdk import AssetAny
    from airflow.serialization.serialized_objects import DagSerialization

    bag = _events_bag(monkeypatch, f"sqs:{QUEUE}")
    assert bag.import_errors == {}
    watch = bag.dags["mnist_increments_watch"]
    served = DagSerialization.from_dict(DagSerialization.to_dict(watch)).timetable
    assert type(served).__name__ == "AssetTriggeredTimetable"
    (asset,) = watch.timetable.asset_condition.objects
    assert asset.name == "mnist_landing_events"
    (watcher,) = asset.watchers
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath == "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger"
    assert kwargs["sqs_queue"] == QUEUE and kwargs["region_name"] == "eu-west-1"
    assert kwargs["aws_conn_id"] is None and kwargs["delete_message_on_reception"] is True
    assert kwargs["waiter_delay"] <= 1 and 1 <= kwargs["wait_time_seconds"] <= 20
    assert sorted(t.task_id for t in watch.tasks) == ["land", "land_batches"]
    assert [a.name for a in watch.get_task("land").outlets] == ["mnist_increments"]
    assert [a.name for a in watch.get_task("land_batches").outlets] == ["mnist_landed_batches"]
    assert "S3 notifies" in watch.description

    scoring = bag.dags["mnist_batch_scoring"]
    assert scoring.timetable.asset_condition == AssetAny(
        importlib.import_module("mnist_airflow.common").MODEL_REGISTRY,
        importlib.import_module("mnist_airflow.common").LANDED_BATCHES)
    served = DagSerialization.from_dict(DagSerialization.to_dict(scoring)).timetable
    assert type(served).__name__ == "AssetTriggeredTimetable"  # no interval
    assert "watch announces" in scoring.description
    # The training DAG is unchanged: it was on the increments asset already.
    assert bag.dags["mnist_training"].timetable.asset_condition is not None


def test_polling_mode_has_no_landing_batches_task(watch) -> None:  # type: ignore[no-untyped-def]
    assert [t.task_id for t in watch.tasks] == ["land"]


@pytest.mark.parametrize("value", ["kafka:x", "sqs:not-a-url", "https://sqs.x/1/q"])
def test_a_bad_landing_events_value_is_an_import_error(monkeypatch, value) -> None:  # type: ignore[no-untyped-def]
    bag = _events_bag(monkeypatch, value)
    assert set(bag.import_errors) >= {WATCH_FILE.name, SCORING_FILE.name}
    for message in bag.import_errors.values():
        assert "MNIST_LANDING_EVENTS=" in message and repr(value) in message
