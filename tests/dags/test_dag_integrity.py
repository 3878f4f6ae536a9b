"""DAG integrity: it parses, has the expected graph and settings, and stays cheap to parse."""

from __future__ import annotations

import gc
import importlib.util
import subprocess
import sys
import weakref
from datetime import timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "mnist_training.py"

EXPECTED_DOWNSTREAM = {
    "ingest": {"preprocess"},
    "preprocess": {"train", "evaluate", "gate", "register"},
    "train": {"evaluate", "register"},
    "evaluate": {"gate", "register"},
    "gate": {"register"},
    "register": set(),
}


@pytest.fixture(scope="module")
def dagbag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.fixture(scope="module")
def dag(dagbag):  # type: ignore[no-untyped-def]
    return dagbag.dags["mnist_training"]


def test_no_import_errors(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}
    assert "mnist_training" in dagbag.dag_ids


def test_task_graph(dag) -> None:  # type: ignore[no-untyped-def]
    graph = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert graph == EXPECTED_DOWNSTREAM


def test_schedule_and_concurrency(dag) -> None:  # type: ignore[no-untyped-def]
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.schedule == "@weekly"
    assert dag.tags and "mnist" in dag.tags


def test_every_task_retries_with_backoff_and_timeout(dag) -> None:  # type: ignore[no-untyped-def]
    for t in dag.tasks:
        assert t.retries >= 2, t.task_id
        assert t.retry_exponential_backoff, t.task_id
        assert t.execution_timeout is not None and t.execution_timeout > timedelta(0), t.task_id


def test_gate_short_circuits_register(dag) -> None:  # type: ignore[no-untyped-def]
    gate = dag.get_task("gate")
    assert type(gate).__name__ == "_ShortCircuitDecoratedOperator"


def test_register_emits_the_registry_asset(dag) -> None:  # type: ignore[no-untyped-def]
    outlets = dag.get_task("register").outlets
    assert [a.name for a in outlets] == ["mnist_model_registry"]


@pytest.mark.parametrize(
    ("conf", "param"),
    [
        ({"epochs": 0}, "epochs"),
        ({"preset": "resnet"}, "preset"),
        ({"min_accuracy": 1.5}, "min_accuracy"),
        ({"store": "ftp://x"}, "store"),
        ({"batch_size": "big"}, "batch_size"),
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


def test_default_params_are_valid(dag) -> None:  # type: ignore[no-untyped-def]
    from mnist_tasks.config import PIPELINE_PARAMS, pipeline_config

    values = dag.params.validate()
    assert set(values) <= set(PIPELINE_PARAMS)
    cfg = pipeline_config(values)
    assert cfg.train.preset == "seed_mlp" and cfg.gate.min_accuracy == 0.97


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    return set(out.stdout.split())


def test_parsing_the_dag_file_imports_no_heavy_libraries() -> None:
    mods = _modules_after(f"import runpy; runpy.run_path({str(DAG_FILE)!r})")
    heavy = {"tensorflow", "keras", "numpy", "sklearn", "matplotlib", "mnist_tasks.train"}
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


def _dag_with_margin(monkeypatch, margin: str | None):  # type: ignore[no-untyped-def]
    """Parse the DAG file afresh with MNIST_DEADLINE_MARGIN_MINUTES set (or unset) for it."""
    from airflow.dag_processing.dagbag import DagBag

    if margin is None:
        monkeypatch.delenv("MNIST_DEADLINE_MARGIN_MINUTES", raising=False)
    else:
        monkeypatch.setenv("MNIST_DEADLINE_MARGIN_MINUTES", margin)
    bag = DagBag(dag_folder=str(DAG_FILE))
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


def test_failure_callback_on_every_task(dag) -> None:  # type: ignore[no-untyped-def]
    for t in dag.tasks:
        callbacks = t.on_failure_callback
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        assert [c.__name__ for c in callbacks] == ["on_failure"], t.task_id


def test_stages_run_with_long_lived_objects_frozen_and_garbage_collected() -> None:
    """`_run_stage` collects, then freezes what is alive: full collections skip Airflow's heap."""

    spec = importlib.util.spec_from_file_location("mnist_training_under_test", DAG_FILE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    gc.unfreeze()
    probe = Cycle()
    garbage = weakref.ref(probe)
    del probe  # unreachable, but only the cyclic collector can free it
    seen: dict[str, object] = {}

    def stage() -> dict[str, object]:
        seen["frozen"] = gc.get_freeze_count()
        seen["garbage_alive"] = garbage() is not None
        return {"model_uri": "file:///m.keras", "test_accuracy": 0.98}

    try:
        assert module._run_stage("probe", stage) == {
            "model_uri": "file:///m.keras", "test_accuracy": 0.98}
        assert isinstance(seen["frozen"], int) and seen["frozen"] > 10_000
        assert seen["garbage_alive"] is False
    finally:
        gc.unfreeze()
