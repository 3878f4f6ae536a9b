"""The MLflow-backed registry against a real MLflow server: what MLflow itself sees (a Keras model
that ``mlflow.keras.load_model`` loads in the server's own environment), its faults (server down,
also half way through a registration, a version made by hand, an alias left on a deleted
version), the command line, scoring from it, and the read-check-set window of an alias move; and
the tracking mirror (a sweep's candidates as child runs, the link back to Airflow, the run's page
in MLflow's UI: the README's screenshot). The contract every backend keeps is
test_registry_contract.py."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks.artifacts import write_json, write_result
from mnist_tasks.mlflow_rest import MlflowError, MlflowRest
from mnist_tasks.registry_api import CHAMPION, AliasConflict, RegistryError, VersionNotFound
from mnist_tasks.registry_mlflow import MlflowRegistry
from mnist_tasks.results import CandidateRow, EvaluateResult, SelectionRule, SelectResult
from mnist_tasks.storage import LocalStore, Store
from mnist_tasks.tracking_mlflow import MirroredRun, mirror_evaluation
from tests.helpers import REPO, make_prepared, patch_images, patch_model, train_result
from tests.mlflow_server import MLFLOW_VENV, free_port


def fresh(location: str, name: str) -> MlflowRegistry:
    """The registry of a model of this test's own (the server is shared by the session)."""
    rest = MlflowRest(location)
    with contextlib.suppress(MlflowError):  # not there yet
        rest.call("DELETE", "registered-models/delete", body={"name": name})
    return MlflowRegistry(location, name)


