"""Two commits of one batch and version overlapping, on a local store and on S3 over HTTP.

Two runs stage the same batch; the second run's predictions differ in the last digits (as a
device's non-deterministic kernels can make them), so a file of one run under a manifest of
the other would show. The first commit is held at a step through its hook (before it writes
its files, or before its manifest) while the second commits fully; then the first goes on.
Either way the manifest's SHA-256s match the files it names, nothing else is left, and the
version's summary has the batch once, as the winner committed it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mnist_tasks import score, scoring_index
from mnist_tasks.artifacts import load_npz, save_npz
from mnist_tasks.idx import encode_idx
from mnist_tasks.registry import Registry
from mnist_tasks.scoring_batches import write_batch
from mnist_tasks.scoring_outputs import output_key, output_prefix, read_manifest, read_output
from mnist_tasks.storage import Store
from tests.helpers import synthetic_digits

COLUMNS = ("predicted", "probability", "runner_up", "runner_up_probability")


def _staged_by_two_runs(store: Store, model_file: Path) -> tuple[score.ScoringConfig, list[str]]:
    landing = store.child("landing")
    registry = Registry(store)
    registry.register("run-a", {"model.keras": model_file}, {})
    registry.promote(1)
    write_batch(landing, "b001", {"a-idx3-ubyte": encode_idx(synthetic_digits(12)[0])})
    cfg = score.ScoringConfig(landing=landing.uri, shard_size=5)
    staging = []
    for run in ("run1", "run2"):
        planned = score.plan(cfg, store, landing, run, batches=["b001"])
        prepared = score.prepare(cfg, store, landing, planned)
        for shard in prepared.shards:
            score.score_shard(cfg, store, shard)
        staging.append(prepared.shards[0].staging)
    key = f"{staging[1]}/shard-00000.npz"
    arrays = load_npz(store, key, COLUMNS, optional=("score_s",))
    arrays["probability"] = arrays["probability"] * 0.999
    save_npz(store, key, arrays)
    return cfg, staging


@pytest.mark.parametrize("held_at", ["write", "publish"])
def test_overlapping_commits_never_mix(store: Store, model_file: Path, held_at: str) -> None:
    cfg, staging = _staged_by_two_runs(store, model_file)
    second: list[score.BatchCommit] = []

    def hold(step: str) -> None:  # the first commit, held here: the second one runs fully
        if step == held_at and not second:
            second.append(score.commit_batch(cfg, store, "b001", 1, staging[1],
                                             run_id="run2", run_key="run2"))

    first = score.commit_batch(cfg, store, "b001", 1, staging[0], run_id="run1",
                               run_key="run1", hook=hold)

    assert second[0].committed and not first.committed
    manifest = read_manifest(store, cfg, "b001", 1)
    assert manifest["run_id"] == "run2" and first.manifest["commit"] == manifest["commit"]
    prefix = output_prefix(cfg, "b001", 1)
    for name, entry in manifest["files"].items():
        data = store.read_bytes(output_key(cfg, manifest, name))
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert len(data) == entry["size"]
    assert read_output(store, cfg, "b001", 1, "predictions.csv")  # checks the hash too
    # Nothing but the winner's files and the manifest: the loser removed its own.
    assert sorted(store.list(prefix)) == sorted(
        [f"{prefix}/MANIFEST.json"] + [f"{prefix}/{e['path']}"
                                       for e in manifest["files"].values()])
    rows = scoring_index.scored_batches(store)[1]
    assert [(r["batch"], r["run_id"]) for r in rows] == [("b001", "run2")]
