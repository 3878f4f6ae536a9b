"""The scoring commit against S3 over HTTP, with the server stopping mid-commit.

A batch is planned, prepared and scored in shards; then the commit starts, and the S3 endpoint
goes away right after the predictions object is written (its reply is lost, and the proxy in
front of the server stops, so every later request fails). Readers see no output of the batch
(no manifest: :func:`scoring_index.scored_batches` is empty); the retry, with the endpoint back,
commits the output (its own folder; the stopped try's file is deleted), and a second retry
does nothing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from mnist_tasks import score, scoring_index
from mnist_tasks.idx import encode_idx
from mnist_tasks.registry import Registry
from mnist_tasks.scoring_batches import write_batch
from mnist_tasks.scoring_outputs import output_prefix, read_manifest, read_output
from mnist_tasks.storage import S3Store, StorageError
from tests.helpers import TEST_BUCKET, synthetic_digits
from tests.integration.s3_fault_proxy import S3FaultProxy


def test_s3_going_away_mid_commit_leaves_nothing_visible_and_the_retry_completes(
    s3_env: str, model_file: Path,
) -> None:
    store, landing = S3Store(TEST_BUCKET, "store"), S3Store(TEST_BUCKET, "landing")
    registry = Registry(store)
    registry.register("run-a", {"model.keras": model_file}, {})
    registry.promote(1)
    write_batch(landing, "b001", {"a-idx3-ubyte": encode_idx(synthetic_digits(30)[0])})
    cfg = score.ScoringConfig(landing=landing.uri, shard_size=10)
    planned = score.plan(cfg, store, landing, "run1")
    prepared = score.prepare(cfg, store, landing, planned)
    scored = [score.score_shard(cfg, store, s) for s in prepared.shards]
    assert len(scored) == 3

    proxy = S3FaultProxy(s3_env).start()
    stopped = threading.Event()

    def server_goes_away(request) -> bool:  # type: ignore[no-untyped-def]
        if request.method == "PUT" and request.path.endswith("/predictions.csv"):
            threading.Thread(target=lambda: (proxy.stop(), stopped.set())).start()
            return True  # applied by the server; the reply is lost
        return False

    proxy.drop_reply_once(server_goes_away)
    client = boto3.client("s3", endpoint_url=proxy.url,
                          config=Config(retries={"total_max_attempts": 2, "mode": "standard"}))
    flaky = S3Store(TEST_BUCKET, "store", client=client)
    with pytest.raises(StorageError):
        score.commit(cfg, flaky, planned, None, scored)
    assert stopped.wait(10) and proxy.dropped

    out = output_prefix(cfg, "b001", 1)
    landed = [k for k in store.list(out) if k.endswith("/predictions.csv")]
    assert len(landed) == 1  # the write landed, in the try's own folder ...
    assert not store.exists(f"{out}/MANIFEST.json")  # ... but no reader sees it
    assert scoring_index.scored_batches(store) == {}

    done = score.commit(cfg, store, planned, None, scored)  # the retry, the endpoint back
    assert done.committed == ("b001",) and done.images == 30
    manifest = read_manifest(store, cfg, "b001", 1)
    assert manifest["counts"] == {"files": 1, "images": 30, "skipped_files": 0, "shards": 3}
    assert read_output(store, cfg, "b001", 1, "predictions.csv")  # matches its SHA-256
    assert landed[0] not in store.list(out)  # the stopped try's file, named by no manifest
    assert [r["images"] for r in scoring_index.scored_batches(store)[1]] == [30]
    assert not store.list(f"{score._root(cfg)}/staging")
    again = score.commit(cfg, store, planned, None, scored)
    assert again.committed == () and again.unchanged == ("b001",)
