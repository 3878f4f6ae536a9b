"""A person's approval before a promotion, answered through Airflow's REST API, on the Celery
deployment (``celery_deployment``: scheduler, api-server, Celery worker, PostgreSQL, Redis, the
store in S3 on the moto server).

Two training runs (fast_mlp, one epoch, ``approval: always``) serve the four answers, in order;
the second answer of each run is given after clearing its ``approve`` task (what an operator
does to reconsider: the task asks again):

1. run 1, walked in headless Chromium as a user does it: on the trigger form, bad values
   (epochs 0, then a minimum accuracy of 1.5) are refused with the reason and start no run;
   then the run is triggered from the form. The gate says PROMOTE (no champion yet):
   **reject** (REST API) → nothing registered, no champion, the rejection recorded with who
   and when, the run's note says so; cleared, then **approve** on the Required Actions page
   (which names the dataset version and shows the PASS/FAIL table) → v1 registered and
   promoted, the approver, time and comment in its metadata and model card; the run's note
   (REST API and the run's page) says ``PROMOTE v1``; the train task's log has no ERROR line
   and its ``epoch 1/1`` line outside any collapsed group (REST API and the log page).
   Screenshots of each step go to the test's tmp folder (or $TEST_ARTIFACTS);
2. run 2 (``min_accuracy: 1.0``: the gate REJECTs; a short ``approval_timeout_minutes``): the
   form requires a comment; nobody answers → the **timeout**'s default (reject) applies,
   champion still v1; cleared, then **Approve without a reason** (the REST API does not check
   the form) → the override is refused: the approve task fails, saying why, nothing
   registered; cleared, then **override** with a reason → v2 registered and promoted,
   recorded as an override, which ``registry list`` shows.

The Models page reads the deployment's ``MNIST_STORE`` (the data-triggered scenario's), not
this scenario's store: test_models_page.py walks it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
import requests

from mnist_tasks.config import run_key
from mnist_tasks.registry import Registry
from mnist_tasks.storage import S3Store
from tests.integration.airflow_services import (
    DAG_ID,
    DEPLOYMENT_BUCKET,
    REPO,
    ApiClient,
    CeleryDeployment,
    run_failure_report,
    run_path,
    task_instances,
    task_log,
    wait_for_run,
    wait_until,
)
from tests.integration.browser import (
    artifacts,
    chromium,
    full_page,
    open_logged_in,
    save_failure,
    save_screenshot,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PREFIX = "approval"
RUN_TIMEOUT_S = 15 * 60
TIMEOUT_MINUTES = 0.25  # run 2's request: 15 s, then the scheduler's sweep (every 15 s)
RUN_PARAMETERS = "Run Parameters"  # the trigger form's first section
CONF = {"preset": "fast_mlp", "epochs": 1, "min_accuracy": 0.9, "approval": "always",
        "force": True}


def _trigger(deployment: CeleryDeployment, **conf: Any) -> str:
    body = {**CONF, "source": str(deployment.static_source),
            "store": deployment.store_uri(PREFIX), **conf}
    run = deployment.api.json("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                              json={"logical_date": None, "conf": body})
    return str(run["dag_run_id"])


def _hitl_path(run_id: str) -> str:
    return f"{run_path(DAG_ID, run_id)}/taskInstances/approve/-1/hitlDetails"


def _wait_for_request(deployment: CeleryDeployment, run_id: str) -> dict[str, Any]:
    """Poll until the approve task waits for input; its request (subject, body, options)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        deployment.services.check_alive()
        try:
            tis = task_instances(deployment.api, DAG_ID, run_id)
        except requests.Timeout:  # a busy api-server: ask again
            continue
        state = tis.get("approve", {}).get("state")
        if state == "awaiting_input":
            return dict(deployment.api.json("GET", _hitl_path(run_id)))
        if state in ("success", "failed", "skipped", "upstream_failed") or (
                time.monotonic() > deadline):
            pytest.fail(f"approve is {state!r}, not awaiting input: " + run_failure_report(
                deployment.api, deployment.services, DAG_ID, run_id))
        time.sleep(1)


