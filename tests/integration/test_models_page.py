"""The "Models" page plugin and the approval request in a real Airflow api-server, over HTTP
and in headless Chromium.

One api-server (SQLite metadata DB, simple auth manager with a known admin) reads a registry in
S3 (the moto server over HTTP) that holds two versions; the second was registered by a real
(queued) run of ``mnist_training``. Beside them: a run that stopped at check (UNCHANGED), a run
whose override was refused, and a run whose gate REJECTED its model, waiting at ``approve`` with
the request ``PromotionApproval`` makes (its records written as the stages write them; the
request put in the metadata DB as the task would, since no worker runs here). Checked: requests
without a session are refused (401 or a redirect to the login page), the JSON listing and files
with a token, and in Chromium: log in through Airflow's login form, open "Models" from the
navigation bar, see the versions, the runs with their outcomes, the gate's checks and the
per-increment comparison, the frame sized to the page; the "Model" tab of a DAG run; the
approval request with what was trained on which data and the checks, its answers disabled
until a reason is written; the bare page's links back to Airflow. Screenshots go to the test's
tmp folder (or to $TEST_ARTIFACTS when set), with a shrunk copy of the Models page for the
README (copy it to docs/ by hand: tests never write tracked files).

Needs Debian's ``chromium`` and ``chromium-driver`` packages (``make test-deps`` installs them)
and ``selenium`` from PyPI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import numpy as np
import pytest
import requests

from mnist_tasks.artifacts import write_result
from mnist_tasks.config import run_key
from mnist_tasks.registry import Registry
from mnist_tasks.results import (
    Check,
    FreshComparison,
    GateDecision,
    IncrementComparison,
    LineageIncrement,
    PreprocessResult,
    to_json,
)
from mnist_tasks.storage import S3Store, Store
from tests.helpers import (
    evaluate_result,
    gate_decision,
    lineage,
    recall_rows,
    seed_airflow_home,
    train_result,
)
from tests.integration.airflow_services import REPO, ApiClient, Services, airflow_env, free_port
from tests.integration.browser import (
    artifacts,
    chromium,
    frame_fits,
    full_page,
    log_in,
    save_docs_copy,
    save_screenshot,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

BUCKET = "models-page"
OLD_RUN_ID = "manual__2026-11-14T09:00:00+00:00"
REFUSED_RUN_ID = "manual__2026-11-23T10:00:00+00:00"
DATASET = "d5e7a1b2c3d4e5f6"
INCREMENTS = (LineageIncrement("2026-11-20-shop", "a" * 64, 800, 200, drift=True),
              LineageIncrement("2026-11-01-shop", "b" * 64, 400, 100, drift=False))
CONFUSIONS = {0: (6, 5), 1: (7, 8), 2: (7, 8), 3: (5, 8), 4: (9, 6), 5: (3, 8), 6: (0, 5),
              7: (2, 9), 8: (3, 5), 9: (4, 7)}


@dataclass(frozen=True)
class Deployment:
    base_url: str
    api: ApiClient
    run_id: str  # the DAG run that registered version 2
    waiting_run_id: str  # the DAG run whose REJECT waits at approve
    services: Services

UNCHANGED_RUN_ID = "scheduled__2026-11-22T00:00:00+00:00"


def _run_records(store: Store, run_id: str, verdict: str, *, champion: int | None,
                 accuracy: float) -> GateDecision:
    """The records a run's stages leave (prepared.json, train and evaluate results, the
    gate's decision.json) for dataset version DATASET with INCREMENTS; the gate's decision."""
    runs = store.uri_for(f"runs/{run_key(run_id)}")
    prepared = PreprocessResult(
        prepared_uri=f"{runs}/preprocess/prepared.npz", dataset_uri=f"{store.uri}/d.npz",
        fingerprint="f" * 64, data_sha256="d" * 64, val_fraction=0.1, seed=42,
        n_train=55_200, n_val=6_000, n_test=10_000, n_fresh=300, n_increment_train=1_200,
        dataset_version=DATASET, increments=tuple(i.id for i in INCREMENTS),
        fresh_increments=tuple(i.id for i in INCREMENTS), image_shape=(28, 28),
        lineage=lineage(dataset_version=DATASET, increments=INCREMENTS))
    write_result(store, f"runs/{run_key(run_id)}/preprocess/prepared.json", prepared)
    write_result(store, f"runs/{run_key(run_id)}/train/result.json", train_result(
        preset="fast_mlp", epochs_run=2, params={"preset": "fast_mlp", "epochs": 2}))
    write_result(store, f"runs/{run_key(run_id)}/evaluate/result.json",
                 evaluate_result(train_uri=f"{runs}/train/result.json"))
    fresh = FreshComparison(
        n=300, challenger_accuracy=0.9550, champion_accuracy=0.9300, mcnemar=None,
        per_digit_recall={}, per_increment={
            "2026-11-20-shop": IncrementComparison(200, 0.9450, 0.9100),
            "2026-11-01-shop": IncrementComparison(100, 0.9750, 0.9700)})
    ok = verdict == "PROMOTE"
    checks = (
        Check("threshold", True, f"test accuracy {accuracy:.4f} >= minimum 0.9700", "benchmark"),
        Check("champion", ok, f"challenger {accuracy:.4f} vs champion v{champion} 0.9712"
              + ("" if ok else ": below the champion by more than the margin 0.0020"),
              "benchmark"),
        Check("per_digit_recall", ok, "no digit's recall drops by more than 0.0100" if ok
              else "recall drops by more than 0.0100: digit 9 0.9802 -> 0.9623 (drop 0.0179)",
              "benchmark"),
        Check("champion", True, "challenger 0.9550 vs champion 0.9300 on 300 fresh images",
              "fresh"))
    decision = gate_decision(
        verdict, champion=champion, per_digit=recall_rows(d9=0.0179 if not ok else 0.0009),
        checks=checks, reasons=tuple(c.line() for c in checks), fresh=fresh,
        decision_uri=f"{runs}/gate/decision.json", evaluation_uri=f"{runs}/evaluate/result.json",
        prepared_uri=f"{runs}/preprocess/prepared.npz")
    decision = dataclasses.replace(decision, challenger=dataclasses.replace(
        decision.challenger, accuracy=accuracy, run_key=run_key(run_id)))
    if decision.champion is not None:
        decision = dataclasses.replace(decision, champion=dataclasses.replace(
            decision.champion, accuracy=0.9712, loss=0.0934))
    write_result(store, f"runs/{run_key(run_id)}/gate/decision.json", decision)
    return decision


def _register(store: Store, run_id: str, accuracy: float, work: Path,
              decision: GateDecision | None = None) -> int:
    """Register a version the way the register stage lays it out, with a tiny Keras model;
    with the gate's ``decision`` (and its run's records), the lineage and fresh comparison."""
    import keras

    from mnist_tasks.model_card import render_model_card
    from mnist_tasks.plots import confusion_matrix_png

    work.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.save(work / "model.keras")
    support = np.array([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    errors = np.round(support * (1 - accuracy)).astype(int)
    cm = np.diag(support - errors)
    for digit, n in enumerate(errors):  # MNIST's usual confusions (4 -> 9, 7 -> 2, ...)
        first, second = CONFUSIONS[digit]
        cm[digit, first] += n - n // 3
        cm[digit, second] += n // 3
    confusion_matrix_png(cm, work / "confusion_matrix.png")
    recall = np.diag(cm) / support
    metrics = {
        "test_accuracy": accuracy, "test_loss": 0.07, "n_test": int(support.sum()),
        "per_digit": {str(d): {"precision": float(recall[d]), "recall": float(recall[d]),
                               "f1": float(recall[d]), "support": int(support[d])}
                      for d in range(10)},
    }
    metadata = {
        "run": {"dag_id": "mnist_training", "run_id": run_id},
        "metrics": {"test_accuracy": accuracy, "test_loss": 0.07},
        "gate": {"decision": "PROMOTE", "reasons": [f"test accuracy {accuracy:.4f} >= 0.9700"]},
        "code_version": "0123456789abcdef",
        "dataset": {"fingerprint": "5f0c9e1d2b7a", "n_train": 54000, "n_val": 6000,
                    "n_test": 10000, "val_fraction": 0.1, "seed": 42,
                    "dataset_uri": f"{store.uri}/cache/datasets/5f0c9e1d2b7a/mnist.npz"},
        "parameters": {"preset": "fast_mlp", "epochs": 2},
    }
    if decision is not None:
        metadata["gate"] = {
            "decision": decision.decision, "reasons": list(decision.reasons),
            "champion_version": decision.champion_version,
            "champion_accuracy": decision.champion_accuracy,
            "decision_uri": decision.decision_uri,
            "fresh": to_json(decision.fresh) if decision.fresh else None}
        metadata["lineage"] = to_json(lineage(dataset_version=DATASET, increments=INCREMENTS))

    def card(pending: Any) -> bytes:
        return render_model_card(
            model_name=pending.model_name, version=pending.version,
            created_at=pending.created_at, model_uri=pending.model_uri, store_uri=store.uri,
            metadata={**metadata, "run_key": pending.run_key}, metrics=metrics,
        ).encode()

    registry = Registry(store)
    info = registry.register(
        run_key(run_id),
        {"model.keras": work / "model.keras",
         "confusion_matrix.png": work / "confusion_matrix.png",
         "metrics.json": json.dumps(metrics).encode(),
         "model_card.md": card},
        metadata,
    )
    registry.promote(info.version)
    return info.version


def _scored_history(store: Store, version: int) -> None:
    """Two weeks of batches scored with ``version``, as the scoring DAG's commits leave them in
    the version's summary: mostly OK, a WARN, then drifting into ALARMs; and labels that came
    back for two of them."""
    from mnist_tasks.feedback import FeedbackReport, LiveAccuracy, report_key
    from mnist_tasks.scoring_index import record_scored

    manifests = []
    for day in range(1, 15):
        drift = max(0, day - 10)  # from day 11 on, the images drift
        status = "ALARM" if drift >= 2 else "WARN" if drift == 1 or day == 5 else "OK"
        checks = [{"name": "confidence", "effect_size": 0.03 + 0.06 * drift + 0.04 * (day == 5)},
                  {"name": "embeddings", "effect_size": 0.0008 * (1 + 3 * drift)}]
        manifests.append({
            "model_name": "mnist-classifier", "model_version": version,
            "batch": f"2026-11-{day:02d}T0300-shop",
            "counts": {"images": 2000, "skipped_files": int(day == 7)},
            "report": {"low_confidence": 25 + 40 * drift + 3 * (day % 3),
                       "divergence_tvd": 0.02 + 0.03 * drift, "divergence_flagged": drift >= 3},
            "monitor": {"status": status, "checks": checks,
                        "fired": ([] if status == "OK" else
                                  ["confidence", "embeddings"] if drift else ["confidence"])},
            "created_at": f"2026-11-{day:02d}T03:10:00+00:00", "run_id": f"scheduled__{day}",
        })
    record_scored(store, manifests)
    for day, correct, status in ((4, 482, "OK"), (13, 361, "ALARM")):
        batch = f"2026-11-{day:02d}T0300-shop"
        live = LiveAccuracy(version, 500, correct, correct / 500,
                            (correct / 500 - 0.03, min(1.0, correct / 500 + 0.02)), 0.9791,
                            0.5 if status == "OK" else 1e-9, status, {})
        report = FeedbackReport(batch, f"fb-{day:012d}", ("labels.csv",), 500, (), 0, (live,),
                                None, f"2026-11-{day:02d}T09:00:00+00:00", status)
        store.write_bytes(report_key("mnist-classifier", batch, report.feedback_id),
                          json.dumps(report.to_dict()).encode())


@pytest.fixture(scope="module")
def deployment(s3_server: str, airflow_db_template: Path) -> Iterator[Deployment]:
    """An api-server on a free loopback port over a registry with versions 1 and 2."""
    s3_env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": s3_server,
    }
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    store = S3Store(BUCKET, "mnist", client=client)

    home = seed_airflow_home(Path(tempfile.mkdtemp(prefix="models-page-")), airflow_db_template)
    port = free_port()
    env = airflow_env(home, port, MNIST_STORE=f"s3://{BUCKET}/mnist", **s3_env)
    services = Services(env, home / "logs")
    try:
        result = services.run("dags", "reserialize")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        services.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
        base_url = f"http://127.0.0.1:{port}"
        services.wait_http(f"{base_url}/api/v2/version")
        api = ApiClient(base_url)
        # A real run of the DAG (it stays queued: no scheduler), which "registered" version 2.
        run = api.json("POST", "/api/v2/dags/mnist_training/dagRuns",
                       json={"logical_date": None, "conf": {}})
        _register(store, OLD_RUN_ID, 0.9712, home / "v1")
        promoted = _run_records(store, run["dag_run_id"], "PROMOTE", champion=1, accuracy=0.9791)
        assert _register(store, run["dag_run_id"], 0.9791, home / "v2", promoted) == 2
        _summary(store, run["dag_run_id"], "PROMOTE", 0.9791, version=2,
                 reasons=list(promoted.reasons))
        _scored_history(store, 2)
        # A run that stopped at check: its inputs were version 2's.
        _summary(store, UNCHANGED_RUN_ID, "UNCHANGED", None, covered_by=2)
        # A run whose REJECT someone approved without a reason: the override was refused.
        refused = _run_records(store, REFUSED_RUN_ID, "REJECT", champion=2, accuracy=0.9655)
        _summary(store, REFUSED_RUN_ID, "REJECT", 0.9655, approval=_refused_override(),
                 reasons=list(refused.reasons))
        # A run whose gate REJECTED its model, waiting at approve (approval 'always').
        waiting = api.json("POST", "/api/v2/dags/mnist_training/dagRuns",
                           json={"logical_date": None, "conf": {"approval": "always"}})
        decision = _run_records(store, waiting["dag_run_id"], "REJECT", champion=2,
                                accuracy=0.9655)
        _summary(store, waiting["dag_run_id"], "REJECT", 0.9655, reasons=list(decision.reasons),
                 champion_fresh={"2026-11-20-shop": {"n": 200, "accuracy": 0.9100}})
        _request_approval(services, store, waiting["dag_run_id"], decision, base_url)
        yield Deployment(base_url, api, run["dag_run_id"], waiting["dag_run_id"], services)
    finally:
        services.stop()
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": [
            {"Key": o["Key"]} for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        ]})
        client.delete_bucket(Bucket=BUCKET)
        shutil.rmtree(home, ignore_errors=True)


def _summary(store: Store, run_id: str, decision: str, accuracy: float | None,
             **fields: Any) -> None:
    """The run's summary.json as the Pipeline writes it."""
    from mnist_tasks.artifacts import utc_now

    store.write_bytes(f"runs/{run_key(run_id)}/summary.json", json.dumps({
        "run_id": run_id, "dag_id": "mnist_training", "decision": decision,
        "dataset_version": DATASET, "preset": "fast_mlp", "test_accuracy": accuracy,
        "updated_at": utc_now(), **fields}).encode())


