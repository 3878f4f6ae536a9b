"""``pipeline.recent_runs``: the Models page's list of runs, newest first, bounded in reads."""

from __future__ import annotations

import json
from pathlib import Path

from mnist_tasks.config import run_key
from mnist_tasks.pipeline import recent_runs
from mnist_tasks.storage import LocalStore


def _summary(store: LocalStore, run_id: str, **fields: object) -> None:
    store.write_bytes(f"runs/{run_key(run_id)}/summary.json",
                      json.dumps({"run_id": run_id, **fields}).encode())


def test_newest_runs_first_whatever_their_kind_and_only_as_many_as_asked(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    _summary(store, "scheduled__2026-11-22T00:00:00+00:00", decision="UNCHANGED")
    _summary(store, "manual__2026-11-23T10:00:00+00:00", decision="REJECT")
    _summary(store, "asset_triggered__2026-11-24T08:00:00+00:00", decision="PROMOTE")
    store.write_bytes(f"runs/{run_key('manual__2026-11-25T09:00:00+00:00')}/train/x", b"")
    # An old run's unreadable summary is never read when it is beyond the limit.
    store.write_bytes(f"runs/{run_key('manual__2026-10-01T00:00:00+00:00')}/summary.json",
                      b"not json")

    runs = recent_runs(store, limit=4)
    assert [r["decision"] for r in runs] == ["PROMOTE", "REJECT", "UNCHANGED"]  # no summary: out
    assert runs[0]["run_key"] == run_key("asset_triggered__2026-11-24T08:00:00+00:00")
    assert [r["decision"] for r in recent_runs(store, limit=2)] == ["PROMOTE"]  # 2 reads
    # With the old run in reach, its bad summary is left out, not an error.
    assert len(recent_runs(store, limit=10)) == 3
    assert recent_runs(LocalStore(tmp_path / "empty")) == []
