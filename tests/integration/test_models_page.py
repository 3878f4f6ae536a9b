"""The "Models" page plugin in a real Airflow api-server, over HTTP and in headless Chromium.

One api-server (SQLite metadata DB, simple auth manager with a known admin) reads a registry in
S3 (the moto server over HTTP) that holds two versions; the second was registered by a real
(queued) run of ``mnist_training``. Checked: requests without a session are refused (401 or a
redirect to the login page), the JSON listing and files with a token, and in Chromium: log in
through Airflow's login form, open "Models" from the navigation bar, see the versions, open
the "Model" tab of the DAG run and see the version it registered. Screenshots go to the test's
tmp folder (or to $TEST_ARTIFACTS when set), with a shrunk copy of the Models page; that copy
replaces the README's docs/models-page.png only with UPDATE_SCREENSHOTS=1, so `make test`
leaves the work tree clean.

Needs Debian's ``chromium`` and ``chromium-driver`` packages (``make test-deps`` installs them)
and ``selenium`` from PyPI.
"""

from __future__ import annotations

import io
import json
import os
import shutil
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

from mnist_tasks.config import run_key
from mnist_tasks.registry import Registry
from mnist_tasks.storage import S3Store, Store
from tests.helpers import seed_airflow_home
from tests.integration.airflow_services import REPO, ApiClient, Services, airflow_env, free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

BUCKET = "models-page"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS_SCREENSHOT = REPO / "docs" / "models-page.png"
OLD_RUN_ID = "manual__2026-11-14T09:00:00+00:00"
CONFUSIONS = {0: (6, 5), 1: (7, 8), 2: (7, 8), 3: (5, 8), 4: (9, 6), 5: (3, 8), 6: (0, 5),
              7: (2, 9), 8: (3, 5), 9: (4, 7)}


@dataclass(frozen=True)
class Deployment:
    base_url: str
    api: ApiClient
    run_id: str  # the DAG run that registered version 2
    services: Services

UNCHANGED_RUN_ID = "scheduled__2026-11-22T00:00:00+00:00"


def _register(store: Store, run_id: str, accuracy: float, work: Path) -> int:
    """Register a version the way the register stage lays it out, with a tiny Keras model."""
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
        assert _register(store, run["dag_run_id"], 0.9791, home / "v2") == 2
        _scored_history(store, 2)
        # A run that stopped at check: its inputs were version 2's.
        store.write_bytes(f"runs/{run_key(UNCHANGED_RUN_ID)}/summary.json", json.dumps(
            {"run_id": UNCHANGED_RUN_ID, "decision": "UNCHANGED", "covered_by": 2}).encode())
        yield Deployment(base_url, api, run["dag_run_id"], services)
    finally:
        services.stop()
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": [
            {"Key": o["Key"]} for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        ]})
        client.delete_bucket(Bucket=BUCKET)
        shutil.rmtree(home, ignore_errors=True)


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


def _chromium(user_data_dir: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing: `make test-deps` installs Debian's "
                    "chromium and chromium-driver", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", f"--user-data-dir={user_data_dir}",
                 "--no-proxy-server"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def _artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: $TEST_ARTIFACTS if set (CI keeps it), else the test's tmp folder."""
    folder = Path(os.environ.get("TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _save_screenshot(driver: Any, folder: Path, name: str) -> Path:
    path = folder / name
    driver.save_screenshot(str(path))
    return path


def _save_docs_copy(png: Path) -> Path:
    """A small copy for the README: the same picture with a 64-colour palette, beside ``png``;
    with UPDATE_SCREENSHOTS=1 it also replaces docs/models-page.png."""
    from PIL import Image

    with Image.open(png) as image:
        buffer = io.BytesIO()
        image.convert("RGB").quantize(colors=64).save(buffer, format="PNG", optimize=True)
    small = png.with_name(f"{png.stem}-small.png")
    small.write_bytes(buffer.getvalue())
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(small, DOCS_SCREENSHOT)
    return small


def _log_in(driver: Any, username: str, password: str, tries: int = 3) -> None:
    """Fill in and send Airflow's login form until the browser leaves it. On a busy machine
    the form can be shown before its script is ready, and then a click (or the text typed)
    is lost; the form is filled in again and sent again, up to ``tries`` times."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for attempt in range(1, tries + 1):
        for name, value in (("username", username), ("password", password)):
            field = driver.find_element(By.NAME, name)
            field.clear()
            field.send_keys(value)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        try:
            WebDriverWait(driver, 20).until(lambda d: "/auth/login" not in d.current_url)
            return
        except TimeoutException:
            if attempt == tries:
                raise AssertionError(f"still on the login form after {tries} tries: "
                                     f"{driver.current_url}") from None


def test_models_page_in_chromium(deployment: Deployment, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    artifacts = _artifacts(tmp_path)
    driver = _chromium(tmp_path / "chromium-profile")
    wait = WebDriverWait(driver, 60)
    try:
        # Not logged in: the Models page sends the browser to Airflow's login form.
        driver.get(f"{deployment.base_url}/models/")
        wait.until(ec.presence_of_element_located((By.NAME, "username")))
        assert "/auth/login" in driver.current_url
        _log_in(driver, "admin", "admin-password")

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
        assert "PROMOTE" in rows[1].text and "0.9712" in rows[1].text
        image = driver.find_element(By.CSS_SELECTOR, "#detail img")
        wait.until(lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", image))
        assert "Intended use" in driver.find_element(By.CSS_SELECTOR, "article.card").text
        # The version's batches over time: the monitoring plot, and each batch's status.
        plot = driver.find_element(By.CSS_SELECTOR, "img.monitoring")
        wait.until(lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 600", plot))
        statuses = [c.text.split()[0] for c in driver.find_elements(
            By.CSS_SELECTOR, "table.scored td[class^='monitor-']")]
        assert statuses.count("ALARM") == 3 and statuses.count("WARN") == 2, statuses
        driver.switch_to.default_content()
        time.sleep(1)  # let the nav settle before the picture
        shot = _save_screenshot(driver, artifacts, "models-page.png")
        small = _save_docs_copy(shot)

        # The DAG run's "Model" tab shows the version that run registered.
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
        _save_screenshot(driver, artifacts, "models-page-dag-run.png")
    except Exception:
        _save_screenshot(driver, artifacts, "models-page-failure.png")
        (artifacts / "models-page-failure.html").write_text(driver.page_source)
        raise
    finally:
        driver.quit()
    assert os.path.getsize(small) < 250_000