def _refused_override() -> dict[str, Any]:
    from mnist_tasks import approve

    result = approve.apply_response(
        gate_decision("REJECT"), approve.Response(choice="Approve", by="admin",
                                                  at="2026-11-23T10:29:00+00:00"),
        mode="always", why="approval is 'always'")
    return to_json(result.approval)


# Puts the approve task of a run in the state PromotionApproval.execute leaves it in (awaiting
# input, its request written), as the task's own process would through the execution API.
_PARK = """
import json, sys
from airflow.models.hitl import HITLDetail
from airflow.models.taskinstance import TaskInstance
from airflow.utils.session import create_session
from airflow.utils.state import TaskInstanceState

request = json.load(sys.stdin)
with create_session() as session:
    ti = session.query(TaskInstance).filter_by(
        dag_id="mnist_training", run_id=request["run_id"], task_id="approve", map_index=-1).one()
    ti.state = TaskInstanceState.AWAITING_INPUT
    session.add(HITLDetail(ti_id=ti.id, options=request["options"], subject=request["subject"],
                           body=request["body"], defaults=request["defaults"], multiple=False,
                           params=request["params"]))
"""


def _request_approval(services: Services, store: Store, run_id: str, decision: GateDecision,
                      base_url: str) -> None:
    """The approval request of ``run_id`` as the approve task makes it (PromotionApproval's
    form, mnist_tasks.approve's subject and body), parked in the metadata DB."""
    sys.path.insert(0, str(REPO / "dags"))
    try:
        from mnist_airflow.approval import PromotionApproval

        from mnist_tasks import approve
    finally:
        sys.path.remove(str(REPO / "dags"))
    task = PromotionApproval(task_id="approve", decision={})
    task._require_comment()  # the gate said REJECT
    _, why = approve.needs_approval(decision, "always")
    request = {
        "run_id": run_id, "options": task.options, "defaults": task.defaults,
        "params": task.serialized_params,
        "subject": approve.request_subject(decision, "mnist-classifier", run_id),
        "body": approve.report_markdown(
            decision, why=why, models_url=f"{base_url}/models/?run_id={quote(run_id)}",
            timeout_minutes=1440, trained=approve.what_was_trained(store, decision)),
    }
    result = subprocess.run([sys.executable, "-c", _PARK], input=json.dumps(request), text=True,
                            env=services.env, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def _anonymous() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def test_requests_without_a_session_are_refused(deployment: Deployment) -> None:
    anon = _anonymous()
    for path in ("/models/", "/models/api/versions", "/models/versions/1/files/model_card.md"):
        response = anon.get(deployment.base_url + path, allow_redirects=False, timeout=30)
        assert response.status_code == 401, (path, response.status_code, response.text)
        assert "model" not in response.text.lower()  # nothing from the registry leaks
    # A browser is sent to Airflow's login page, which brings it back afterwards.
    response = anon.get(deployment.base_url + "/models/?version=2", allow_redirects=False,
                        headers={"Accept": "text/html"}, timeout=30)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/auth/login?next=")
    assert quote("/models/?version=2", safe="") in response.headers["location"]
    # A forged token is no better than none.
    response = anon.get(deployment.base_url + "/models/api/versions", timeout=30,
                        headers={"Authorization": "Bearer not-a-real-token"})
    assert response.status_code in (401, 403)


def test_listing_and_files_with_a_token(deployment: Deployment) -> None:
    listing = deployment.api.json("GET", "/models/api/versions")
    assert listing["champion"] == 2
    assert [(v["version"], v["test_accuracy"], v["champion"]) for v in listing["versions"]] == [
        (1, 0.9712, False), (2, 0.9791, True)]
    assert listing["versions"][1]["run_id"] == deployment.run_id
    assert listing["registry_uri"] == f"s3://{BUCKET}/mnist/registry/mnist-classifier"

    png = deployment.api.request("GET", "/models/versions/2/files/confusion_matrix.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    # Only a version's viewable files are served: not the model, nothing outside the version.
    for path in ("/models/versions/2/files/model.keras", "/models/versions/2/files/..%2Fclaim.json",
                 "/models/versions/9/files/model_card.md", "/models/versions/x/files/a.png"):
        assert deployment.api.request("GET", path).status_code == 404, path

    page = deployment.api.request("GET", "/models/", params={"run_id": deployment.run_id,
                                                             "dag_id": "mnist_training"})
    assert page.status_code == 200
    assert "registered <b>version 2</b>" in page.text
    assert 'id="v2" data-version="2" class="selected"' in page.text
    assert "<h2>Version 2" in page.text and "Model card" in page.text
    page = deployment.api.request("GET", "/models/", params={"version": "../1"})
    assert page.status_code == 404 and "invalid version" in page.text
    # A run that registered nothing gets an explanation instead of a version.
    page = deployment.api.request("GET", "/models/", params={"run_id": "manual__nothing"})
    assert "has not registered a version" in page.text and 'class="selected"' not in page.text
    # A run with nothing new to train on names the version that covers its inputs.
    page = deployment.api.request("GET", "/models/", params={"run_id": UNCHANGED_RUN_ID})
    text = " ".join(page.text.split())
    assert "nothing new to train on (UNCHANGED)" in text and "<b>version 2</b>" in text
    # An Approve without a reason on a REJECT: the Model tab says the override was refused and
    # why, above the gate's checks.
    page = deployment.api.request("GET", "/models/", params={"run_id": REFUSED_RUN_ID})
    text = " ".join(page.text.split())
    assert "Approval: <b>override refused</b> by admin" in text
    assert "needs a written reason" in text
    assert '<td class="FAIL">FAIL</td>' in text and "digit 9 0.9802 -&gt; 0.9623" in text


def test_every_file_response_says_nosniff(deployment: Deployment) -> None:
    # A version's files come from the store: the browser must take the declared type, never
    # guess HTML or script from the bytes.
    for path in ("/models/versions/2/files/confusion_matrix.png",
                 "/models/versions/2/files/model_card.md", "/models/versions/2/files/metrics.json",
                 "/models/icon.svg", "/models/api/versions", "/models/",
                 "/models/versions/2/files/model.keras"):
        response = deployment.api.request("GET", path)
        assert response.headers.get("x-content-type-options") == "nosniff", (
            path, response.status_code, dict(response.headers))


def test_models_page_in_chromium(deployment: Deployment, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    shots = artifacts(tmp_path)
    driver = chromium(tmp_path / "chromium-profile")
    wait = WebDriverWait(driver, 60)
    try:
        # Not logged in: the Models page sends the browser to Airflow's login form.
        driver.get(f"{deployment.base_url}/models/")
        wait.until(ec.presence_of_element_located((By.NAME, "username")))
        assert "/auth/login" in driver.current_url
        log_in(driver, "admin", "admin-password")

        # Opened on its own, the page links back to Airflow and to itself inside Airflow.
        driver.get(f"{deployment.base_url}/models/")
        links = wait.until(ec.visibility_of_element_located((By.ID, "airflow-links")))
        assert [a.get_attribute("href") for a in links.find_elements(By.TAG_NAME, "a")][:2] == [
            f"{deployment.base_url}/", f"{deployment.base_url}/plugin/models"]

        # From Airflow's home page, the nav bar has "Models".
        driver.get(f"{deployment.base_url}/")
        link = wait.until(ec.element_to_be_clickable(
            (By.CSS_SELECTOR, "nav a[href$='plugin/models'], a[href$='plugin/models']")))
        link.click()
        frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR,
                                                           "iframe[title='Models']")))
        driver.switch_to.frame(frame)
        rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-version]"))
        assert [r.get_attribute("data-version") for r in rows] == ["2", "1"]  # newest first
        assert "★ champion" in rows[0].text and "0.9791" in rows[0].text
        assert "fast_mlp" in rows[0].text
        # A fresh accuracy names the set it was measured on.
        assert "0.9550" in rows[0].text and "2 increments (2026-11-20-shop, 2026-11-01-shop), " \
            "300 images" in rows[0].text
        assert "PROMOTE" in rows[1].text and "0.9712" in rows[1].text
        # Run ids link to their Airflow runs (in the top window, not the frame).
        run_link = rows[0].find_element(By.CSS_SELECTOR, "a[href*='/dags/']")
        assert run_link.get_attribute("href") == (
            f"{deployment.base_url}/dags/mnist_training/runs/"
            f"{quote(deployment.run_id, safe='')}")
        assert run_link.get_attribute("target") == "_top"
        # Every run with its outcome: REJECT and UNCHANGED too, with its dataset version.
        runs = {r.get_attribute("data-run"): r for r in driver.find_elements(
            By.CSS_SELECTOR, "table.runs tr[data-run]")}
        assert {k: r.get_attribute("data-outcome") for k, r in runs.items()} == {
            deployment.waiting_run_id: "REJECT", REFUSED_RUN_ID: "REJECT",
            UNCHANGED_RUN_ID: "UNCHANGED", deployment.run_id: "PROMOTE"}
        assert "covered by v2" in runs[UNCHANGED_RUN_ID].text
        assert "override refused" in runs[REFUSED_RUN_ID].text
        assert all(DATASET in r.text for r in runs.values())
        # The gate's checks as one PASS/FAIL table; the champion on each increment, side by side.
        checks = [[c.text for c in r.find_elements(By.TAG_NAME, "td")]
                  for r in driver.find_elements(By.CSS_SELECTOR, "#detail table.checks tbody tr")]
        assert [c[:3] for c in checks] == [["threshold", "benchmark", "PASS"],
                                          ["champion", "benchmark", "PASS"],
                                          ["per_digit_recall", "benchmark", "PASS"],
                                          ["champion", "fresh", "PASS"]]
        increments = {r.get_attribute("data-increment"): r.text for r in driver.find_elements(
            By.CSS_SELECTOR, "table.fresh-compare tr[data-increment]")}
        assert "0.9450 0.9100 +0.0350" in increments["2026-11-20-shop"]
        assert "⚠ drift" in increments["2026-11-20-shop"]
        image = driver.find_element(By.CSS_SELECTOR, "#detail .plots img")
        wait.until(lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", image))
        # Plots at a readable size, enlarged on click.
        width = image.size["width"]
        assert width >= 500, width
        image.click()
        assert "zoomed" in image.find_element(By.XPATH, "..").get_attribute("class")
        image.click()
        assert "Intended use" in driver.find_element(By.CSS_SELECTOR, "article.card").text
        # No table is cut off: each is as wide as its box, or scrolls inside it.
        assert driver.execute_script(
            "return [...document.querySelectorAll('table')].every(t => {"
            " const box = t.closest('.scroll, article') || document.body;"
            " return t.getBoundingClientRect().right <= document.documentElement.clientWidth + 1"
            " || getComputedStyle(box).overflowX === 'auto'; })")
        # The version's batches over time: the monitoring plot, and each batch's status.
        plot = driver.find_element(By.CSS_SELECTOR, "img.monitoring")
        wait.until(lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 600", plot))
        statuses = [c.text.split()[0] for c in driver.find_elements(
            By.CSS_SELECTOR, "table.scored td[class^='monitor-']")]
        assert statuses.count("ALARM") == 3 and statuses.count("WARN") == 2, statuses
        assert "every check passed" in runs[deployment.run_id].text
        assert "per_digit_recall FAIL" in runs[deployment.waiting_run_id].text
        driver.execute_script("document.querySelector('h1').scrollIntoView()")
        driver.switch_to.default_content()
        wait.until(lambda d: frame_fits(d, frame))
        time.sleep(1)  # let the nav settle before the picture
        shot = save_screenshot(driver, shots, "models-page.png")
        small = save_docs_copy(shot)
        full_page(driver, shots, "models-page-full.png")

        # The DAG run's "Model" tab shows the version that run registered, in a frame as tall
        # as its page.
        run_url = (f"{deployment.base_url}/dags/mnist_training/runs/"
                   f"{quote(deployment.run_id, safe='')}")
        driver.get(run_url)
        tab = wait.until(ec.element_to_be_clickable(
            (By.XPATH, "//a[contains(@href, 'plugin/models-run')] | "
                       "//button[normalize-space()='Model']")))
        tab.click()
        frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR,
                                                           "iframe[title='Model']")))
        driver.switch_to.frame(frame)
        banner = wait.until(ec.presence_of_element_located((By.ID, "run-banner")))
        assert "registered version 2" in " ".join(banner.text.split())
        selected = driver.find_element(By.CSS_SELECTOR, "tr.selected")
        assert selected.get_attribute("data-version") == "2"
        driver.switch_to.default_content()
        wait.until(lambda d: frame_fits(d, frame))
        assert frame.size["height"] > 1500, frame.size
        save_screenshot(driver, shots, "models-page-dag-run.png")

        # The approval request of the run that waits: what was trained on which data first,
        # then the gate's checks; no answer until a reason is written.
        driver.get(f"{deployment.base_url}/dags/mnist_training/runs/"
                   f"{quote(deployment.waiting_run_id, safe='')}/tasks/approve/required_actions")
        body = wait.until(ec.presence_of_element_located(
            (By.XPATH, "//*[normalize-space()='What was trained']/..")))
        text = " ".join(body.text.split())
        assert f"on dataset version {DATASET}" in text, text
        assert text.index("What was trained") < text.index("Gate decision: REJECT")
        assert "⚠ Trained on drifted data" in text and "2026-11-20-shop" in text
        assert "2026-11-20-shop new 800 200 0.9450 0.9100 ⚠ drift" in text
        cells = [c.text for c in body.find_elements(By.CSS_SELECTOR, "table td")]
        assert "PASS" in cells and "FAIL" in cells, cells
        assert "0.0934" in text  # the champion's test loss
        approve_button = driver.find_element(By.CSS_SELECTOR, "[data-testid='hitl-option-Approve']")
        reject_button = driver.find_element(By.CSS_SELECTOR, "[data-testid='hitl-option-Reject']")
        assert not approve_button.is_enabled() and not reject_button.is_enabled()
        full_page(driver, shots, "approval-request.png")
        comment = driver.find_element(By.CSS_SELECTOR, "textarea, input[name='comment'], "
                                                       "input#element_comment")
        comment.send_keys("the fresh data is what counts here")
        wait.until(lambda d: approve_button.is_enabled())
    except Exception:
        save_screenshot(driver, shots, "models-page-failure.png")
        (shots / "models-page-failure.html").write_text(driver.page_source)
        raise
    finally:
        driver.quit()
    assert os.path.getsize(small) < 250_000
