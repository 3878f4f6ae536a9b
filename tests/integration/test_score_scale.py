"""What reading the scoring outputs costs on S3 over HTTP does not grow with history.

The requests of a landing check with nothing new (an interval run's plan) and of the Models
page's scored batches are counted (a botocore ``before-send`` hook) after few and after many
scored batches, generated directly (landing folders with their marker, manifests added to the
summaries through the commit's own code path). Counts, not times: bench/score_scale.py times
them at 10,000 and 20,000 batches.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from mnist_tasks import score, scoring_index
from mnist_tasks.registry import Registry
from mnist_tasks.scoring_outputs import output_prefix
from mnist_tasks.storage import S3Store
from tests.helpers import TEST_BUCKET

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "mnist_models.py"


def _scored_store(prefix: str, n: int) -> tuple[score.ScoringConfig, S3Store, S3Store]:
    store = S3Store(TEST_BUCKET, prefix)
    landing = store.child("landing")
    assert isinstance(landing, S3Store)
    registry = Registry(store)
    registry.register("run-a", {"model.keras": b"not a model: never loaded here"}, {})
    registry.promote(1)
    cfg = score.ScoringConfig(landing=landing.uri)
    manifests = []
    for i in range(n):
        batch = f"2026-{i:05d}"
        landing.write_bytes(f"{batch}/a-idx3-ubyte", b"x")
        landing.write_marker(batch)
        manifest = {"batch": batch, "model_name": cfg.model_name, "model_version": 1,
                    "counts": {"images": 10, "skipped_files": 0}, "report": {},
                    "run_id": "r0", "created_at": "2026-11-22T03:00:00+00:00"}
        store.write_bytes(f"{output_prefix(cfg, batch, 1)}/MANIFEST.json",
                          json.dumps(manifest).encode())
        manifests.append(manifest)
    scoring_index.record_scored(store, manifests)
    score.plan(cfg, store, landing, "first")  # the first look lists everything (a sweep)
    return cfg, store, landing


def _requests(stores: list[S3Store], fn: Any) -> int:
    """The HTTP requests ``fn`` sends through the clients of ``stores`` (each counted once)."""
    sent: list[str] = []

    def count(**_: Any) -> None:
        sent.append("")

    clients = {id(s.client): s.client for s in stores}.values()
    for client in clients:
        client.meta.events.register("before-send.s3", count)
    try:
        fn()
    finally:
        for client in clients:
            client.meta.events.unregister("before-send.s3", count)
    return len(sent)


def test_a_landing_check_with_nothing_new_costs_the_same_after_many_batches(s3_env: str) -> None:
    counts = []
    for n in (8, 40):  # both more than the re-score window (5): it is looked at each time
        cfg, store, landing = _scored_store(f"s{n}", n)
        counts.append(_requests([store, landing], lambda: score.plan(
            cfg, store, landing, "check").batches))  # noqa: B023
    assert counts[0] == counts[1], counts


def test_the_pages_scored_batches_cost_the_same_after_many_batches(s3_env: str) -> None:
    spec = importlib.util.spec_from_file_location("mnist_models_plugin", PLUGIN)
    assert spec and spec.loader
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    counts = []
    for n in (3, 40):
        _, store, _ = _scored_store(f"p{n}", n)
        reg = Registry(store)
        assert len(plugin._scored(reg.store, reg.model_name)[1]) == n
        counts.append(_requests([store], lambda: plugin._scored(reg.store, reg.model_name)))  # noqa: B023
    assert counts == [2, 2], counts  # the summaries' listing and one summary