def _answer(api: ApiClient, run_id: str, choice: str, comment: str | None) -> dict[str, Any]:
    return dict(api.json("PATCH", _hitl_path(run_id), json={
        "chosen_options": [choice], "params_input": {"comment": comment}}))


def _wait(deployment: CeleryDeployment, run_id: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        try:
            wait_for_run(deployment.api, deployment.services, DAG_ID, run_id,
                         deadline - time.monotonic())
            return
        except requests.Timeout:  # a busy api-server: ask again
            continue
        except AssertionError as exc:
            pytest.fail(str(exc))


def _clear_approve(api: ApiClient, run_id: str) -> None:
    """Ask again: clear approve (and register after it), as the UI's "Clear" does."""
    api.json("POST", f"/api/v2/dags/{DAG_ID}/clearTaskInstances", json={
        "dry_run": False, "dag_run_id": run_id, "task_ids": ["approve"],
        "include_downstream": True, "only_failed": False, "reset_dag_runs": True})


def _states(api: ApiClient, run_id: str) -> dict[str, str]:
    tis = task_instances(api, DAG_ID, run_id)
    return {t: tis[t]["state"] for t in ("gate", "approve", "register")}


def _run_record(deployment: CeleryDeployment, run_id: str, name: str) -> dict[str, Any]:
    store = S3Store(DEPLOYMENT_BUCKET, PREFIX, client_kwargs=deployment.s3_client_kwargs)
    return dict(json.loads(store.read_bytes(f"runs/{run_key(run_id)}/{name}")))


def test_approve_reject_timeout_and_override_in_the_ui_and_the_rest_api(
        celery_deployment: CeleryDeployment, tmp_path: Path) -> None:
    deployment = celery_deployment
    registry = Registry(S3Store(DEPLOYMENT_BUCKET, PREFIX,
                                client_kwargs=deployment.s3_client_kwargs))
    started = time.monotonic()
    shots = artifacts(tmp_path)
    driver = chromium(tmp_path / "chromium-profile")
    try:
        run1 = _run_1(deployment, registry, driver, shots)
    except Exception:
        save_failure(driver, shots, "ui-walk-failure")
        raise
    finally:
        driver.quit()
    run1_s = time.monotonic() - started
    _run_2(deployment, registry)
    print(f"\napproval scenarios: run 1 {run1} (the UI walk: trigger form, reject, clear, approve "
          f"on Required Actions, note, log) {run1_s:.0f} s; all "
          f"{time.monotonic() - started:.0f} s; screenshots in {shots}")


def _run_1(deployment: CeleryDeployment, registry: Registry, driver: Any, shots: Path) -> str:
    """Run 1: the gate says PROMOTE (no champion yet); a person rejects, then approves."""
    api = deployment.api
    run1 = _trigger_from_the_form(driver, deployment, shots)
    request = _wait_for_request(deployment, run1)
    assert request["options"] == ["Approve", "Reject"] and request["defaults"] == ["Reject"]
    assert "Promote mnist-classifier" in request["subject"] and run1 in request["subject"]
    body = request["body"]
    dataset_version = _run_record(deployment, run1, "summary.json")["dataset_version"]
    assert body.startswith("### What was trained\n\nPreset **fast_mlp**, 1 epoch, "), body
    assert f"on dataset version **`{dataset_version}`**" in body, body
    assert "### Gate decision: PROMOTE" in body and "approval is 'always'" in body
    assert "| threshold | benchmark | PASS |" in body, body
    assert "### McNemar's test" in body and "### Per-digit recall" in body
    assert "/models/?dag_id=mnist_training&run_id=" in body, body
    # The waiting task holds no worker slot: nothing of this run is running meanwhile.
    assert "running" not in _states(api, run1).values()

    answered = _answer(api, run1, "Reject", "not this week")
    assert answered["responded_by"]["name"] == "admin"
    _wait(deployment, run1)
    assert _states(api, run1) == {"gate": "success", "approve": "success",
                                  "register": "skipped"}
    assert registry.list_versions() == [] and registry.get_alias("champion") is None
    rejected = _run_record(deployment, run1, "approval.json")
    assert rejected["decision"] == "REJECT" and rejected["gate_decision"] == "PROMOTE"
    assert (rejected["approval"]["outcome"], rejected["approval"]["by"],
            rejected["approval"]["comment"]) == ("rejected", "admin", "not this week")
    assert _run_record(deployment, run1, "summary.json")["decision"] == "REJECT"
    # The run's note (set by the DAG's callback) says what happened; waited for before the
    # clear, so this callback cannot land after the next one.
    note = _note(deployment, run1, "approval: rejected by admin")
    assert note.startswith("fast_mlp · 1 epoch · REJECT"), note

    _clear_approve(api, run1)
    _wait_for_request(deployment, run1)
    _approve_on_required_actions(driver, deployment, run1, dataset_version,
                                 "fine for the demo", shots)
    _wait(deployment, run1)
    assert _states(api, run1) == {"gate": "success", "approve": "success",
                                  "register": "success"}
    v1 = registry.version_for_run(run_key(run1))
    assert v1 is not None and v1.version == 1 and registry.get_alias("champion") == 1
    approval = v1.metadata["approval"]
    assert (approval["outcome"], approval["by"], approval["comment"], approval["override"]) == (
        "approved", "admin", "fine for the demo", False), approval
    assert approval["at"] and approval["at"].startswith("20"), approval
    assert v1.gate_decision == "PROMOTE"
    card = registry.store.read_bytes(registry.store.key_of(f"{v1.uri}/model_card.md")).decode()
    assert "## Approval" in card and "fine for the demo" in card and "admin" in card

    note = _note(deployment, run1, "PROMOTE v1")
    assert note.startswith("fast_mlp · 1 epoch · PROMOTE v1 (") and note.endswith(
        " %) · approval: approved by admin"), note
    driver.get(f"{api.base_url}/dags/{DAG_ID}/runs/{quote(run1, safe='')}")
    _page_shows(driver, note)
    save_screenshot(driver, shots, "run-note.png")

    # The train task's log: no ERROR line (TensorFlow's start-up lines are not on stderr), and
    # the epochs at the top level, not inside a collapsed group.
    events = _log_events(api, run1, "train", 0)
    errors = [e for _, e in events if str(e.get("level", "")).lower() in ("error", "critical")]
    assert errors == [], errors
    epochs = [(depth, str(e["event"])) for depth, e in events if "epoch 1/1" in str(e["event"])]
    assert [depth for depth, _ in epochs] == [0], epochs
    driver.get(f"{api.base_url}/dags/{DAG_ID}/runs/{quote(run1, safe='')}/tasks/train/mapped/0")
    _page_shows(driver, "epoch 1/1")
    save_screenshot(driver, shots, "train-log.png")
    return run1


def _run_2(deployment: CeleryDeployment, registry: Registry) -> None:
    """Run 2: the gate REJECTs (min_accuracy 1.0); nobody answers in time, then an override."""
    api = deployment.api
    started = time.monotonic()
    run2 = _trigger(deployment, min_accuracy=1.0, approval_timeout_minutes=TIMEOUT_MINUTES)
    request = _wait_for_request(deployment, run2)
    waited = time.monotonic()
    assert "REJECTED" in request["subject"] and "### Gate decision: REJECT" in request["body"]
    assert "written reason" in request["body"] and "| threshold | benchmark | **FAIL** |" in (
        request["body"])
    # The form requires the comment (Airflow's form disables both answers until it is given).
    schema = request["params"]["comment"]["schema"]
    assert (schema["type"], schema["minLength"]) == ("string", 1), schema
    _wait(deployment, run2)
    timeout_s = time.monotonic() - waited
    assert timeout_s >= TIMEOUT_MINUTES * 60 - 5, timeout_s
    assert _states(api, run2) == {"gate": "success", "approve": "success",
                                  "register": "skipped"}
    timed_out = _run_record(deployment, run2, "approval.json")["approval"]
    assert (timed_out["outcome"], timed_out["by"], timed_out["timed_out"]) == (
        "timed out", None, True), timed_out
    assert registry.get_alias("champion") == 1 and registry.version_for_run(run_key(run2)) is None

    # Approve without a reason (past the form, through the REST API): refused, visibly.
    _clear_approve(api, run2)
    _wait_for_request(deployment, run2)
    _answer(api, run2, "Approve", None)
    with pytest.raises(AssertionError, match="ended as 'failed'"):
        wait_for_run(api, deployment.services, DAG_ID, run2, RUN_TIMEOUT_S)
    assert _states(api, run2) == {"gate": "success", "approve": "failed",
                                  "register": "upstream_failed"}
    refused = _run_record(deployment, run2, "approval.json")["approval"]
    assert refused["outcome"] == "override refused", refused
    log = task_log(api, DAG_ID, run2, "approve",
                   task_instances(api, DAG_ID, run2)["approve"]["try_number"])
    assert "override refused: an override of the gate's REJECT needs a written reason" in log
    assert registry.get_alias("champion") == 1 and registry.version_for_run(run_key(run2)) is None

    _clear_approve(api, run2)
    _wait_for_request(deployment, run2)
    reason = "threshold set too high for this experiment"
    _answer(api, run2, "Approve", reason)
    _wait(deployment, run2)
    v2 = registry.version_for_run(run_key(run2))
    assert v2 is not None and v2.version == 2, run_failure_report(
        api, deployment.services, DAG_ID, run2)
    assert registry.get_alias("champion") == 2
    assert v2.gate_decision == "REJECT" and v2.overridden
    assert (v2.metadata["approval"]["outcome"], v2.metadata["approval"]["comment"]) == (
        "override", reason)
    log = task_log(api, DAG_ID, run2, "approve",
                   task_instances(api, DAG_ID, run2)["approve"]["try_number"])
    assert "APPROVAL override" in log, log[-3000:]

    listing = subprocess.run(
        [sys.executable, "-m", "mnist_tasks.registry", "--store", deployment.store_uri(PREFIX),
         "list"], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**_s3_env(deployment)},
    )
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    row2 = next(line for line in lines if line.split()[:2] == ["*", "2"])
    assert "REJECT" in row2 and "OVERRIDE by admin" in row2, listing.stdout
    assert any(line.startswith("v2 OVERRIDE of the gate's REJECT by admin") and reason in line
               for line in lines), listing.stdout
    print(f"\napproval run 2: the timeout resolved {timeout_s:.0f} s after the request; "
          f"run 2 {time.monotonic() - started:.0f} s")
    print(listing.stdout)