def register(registry: MlflowRegistry, run: str, accuracy: float = 0.98) -> int:
    return registry.register(
        run, {"model.keras": f"weights of {run}".encode(), "metrics.json": b"{}"},
        {"run": {"run_id": f"manual__{run}"}, "metrics": {"test_accuracy": accuracy},
         "gate": {"decision": "PROMOTE"}}).version


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_STORE", "MNIST_REGISTRY")}
    return subprocess.run([sys.executable, "-m", "mnist_tasks.registry", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


def test_a_version_is_an_mlflow_keras_model(mlflow_server: str, tmp_path: Path) -> None:
    registry = fresh(mlflow_server, "keras-flavour")
    model_file = tmp_path / "model.keras"
    patch_model().save(model_file)  # hand-set weights: no training needed
    info = registry.register("run-k", {"model.keras": model_file, "metrics.json": b"{}"},
                             {"metrics": {"test_accuracy": 0.91}, "gate": {"decision": "PROMOTE"},
                              "lineage": {"dataset_version": "d" * 16}})
    registry.promote(info.version)
    raw = MlflowRest(mlflow_server).call("GET", "model-versions/get", params={
        "name": "keras-flavour", "version": str(info.version)})["model_version"]
    tags = {t["key"]: t["value"] for t in raw["tags"]}
    assert tags["mnist.run_key"] == "run-k" and tags["mnist.test_accuracy"] == "0.91"
    assert tags["mnist.dataset_version"] == "d" * 16 and tags["mnist.complete"]
    # MLflow's own client, in the server's environment, loads it by alias and predicts.
    script = (
        "import sys, mlflow, numpy as np\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "model = mlflow.keras.load_model('models:/keras-flavour@champion')\n"
        "print(model.predict(np.zeros((2, 28, 28), 'float32'), verbose=0).shape)\n"
        "print(type(mlflow.pyfunc.load_model('models:/keras-flavour/1')).__name__)\n")
    out = subprocess.run(
        [str(MLFLOW_VENV / "bin" / "python"), "-c", script,
         mlflow_server.removeprefix("mlflow+")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "KERAS_BACKEND":
                                                         "tensorflow"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["(2,", "10)", "PyFuncModel"]


def test_an_unreachable_server_is_one_line_naming_it(tmp_path: Path) -> None:
    location = f"mlflow+http://127.0.0.1:{free_port()}"  # nothing listens there
    registry = MlflowRegistry(location, "mnist-classifier")
    for call in (lambda: register(registry, "r1"), registry.list_versions,
                 lambda: registry.get_alias(CHAMPION), lambda: registry.get(1)):
        with pytest.raises(RegistryError, match="unreachable") as err:
            call()
        assert location in str(err.value) and "\n" not in str(err.value)
    result = cli("--registry", location, "list")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: MLflow server {location} is unreachable "
        "(GET model-versions/search: ConnectionError)"]


def test_a_version_made_by_hand_is_foreign(mlflow_server: str) -> None:
    registry = fresh(mlflow_server, "hand-edited")
    register(registry, "r1")
    rest = MlflowRest(mlflow_server)
    # What a person does in MLflow: log a run's model and register it, without our metadata.
    experiment = rest.call("POST", "experiments/create", body={"name": "by hand"})
    run = rest.call("POST", "runs/create", body={
        "experiment_id": experiment["experiment_id"]})["run"]["info"]
    rest.put_artifact(run["artifact_uri"].removeprefix("mlflow-artifacts:") + "/model/MLmodel",
                      b"flavors: {}\n")
    rest.call("POST", "model-versions/create", body={
        "name": "hand-edited", "source": run["artifact_uri"] + "/model",
        "run_id": run["run_id"]})

    assert [(e.version, e.status) for e in registry.scan()] == [(1, "ok"), (2, "foreign")]
    assert [v.version for v in registry.list_versions()] == [1]
    assert registry.latest().version == 1  # type: ignore[union-attr]
    for call in (registry.get, registry.model_uri, registry.promote):
        with pytest.raises(VersionNotFound, match=r"version 2 .* is foreign"):
            call(2)
    assert registry.get_alias(CHAMPION) is None
    listed = cli("--registry", mlflow_server, "--model-name", "hand-edited", "list")
    assert listed.returncode == 0, listed.stderr
    assert "foreign" in listed.stdout.splitlines()[2]
    assert "v2 foreign: not registered by this pipeline" in listed.stdout
    # The champion alias moved onto it by hand in MLflow: scoring refuses to use it.
    from mnist_tasks.score import resolve_model

    rest.call("POST", "registered-models/alias",
              body={"name": "hand-edited", "alias": CHAMPION, "version": "2"})
    with pytest.raises(VersionNotFound, match=r"version 2 .* is foreign"):
        resolve_model(registry)


def test_an_alias_left_on_a_deleted_version_is_one_line_naming_both(mlflow_server: str) -> None:
    registry = fresh(mlflow_server, "dangling")
    register(registry, "r1")
    register(registry, "r2")
    registry.promote(1)
    registry.promote(2)
    MlflowRest(mlflow_server).call("DELETE", "model-versions/delete",
                                   body={"name": "dangling", "version": "2"})
    with pytest.raises(RegistryError) as err:
        registry.get_alias(CHAMPION)
    assert str(err.value) == (f"alias 'champion' of 'dangling' points at version 2, which was "
                              f"deleted from {mlflow_server}; promote a version to repair it")
    listed = cli("--registry", mlflow_server, "--model-name", "dangling", "list")
    assert listed.returncode == 0 and "warning: champion unknown: alias 'champion'" in \
        listed.stdout
    with pytest.raises(AliasConflict, match="points to 2, expected 1"):
        registry.set_alias(CHAMPION, 1, expected=1)
    assert registry.rollback().version == 1  # back to what the deleted version replaced
    assert registry.get_alias(CHAMPION) == 1


def test_the_command_line_lists_shows_promotes_and_rolls_back(mlflow_server: str) -> None:
    registry = fresh(mlflow_server, "cli-model")
    register(registry, "run-1", 0.9712)
    register(registry, "run-2", 0.9803)
    registry.promote(1)
    args = ("--registry", mlflow_server, "--model-name", "cli-model")

    listed = cli(*args, "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:3]]
    assert rows[0][:2] == ["*", "1"] and "0.9712" in rows[0] and "manual__run-1" in rows[0]
    assert rows[1][0] == "2" and "0.9803" in rows[1]

    shown = cli(*args, "show", "2", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["version"] == 2 and data["test_accuracy"] == 0.9803
    assert data["model_uri"] == f"{mlflow_server}/cli-model/versions/2/model.keras"

    promoted = cli(*args, "promote", "2")
    assert (promoted.returncode, promoted.stdout.strip()) == (0, "champion -> v2 (was v1)")
    assert registry.get_alias(CHAMPION) == 2
    rolled = cli(*args, "rollback")
    assert (rolled.returncode, rolled.stdout.strip()) == (0, "champion -> v1 (was v2)")
    # --store accepts the MLflow location too (what a model card's download line says)
    again = cli("--store", mlflow_server, "--model-name", "cli-model", "show", "1")
    assert again.returncode == 0 and again.stdout.startswith("cli-model v1  [champion]")


def test_a_server_lost_half_way_through_register_leaves_no_candidate(
        mlflow_server: str) -> None:
    registry = fresh(mlflow_server, "half-way")
    down = f"mlflow+http://127.0.0.1:{free_port()}"  # nothing listens there

    def server_goes_away(pending: Any) -> None:  # after the model's upload, before the rest
        registry.client = MlflowRest(down)

    with pytest.raises(RegistryError, match="unreachable") as err:
        registry.register("r1", {"model.keras": b"weights", "metrics.json": b"{}"},
                          {"gate": {"decision": "PROMOTE"}}, verify=server_goes_away)
    assert down in str(err.value) and "\n" not in str(err.value)
    registry = MlflowRegistry(mlflow_server, "half-way")  # the server is back
    assert registry.list_versions() == [] and registry.latest() is None
    assert [(e.version, e.status) for e in registry.scan(include_incomplete=True)] == [
        (1, "incomplete")]  # marked (no mnist.complete tag), not deleted
    with pytest.raises(VersionNotFound):
        registry.promote(1)
    assert register(registry, "r1") == 1  # the run's retry completes the same version
    assert [v.version for v in registry.list_versions()] == [1]


def test_scoring_reads_the_mlflow_registry(mlflow_server: str, tmp_path: Path) -> None:
    from mnist_tasks import score
    from mnist_tasks.idx import encode_idx
    from mnist_tasks.scoring_batches import write_batch
    from mnist_tasks.scoring_outputs import read_output

    registry = fresh(mlflow_server, "scored")
    patch_model().save(tmp_path / "model.keras")
    register(registry, "r0")
    registry.register("r1", {"model.keras": tmp_path / "model.keras"}, {})
    registry.promote(2)
    store, landing = LocalStore(tmp_path / "store"), LocalStore(tmp_path / "landing")
    labels = np.arange(10, dtype=np.uint8)
    write_batch(landing, "b001", {"a-idx3-ubyte": encode_idx(patch_images(labels))})
    cfg = score.ScoringConfig(landing=landing.uri, model_name="scored", registry=mlflow_server)
    done = score.score_batches(cfg, store, landing, "s1")
    assert (done.model_version, done.committed, done.images) == (2, ("b001",), 10)
    assert done.model_uri == f"{mlflow_server}/scored/versions/2/model.keras"
    predictions = read_output(store, cfg, "b001", 2, "predictions.csv")
    assert [int(line.split(",")[1]) for line in predictions.decode().splitlines()[1:]] == list(
        range(10))


def test_the_alias_read_check_set_window(mlflow_server: str) -> None:
    """MLflow has no compare-and-swap: measure how long a concurrent move could be lost."""
    registry = fresh(mlflow_server, "window")
    register(registry, "r1")
    register(registry, "r2")
    windows = []
    for i in range(20):
        registry.promote(1 + i % 2)
        assert registry.last_alias_window_s is not None
        windows.append(registry.last_alias_window_s * 1000)
    windows.sort()
    print(f"alias read-check-set window over {len(windows)} moves: median "
          f"{statistics.median(windows):.1f} ms, p90 {windows[17]:.1f} ms, "
          f"max {windows[-1]:.1f} ms")
    assert registry.alias_record(CHAMPION).history[-1]["seq"] == 20  # type: ignore[union-attr]


def trained_run(store: Store, run_key: str) -> SelectResult:
    """What select hands to evaluate: a model (hand-set weights) with its train record and
    history, chosen from :data:`SWEEP`."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10, dtype=np.uint8), 5)
    prepared_uri = make_prepared(store, "prep", val_fraction=0.2, split_seed=1, arrays={
        "x_train": patch_images(y, rng), "y_train": y, "x_test": patch_images(y, rng),
        "y_test": y}, dataset_key="cache/datasets/tiny/mnist.npz")
    prefix = f"runs/{run_key}/train"
    with tempfile.TemporaryDirectory() as tmp:
        patch_model().save(Path(tmp) / "model.keras")
        store.upload_file(Path(tmp) / "model.keras", f"{prefix}/model.keras")
    write_json(store, f"{prefix}/history.json", {
        "epoch": [1, 2], "loss": [1.2, 0.7], "accuracy": [0.5, 0.75], "val_accuracy": [0.6, 0.8],
        "preset": "tiny"})
    trained = train_result(model_uri=store.uri_for(f"{prefix}/model.keras"),
                           history_uri=store.uri_for(f"{prefix}/history.json"),
                           prepared_uri=prepared_uri,
                           train_uri=store.uri_for(f"{prefix}/result.json"))
    write_result(store, f"{prefix}/result.json", trained)
    return SelectResult(model_uri=trained.model_uri, history_uri=trained.history_uri,
                        prepared_uri=prepared_uri, train_uri=trained.train_uri, preset="tiny",
                        chosen_candidate=0, candidates=SWEEP,
                        selection=SelectionRule("val_accuracy", (), 1))


AIRFLOW_RUN = "http://airflow.example:8080/dags/mnist_training/runs/manual__run-m"
SWEEP = tuple(CandidateRow(
    candidate=i, label=label, overrides=overrides, preset="tiny", epochs=2, batch_size=32,
    learning_rate=rate, seed=1, status=status, val_accuracy=acc, val_loss=loss,
    fit_seconds=None if acc is None else 1.5, epochs_run=None if acc is None else 2,
    error=error, chosen=i == 0)
    for i, (label, overrides, rate, status, acc, loss, error) in enumerate([
        ("lr=0.001", {"learning_rate": 0.001}, 0.001, "trained", 0.8, 0.6, None),
        ("lr=0.1", {"learning_rate": 0.1}, 0.1, "failed", None, None, "loss became NaN")]))


@pytest.fixture(scope="module")
def mirrored(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Store, EvaluateResult, dict[str, Any], MirroredRun]:
    """A run with two candidates evaluated for real by the Pipeline, which mirrors it once
    (shared by the mirror's test and the screenshot)."""
    from mnist_tasks.artifacts import code_fingerprint
    from mnist_tasks.config import pipeline_config
    from mnist_tasks.pipeline import Pipeline, run_summary

    store = LocalStore(tmp_path_factory.mktemp("mirror") / "store")
    pipe = Pipeline(pipeline_config({"store": store.uri, "model_name": "mirror-model"}),
                    "manual__run-m", dag_id="mnist_training", mlflow_tracking=mlflow_server,
                    airflow_run_url=AIRFLOW_RUN)
    evaluation = pipe.evaluate(trained_run(store, pipe.run_key))
    summary = run_summary(store, "manual__run-m")
    run = MirroredRun(summary["mlflow_run_id"], summary["mlflow_experiment_id"],
                      summary["mlflow_run_url"])
    assert summary["mlflow_tracking"] == mlflow_server
    kwargs: dict[str, Any] = {"model_name": "mirror-model", "run_key": pipe.run_key,
                              "run_id": "manual__run-m", "dag_id": "mnist_training",
                              "code_fingerprint": code_fingerprint(),
                              "airflow_run_url": AIRFLOW_RUN, "candidates": SWEEP}
    return store, evaluation, kwargs, run


def test_the_tracking_mirror_logs_a_run_and_never_fails_a_task(
        mlflow_server: str, mirrored: tuple[Store, EvaluateResult, dict[str, Any], MirroredRun],
        caplog: pytest.LogCaptureFixture) -> None:
    store, evaluation, kwargs, mirror = mirrored
    run_id = mirror.run_id
    # A retry logs into the same runs.
    again = mirror_evaluation(mlflow_server, store, evaluation, **kwargs)
    assert again is not None and (again.run_id, again.url) == (run_id, mirror.url)
    assert mirror.url == (f"{mlflow_server.removeprefix('mlflow+')}/#/experiments/"
                          f"{mirror.experiment_id}/runs/{run_id}")
    rest = MlflowRest(mlflow_server)
    run = rest.call("GET", "runs/get", params={"run_id": run_id})["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert params["preset"] == "tiny" and params["seed"] == "1"
    assert metrics["test_accuracy"] == evaluation.test_accuracy == 1.0
    assert metrics["recall_digit_7"] == 1.0 and metrics["val_accuracy"] == 0.8
    history = rest.call("GET", "metrics/get-history",
                        params={"run_id": run_id, "metric_key": "accuracy"})["metrics"]
    assert sorted((m["step"], m["value"]) for m in history) == [(1, 0.5), (2, 0.75)]
    assert tags["mnist.airflow_run_id"] == "manual__run-m"
    assert tags["mnist.code_fingerprint"] == kwargs["code_fingerprint"]
    assert tags["mnist.dag_id"] == "mnist_training"
    # The link back to the Airflow run: a tag, and the run's description in MLflow's UI.
    assert tags["mnist.airflow_run_url"] == AIRFLOW_RUN
    assert f"[`mnist_training` run `manual__run-m`]({AIRFLOW_RUN})" in tags[
        "mlflow.note.content"]
    assert run["info"]["status"] == "FINISHED"
    root = run["info"]["artifact_uri"].removeprefix("mlflow-artifacts:")
    assert rest.get_artifact(f"{root}/plots/confusion_matrix.png").startswith(b"\x89PNG")
    assert b"precision" in rest.get_artifact(f"{root}/report.txt")
    # Each candidate of the sweep is a child run of this one: its config, its final metrics.
    children = rest.call("POST", "runs/search", body={
        "experiment_ids": [mirror.experiment_id],
        "filter": f"tags.`mlflow.parentRunId` = '{run_id}'"})["runs"]
    by_id = {c["info"]["run_id"]: c for c in children}
    assert sorted(by_id) == sorted(again.children) and len(again.children) == 2
    first, second = (by_id[c] for c in again.children)
    assert first["info"]["run_name"] == "manual__run-m candidate 0: lr=0.001"
    assert {p["key"]: p["value"] for p in first["data"]["params"]}["learning_rate"] == "0.001"
    assert {m["key"]: m["value"] for m in first["data"]["metrics"]} == {
        "val_accuracy": 0.8, "val_loss": 0.6, "fit_seconds": 1.5, "epochs_run": 2.0}
    second_tags = {t["key"]: t["value"] for t in second["data"]["tags"]}
    assert second["info"]["status"] == "FAILED" and second["data"].get("metrics", []) == []
    assert second_tags["mnist.error"] == "loss became NaN" and second_tags[
        "mnist.chosen"] == "false"

    down = f"mlflow+http://127.0.0.1:{free_port()}"
    with caplog.at_level("WARNING", logger="mnist_tasks.tracking_mlflow"):
        assert mirror_evaluation(down, store, evaluation, **kwargs) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and down in warnings[0] and "unreachable" in warnings[0]


def test_the_mirrored_run_as_mlflow_shows_it(
        mirrored: tuple[Store, EvaluateResult, dict[str, Any], MirroredRun],
        tmp_path: Path) -> None:
    """MLflow's own UI opens the mirrored run's page (the README's docs/ui/mlflow-run.png is
    this screenshot, copied by hand)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.integration.browser import artifacts, chromium, save_docs_copy, save_screenshot

    mirror = mirrored[3]
    shots = artifacts(tmp_path)
    driver = chromium(tmp_path / "chromium-profile")
    try:
        driver.get(mirror.url)
        WebDriverWait(driver, 60).until(lambda d: "manual__run-m" in d.find_element(
            By.TAG_NAME, "body").text and "test_accuracy" in d.find_element(
            By.TAG_NAME, "body").text)
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "mnist_training" in body  # the description's link back to Airflow
        # A picture, not an assertion: MLflow's "Model training" view (its toggle, which
        # MLflow remembers, leaves the run's page), without the assistant's panel.
        for element in driver.find_elements(
                By.XPATH, "//*[normalize-space(text())='Model training']")[:1]:
            with contextlib.suppress(Exception):
                element.click()
        driver.get(mirror.url)
        WebDriverWait(driver, 60).until(lambda d: "test_accuracy" in d.find_element(
            By.TAG_NAME, "body").text)
        for button in driver.find_elements(
                By.XPATH, "//*[normalize-space(text())='MLflow Assistant']/following::button"
                "[contains(translate(@aria-label, 'C', 'c'), 'close')]")[:1]:
            with contextlib.suppress(Exception):
                button.click()
        shot = save_screenshot(driver, shots, "mlflow-run.png")
    except Exception:
        save_screenshot(driver, shots, "mlflow-run-failure.png")
        raise
    finally:
        driver.quit()
    save_docs_copy(shot)


def test_two_attempts_of_one_run_make_one_version(mlflow_server: str) -> None:
    registry = fresh(mlflow_server, "two-attempts")
    # What two attempts that both found nothing leave: two unfinished versions of one run.
    registry._ensure_model()
    registry._create_version("r1")
    registry._create_version("r1")
    assert [(e.version, e.status) for e in registry.scan(include_incomplete=True)] == [
        (1, "incomplete"), (2, "incomplete")]
    assert register(registry, "r1") == 1  # the run's first version is completed
    assert [v.version for v in registry.list_versions()] == [1]
    assert registry.version_for_run("r1").version == 1  # type: ignore[union-attr]


def test_the_models_page_reads_the_mlflow_registry(mlflow_server: str, tmp_path: Path) -> None:
    """What the Models page opens for a deployment with ``MNIST_REGISTRY`` set is the MLflow
    registry, and its versions table shows MLflow's versions and champion (the page itself, in
    a real api-server, is tests/integration/test_models_page.py)."""
    import importlib.util

    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from mnist_tasks.settings import Settings

    registry = fresh(mlflow_server, "page-model")
    register(registry, "run-1", 0.9712)
    register(registry, "run-2", 0.9803)
    registry.promote(2)
    path = REPO / "plugins" / "mnist_models.py"
    spec = importlib.util.spec_from_file_location("mnist_models_page", path)
    assert spec and spec.loader
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    cfg = Settings.from_environ({"MNIST_REGISTRY": mlflow_server, "MNIST_MODEL_NAME": "page-model",
                                 "MNIST_STORE": LocalStore(tmp_path / "store").uri})
    _, reg = plugin._open(cfg)
    assert isinstance(reg, MlflowRegistry) and reg.model_name == "page-model"
    champion = reg.get_alias(CHAMPION)
    rows = [plugin._version_row(i, champion) for i in reversed(reg.list_versions())]
    assert [(r["version"], r["test_accuracy"], r["champion"]) for r in rows] == [
        (2, 0.9803, True), (1, 0.9712, False)]
    assert rows[0]["model_uri"] == f"{mlflow_server}/page-model/versions/2/model.keras"
    env = Environment(loader=FileSystemLoader(path.parent / "templates"),
                      autoescape=select_autoescape(["html"]))
    html = env.get_template("mnist_models.html").render(
        model_name="page-model", registry_uri=reg.uri, champion=champion, rows=rows, runs=[],
        selected=rows[0], selected_meta={}, lineage=None, plots=[], card_html=None, scored=[],
        run=None, error=None)
    assert "page-model" in html and ">0.9803<" in html and ">0.9712<" in html, html[-3000:]
