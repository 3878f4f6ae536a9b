"""The scoring DAG under the scheduler, in the Celery deployment: started by events only.

The deployment (conftest.py) runs ``mnist_batch_scoring`` unpaused, on the store
``MNIST_SCORING_STORE`` (its own prefix), with landing events (``MNIST_LANDING_EVENTS``): no
interval, so only asset events start it, a registry event or the watch's announcement of a
landed batch (whose marker's PUT the bucket notifies to the SQS queue):

1. a batch of 300 real MNIST test images lands: its event starts a scoring run, which finds no
   champion yet and scores nothing;
2. a training run (the fast preset, the static source, the scoring store) registers v1; its
   register task's ``mnist_model_registry`` event starts a scoring run, with nothing triggered
   by hand, which pins v1 from the event and scores the batch;
3. a second version is registered and promoted with the registry CLI's ``--notify-airflow``:
   its event starts a run that re-scores the batch with v2, beside the v1 output;
4. ``rollback --notify-airflow``: a run pinned to v1 from the event, which finds the batch
   already scored with v1 and does nothing (the output is never rewritten).

Then the monitoring loop closes under the scheduler, with no one copying files or triggering
a run: a batch of held-back training images lands, and its event starts the run that scores it
with the champion; labels for it land as feedback; the feedback DAG merges them and lands the
labelled images as an increment in the deployment's source (in S3); its marker's event starts
the watch, which announces it; the scheduler starts ``mnist_training`` on that asset event; and
the version it registers names the feedback increment (and so the batch) in its lineage.
Nothing polled: every watch and scoring run was started by an asset event.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from mnist_tasks import score, scoring_index
from mnist_tasks.config import run_key
from mnist_tasks.idx import decompress, encode_idx, parse_idx
from mnist_tasks.increment_files import discover
from mnist_tasks.registry import Registry
from mnist_tasks.scoring_batches import write_batch
from mnist_tasks.scoring_outputs import is_committed, output_prefix
from mnist_tasks.storage import S3Store
from tests.integration.airflow_services import (
    DAG_ID,
    DEPLOYMENT_BUCKET,
    FEEDBACK_DAG_ID,
    REPO,
    SCORING_DAG_ID,
    SCORING_PREFIX,
    WATCH_DAG_ID,
    WATCHED_PREFIX,
    ApiClient,
    CeleryDeployment,
    task_instances,
    wait_for_run,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

RUN_TIMEOUT_S = 15 * 60
BATCH = "2026-11-22-celery"
N = 300


def _scoring_runs(api: ApiClient) -> list[dict[str, Any]]:
    body = api.json("GET", f"/api/v2/dags/{SCORING_DAG_ID}/dagRuns",
                    params={"order_by": "run_after", "limit": 100})
    return list(body["dag_runs"])


def _watch_events(api: ApiClient, task_id: str) -> list[dict[str, Any]]:
    """The watch's asset events from one land task (land: increments; land_batches)."""
    body = api.json("GET", "/api/v2/assets/events",
                    params={"source_dag_id": WATCH_DAG_ID, "order_by": "timestamp"})
    return [e for e in body["asset_events"] if e["source_task_id"] == task_id]