def _run_count(api: ApiClient) -> int:
    return int(api.json("GET", f"/api/v2/dags/{DAG_ID}/dagRuns", params={"limit": 1})[
        "total_entries"])


def _note(deployment: CeleryDeployment, run_id: str, expected: str) -> str:
    """The run's note once it says ``expected`` (the DAG's callback sets it after the run)."""
    def probe() -> str | None:
        note = deployment.api.json("GET", run_path(DAG_ID, run_id)).get("note") or ""
        return note if expected in note else None

    return str(wait_until(deployment.services, f"run {run_id}'s note saying {expected!r}", 120,
                          probe))


def _log_events(api: ApiClient, run_id: str, task_id: str, map_index: int
                ) -> list[tuple[int, dict[str, Any]]]:
    """The latest try's structured log lines, each with its depth in ``::group::`` sections
    (the log page shows depth 0 and collapses the groups)."""
    ti = api.json("GET", f"{run_path(DAG_ID, run_id)}/taskInstances/{task_id}/{map_index}")
    body = api.json(
        "GET", f"{run_path(DAG_ID, run_id)}/taskInstances/{task_id}/logs/{ti['try_number']}",
        params={"full_content": "true", "map_index": map_index},
        headers={"Accept": "application/json"})
    depth, events = 0, []
    for line in body["content"]:
        event = line if isinstance(line, dict) else {"event": str(line)}
        text = str(event.get("event", ""))
        if "::endgroup::" in text:
            depth -= 1
        elif "::group::" in text:
            depth += 1
        else:
            events.append((depth, event))
    return events


# -- the user's walk in the browser ---------------------------------------------------------------


def _dialog(driver: Any) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.NAME, "element_epochs"))
    return driver.find_element(By.CSS_SELECTOR, ".chakra-dialog__content")


def _visible(driver: Any, element: Any) -> Any:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    return element


def _type(driver: Any, field: Any, text: str) -> None:
    """Replace a field's text as a user does (select all, type over it), a key at a time, each
    one checked in the field: the form re-renders while it validates, and a key pressed during
    a re-render can be lost (the rehearsal saw 'celery-sourcs0'), which a user would see and
    press again."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    _visible(driver, field).send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    WebDriverWait(driver, 5).until(lambda d: field.get_attribute("value") == "")
    for i, key in enumerate(text):
        for _ in range(3):
            field.send_keys(key)
            try:
                WebDriverWait(driver, 2).until(
                    lambda d, want=text[:i + 1]: field.get_attribute("value") == want)
                break
            except TimeoutException:
                if field.get_attribute("value") != text[:i]:  # not a lost key: something else
                    raise AssertionError(f"typing {text!r}: the field holds "
                                         f"{field.get_attribute('value')!r}") from None
        else:
            raise AssertionError(f"typing {text!r}: {key!r} never reached the field")


def _field(driver: Any, dialog: Any, name: str, section: str | None = None) -> Any:
    """A form field by its parameter name; its section opened first, as a user does (one
    section is open at a time)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 30)
    if section is not None:
        button = dialog.find_element(By.CSS_SELECTOR, f"button[id$=':{section}']")
        if button.get_attribute("aria-expanded") != "true":
            _visible(driver, button).click()
        wait.until(lambda d: button.get_attribute("aria-expanded") == "true")
    field = dialog.find_element(By.NAME, f"element_{name}")
    if field.get_attribute("type") not in ("hidden", "checkbox"):  # those are drawn otherwise
        wait.until(lambda d: field.is_displayed())
    return field