def _nothing_polled(api: ApiClient) -> None:
    """Every watch and scoring run so far was started by an asset event (none by an interval,
    none by hand)."""
    for dag_id in (WATCH_DAG_ID, SCORING_DAG_ID):
        runs = api.json("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100})
        assert {r["run_type"] for r in runs["dag_runs"]} == {"asset_triggered"}, (dag_id, runs)


def _next_event_run(deployment: CeleryDeployment, seen: set[str]) -> dict[str, Any]:
    """Wait for a new asset-triggered scoring run to start, then for it to finish."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        deployment.services.check_alive()
        new = [r for r in _scoring_runs(deployment.api)
               if r["run_type"] == "asset_triggered" and r["dag_run_id"] not in seen]
        if new:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"no asset-triggered {SCORING_DAG_ID} run within {RUN_TIMEOUT_S} s\n"
                        f"{deployment.services.all_logs(2500)}")
        time.sleep(2)
    run_id = new[0]["dag_run_id"]
    seen.add(run_id)
    try:
        return wait_for_run(deployment.api, deployment.services, SCORING_DAG_ID, run_id,
                            RUN_TIMEOUT_S)
    except AssertionError as exc:
        pytest.fail(str(exc))


def _registry_cli(deployment: CeleryDeployment, *args: str) -> str:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": deployment.s3_endpoint,
           "MNIST_AIRFLOW_USERNAME": "admin", "MNIST_AIRFLOW_PASSWORD": "admin-password",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    out = subprocess.run(
        [sys.executable, "-m", "mnist_tasks.registry", "--store",
         deployment.store_uri(SCORING_PREFIX), *args,
         "--notify-airflow", deployment.api.base_url],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_registry_events_start_scoring_with_nothing_triggered_by_hand(
    celery_deployment: CeleryDeployment,
) -> None:
    deployment, api = celery_deployment, celery_deployment.api
    store = S3Store(DEPLOYMENT_BUCKET, SCORING_PREFIX,
                    client_kwargs=deployment.s3_client_kwargs)
    registry = Registry(store)
    cfg = score.ScoringConfig(landing=store.uri_for("landing"))
    images = deployment.mnist_dir / "t10k-images-idx3-ubyte.gz"
    x = parse_idx(decompress(images.read_bytes(), source=str(images)), source=str(images))[:N]
    landing = S3Store(DEPLOYMENT_BUCKET, f"{SCORING_PREFIX}/landing",
                      client_kwargs=deployment.s3_client_kwargs)
    seen = {r["dag_run_id"] for r in _scoring_runs(api)}
    write_batch(landing, BATCH, {"batch-idx3-ubyte.gz": gzip.compress(encode_idx(x))})

    # 1. Its marker's event: the watch announces the batch, which starts scoring; no champion.
    landed = _next_event_run(deployment, seen)
    assert [e["extra"] for e in _watch_events(api, "land_batches")] == [
        {"batches": [BATCH], "landing": cfg.landing}]
    plan = task_instances(api, SCORING_DAG_ID, landed["dag_run_id"])["plan"]
    assert plan["state"] == "skipped", plan

    # 2. A training run registers v1; its asset event starts scoring.
    run = api.json("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json={
        "logical_date": None,
        "conf": {"preset": "fast_mlp", "epochs": 1, "min_accuracy": 0.9,
                 "source": str(deployment.static_source),
                 "store": deployment.store_uri(SCORING_PREFIX)}})
    wait_for_run(api, deployment.services, DAG_ID, run["dag_run_id"], RUN_TIMEOUT_S)
    assert registry.get_alias("champion") == 1
    first = _next_event_run(deployment, seen)
    planned = json.loads(store.read_bytes(
        f"scoring/mnist-classifier/runs/{run_key(first['dag_run_id'])}/plan.json"))
    assert (planned["model_version"], planned["resolved_from"]) == (1, "event")
    assert planned["batches"] == [BATCH]
    assert is_committed(store, cfg, BATCH, 1)
    scored = scoring_index.scored_batches(store)[1][0]
    assert scored["images"] == N and scored["run_id"] == first["dag_run_id"]

    # 3. v2 promoted through the CLI, which posts the event: re-scored beside v1.
    with tempfile.TemporaryDirectory() as tmp:
        model = registry.fetch_model(1, tmp)
        registry.register("celery-scoring-v2", {"model.keras": Path(model)}, {})
    assert "champion -> v2 (was v1); asset event" in _registry_cli(deployment, "promote", "2")
    second = _next_event_run(deployment, seen)
    assert second["state"] == "success"
    assert is_committed(store, cfg, BATCH, 2) and is_committed(store, cfg, BATCH, 1)
    v1_manifest = store.read_bytes(f"{output_prefix(cfg, BATCH, 1)}/MANIFEST.json")

    # 4. Rolled back: a run pinned to v1 from the event; already scored, nothing rewritten.
    assert "champion -> v1 (was v2); asset event" in _registry_cli(deployment, "rollback")
    third = _next_event_run(deployment, seen)
    planned = json.loads(store.read_bytes(
        f"scoring/mnist-classifier/runs/{run_key(third['dag_run_id'])}/plan.json"))
    assert (planned["model_version"], planned["resolved_from"]) == (1, "event")
    assert planned["batches"] == [] and planned["skipped"] == {BATCH: "already scored with v1"}
    assert store.read_bytes(f"{output_prefix(cfg, BATCH, 1)}/MANIFEST.json") == v1_manifest


LOOP_BATCH = "2026-12-05-loop"
LOOP_N = 2000


def _read_mnist(deployment: CeleryDeployment, name: str) -> Any:
    path = deployment.mnist_dir / name
    return parse_idx(decompress(path.read_bytes(), source=str(path)), source=str(path))


def test_feedback_closes_the_loop_under_the_scheduler(celery_deployment: CeleryDeployment) -> None:
    deployment, api = celery_deployment, celery_deployment.api
    kwargs = deployment.s3_client_kwargs
    store = S3Store(DEPLOYMENT_BUCKET, SCORING_PREFIX, client_kwargs=kwargs)
    cfg = score.ScoringConfig(landing=store.uri_for("landing"))
    champion = Registry(store).get_alias("champion")
    assert champion is not None, "the scoring scenario above registers the champion"

    # 1. Held-back training images (make-demo's base stops at 50,000), scored by the champion.
    x = _read_mnist(deployment, "train-images-idx3-ubyte.gz")[50_000:50_000 + LOOP_N]
    y = _read_mnist(deployment, "train-labels-idx1-ubyte.gz")[50_000:50_000 + LOOP_N]
    landing = S3Store(DEPLOYMENT_BUCKET, f"{SCORING_PREFIX}/landing", client_kwargs=kwargs)
    seen = {r["dag_run_id"] for r in _scoring_runs(api)}
    write_batch(landing, LOOP_BATCH, {"a-idx3-ubyte": encode_idx(x)})
    run = _next_event_run(deployment, seen)  # started by the batch's landing event
    assert is_committed(store, cfg, LOOP_BATCH, champion)
    [row] = [r for r in scoring_index.scored_batches(store)[champion] if r["batch"] == LOOP_BATCH]
    assert row["run_id"] == run["dag_run_id"], row

    # 2. Labels come back for every image, and the feedback DAG is switched on.
    rows = "".join(f"a-idx3-ubyte#{i},{label}\n" for i, label in enumerate(y.tolist()))
    feedback = S3Store(DEPLOYMENT_BUCKET, f"{SCORING_PREFIX}/feedback", client_kwargs=kwargs)
    feedback.write_bytes(f"{LOOP_BATCH}/labels.csv", ("image_id,label\n" + rows).encode())
    feedback.write_marker(LOOP_BATCH)
    api.json("PATCH", f"/api/v2/dags/{FEEDBACK_DAG_ID}", json={"is_paused": False})

    # 3. The feedback DAG lands the labelled images as an increment in the source.
    source = deployment.source_uri
    [increment] = wait_until(
        deployment.services, "the feedback increment in the source", 4 * 60,
        lambda: [ref for ref in discover(source, client_kwargs=kwargs).complete
                 if ref.id.startswith("feedback-")])
    assert increment.id.startswith(f"feedback-{LOOP_BATCH}-"), increment.id

    # 4. The watch announces it, and the scheduler starts a training run on the asset event.
    def asset_runs() -> list[dict[str, Any]]:
        body = api.json("GET", f"/api/v2/dags/{DAG_ID}/dagRuns",
                        params={"run_type": "asset_triggered", "order_by": "run_after"})
        return list(body["dag_runs"])

    [training] = wait_until(deployment.services, "an asset-triggered mnist_training run",
                            180, asset_runs)
    events = _watch_events(api, "land")
    assert [e["extra"]["increments"] for e in events] == [[increment.id]], events
    wait_for_run(api, deployment.services, DAG_ID, training["dag_run_id"], RUN_TIMEOUT_S)

    # 5. The version it registered was trained on the feedback increment.
    registry = Registry(S3Store(DEPLOYMENT_BUCKET, WATCHED_PREFIX, client_kwargs=kwargs))
    info = registry.version_for_run(run_key(training["dag_run_id"]))
    assert info is not None and info.gate_decision == "PROMOTE", info
    [trained_on] = info.metadata["lineage"]["increments"]
    assert trained_on["id"] == increment.id, trained_on
    assert trained_on["train"] > 0 and trained_on["fresh"] > 0, trained_on
    _nothing_polled(api)