def _choose(driver: Any, dialog: Any, name: str, value: str, section: str | None = None) -> None:
    """Pick ``value`` in a select field (type it, Enter)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    hidden = _field(driver, dialog, name, section)
    control = hidden.find_element(By.XPATH, "..")
    WebDriverWait(driver, 30).until(lambda d: control.is_displayed())
    box = control.find_element(By.CSS_SELECTOR, "input[type=text]")
    _visible(driver, box).send_keys(value)
    box.send_keys(Keys.ENTER)
    WebDriverWait(driver, 30).until(lambda d: hidden.get_attribute("value") == value)


def _submit(driver: Any) -> None:
    from selenium.webdriver.common.by import By

    # The button's own click handler; a toast from the last refusal may lie over it.
    button = driver.find_element(By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]")
    driver.execute_script("arguments[0].click()", _visible(driver, button))


def _refused(driver: Any, reason: str, folder: Path, shot: str) -> None:
    """Wait for the trigger dialog to show ``reason``; a picture of it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shown = WebDriverWait(driver, 60).until(lambda d: next(
        (e for e in d.find_elements(By.XPATH, f"//*[contains(text(), {json.dumps(reason)})]")
         if e.is_displayed()), None))
    _visible(driver, shown)
    save_screenshot(driver, folder, shot)


def _trigger_from_the_form(driver: Any, deployment: CeleryDeployment, folder: Path) -> str:
    """Refused bad values, then run 1 triggered from the trigger form; its run id."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    api, base = deployment.api, deployment.api.base_url
    open_logged_in(driver, f"{base}/dags/{DAG_ID}")
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(
        By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))[0].click()
    dialog = _dialog(driver)
    before = _run_count(api)

    epochs = _field(driver, dialog, "epochs", RUN_PARAMETERS)
    _type(driver, epochs, "0")
    _submit(driver)
    _refused(driver, "Invalid input for param epochs: 0 is less than the minimum of 1", folder,
             "trigger-form-refused.png")
    assert epochs.get_attribute("value") == "0"  # the form keeps what was typed
    _type(driver, epochs, "1")
    min_accuracy = _field(driver, dialog, "min_accuracy", "Gate")
    _type(driver, min_accuracy, "1.5")
    _submit(driver)
    _refused(driver, "Invalid input for param min_accuracy: 1.5 is greater than the maximum of 1",
             folder, "trigger-form-refused-min-accuracy.png")
    # The refusal comes with the API's answer (400): no run was made.
    assert _run_count(api) == before

    _type(driver, min_accuracy, str(CONF["min_accuracy"]))
    _choose(driver, dialog, "preset", str(CONF["preset"]), RUN_PARAMETERS)
    force = _field(driver, dialog, "force", RUN_PARAMETERS)
    if not force.is_selected():
        _visible(driver, force.find_element(By.XPATH, "./ancestor::label[1]")).click()
    _type(driver, _field(driver, dialog, "source", "Data and store"),
          str(deployment.static_source))
    _type(driver, _field(driver, dialog, "store"), deployment.store_uri(PREFIX))
    _choose(driver, dialog, "approval", str(CONF["approval"]), "Approval")
    full_page(driver, folder, "trigger-form-filled.png")
    _submit(driver)
    # Triggered, the UI opens the new run's page.
    WebDriverWait(driver, 60).until(lambda d: "/runs/" in d.current_url)
    run_id = unquote(driver.current_url.split("/runs/", 1)[1].split("/")[0])
    assert _run_count(api) == before + 1
    conf = api.json("GET", run_path(DAG_ID, run_id))["conf"]
    expected = {**CONF, "source": str(deployment.static_source),
                "store": deployment.store_uri(PREFIX)}
    assert {k: conf.get(k) for k in expected} == expected, conf
    return run_id


def _approve_on_required_actions(driver: Any, deployment: CeleryDeployment, run_id: str,
                                 dataset_version: str, comment: str, folder: Path) -> None:
    """The request as its page shows it, answered there: Approve, with a comment."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 60)
    driver.get(f"{deployment.api.base_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}"
               "/tasks/approve/required_actions")
    body = wait.until(ec.presence_of_element_located(
        (By.XPATH, "//*[normalize-space()='What was trained']/..")))
    text = " ".join(body.text.split())
    assert f"on dataset version {dataset_version}" in text, text
    assert "Preset fast_mlp, 1 epoch" in text, text
    assert text.index("What was trained") < text.index("Gate decision: PROMOTE"), text
    cells = [c.text for c in body.find_elements(By.CSS_SELECTOR, "table td")]
    assert "PASS" in cells and "FAIL" not in cells, cells
    full_page(driver, folder, "required-action.png")
    _type(driver, driver.find_element(By.CSS_SELECTOR, "textarea, input[name='comment'], "
                                                "input#element_comment"), comment)
    approve = driver.find_element(By.CSS_SELECTOR, "[data-testid='hitl-option-Approve']")
    wait.until(lambda d: approve.is_enabled())
    _visible(driver, approve).click()
    wait_until(deployment.services, "the answer from the Required Actions page", 60,
               lambda: deployment.api.json("GET", _hitl_path(run_id))["response_received"])
    save_screenshot(driver, folder, "required-action-answered.png")


def _page_shows(driver: Any, text: str, timeout: float = 60) -> None:
    """Wait until the page shows ``text``, scrolling its scrolled boxes (the log page draws
    only the lines in view) a screen at a time."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d: Any) -> bool:
        if text in d.find_element(By.TAG_NAME, "body").text:
            return True
        d.execute_script(
            "for (const e of document.querySelectorAll('*')) {"
            " if (e.scrollHeight > e.clientHeight + 4 && e.clientHeight > 200"
            "     && getComputedStyle(e).overflowY !== 'visible')"
            "  e.scrollTop += e.clientHeight * 0.8; }")
        return False

    WebDriverWait(driver, timeout, poll_frequency=0.5).until(shown)


def _s3_env(deployment: CeleryDeployment) -> dict[str, str]:
    import os

    kwargs = deployment.s3_client_kwargs
    return {**os.environ, "AWS_ENDPOINT_URL_S3": kwargs["endpoint_url"],
            "AWS_ACCESS_KEY_ID": kwargs["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": kwargs["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": kwargs["region_name"]}
