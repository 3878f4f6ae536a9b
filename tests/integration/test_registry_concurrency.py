"""32 registrations at once, on file:// and on S3 over HTTP: distinct versions, no lost updates.

Each thread registers its own run and then promotes its version to champion by
compare-and-swap. What we assert:

* versions: the 32 runs get 32 distinct numbers, exactly 1..32 (losers of a claim race take the
  next number, so there are no gaps without crashes), every one visible and intact, and each
  run's record points at its own version;
* the alias: every promote either returned (it moved the alias) or raised AliasConflict after
  its bounded retries (no other error). The alias history then holds exactly one ``set`` entry
  for each promote that returned, and none for the others (no lost update, no phantom one),
  with ``seq`` 1..n without gaps; the alias points at the last entry's version, which is
  visible; and the rollback stack is the history's earlier versions in order.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import pytest

from mnist_tasks.registry import Registry
from mnist_tasks.registry_api import CHAMPION, AliasConflict
from mnist_tasks.storage import S3Store, Store

N_RUNS = 32


@pytest.mark.timeout(300)
def test_concurrent_registrations_and_promotions(store: Store) -> None:
    if isinstance(store, S3Store):
        _ = store.client  # build the (thread-safe) boto3 client once, before the threads
    # A timeout turns a thread that died before a barrier into an error, not a hang.
    start, promote = threading.Barrier(N_RUNS, timeout=120), threading.Barrier(N_RUNS, timeout=120)
    versions: dict[str, int] = {}
    promoted: set[int] = set()
    conflicts: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        run_key = f"run-{i:02d}"
        registry = Registry(store)
        files = {"model.keras": f"weights of {run_key}".encode(),
                 "metrics.json": json.dumps({"run": run_key}).encode()}
        meta: dict[str, Any] = {"run": {"run_id": run_key}, "metrics": {"test_accuracy": 0.9}}
        try:
            start.wait()
            version = registry.register(run_key, files, meta).version
            with lock:
                versions[run_key] = version
            promote.wait()  # all promotions race at once
            try:
                record = registry.promote(version)
                assert record.version == version
                with lock:
                    promoted.add(version)
            except AliasConflict:
                with lock:
                    conflicts.append(version)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N_RUNS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    registry = Registry(store)
    assert sorted(versions.values()) == list(range(1, N_RUNS + 1))
    visible = registry.list_versions()
    assert [v.version for v in visible] == list(range(1, N_RUNS + 1))
    for info in visible:
        assert versions[info.run_key] == info.version
        assert registry.version_for_run(info.run_key) == info
        model = store.read_bytes(store.key_of(info.model_uri))
        assert model == f"weights of {info.run_key}".encode()

    assert promoted, "at least one promotion must succeed"
    assert promoted.isdisjoint(conflicts) and len(promoted) + len(conflicts) == N_RUNS
    record = registry.alias_record(CHAMPION)
    assert record is not None
    sets = [h for h in record.history if h["action"] == "set"]
    assert len(sets) == len(record.history)
    assert Counter(h["version"] for h in sets) == Counter(promoted)  # each success exactly once
    assert [h["seq"] for h in record.history] == list(range(1, len(record.history) + 1))
    assert record.version == record.history[-1]["version"]
    assert registry.exists(record.version)
    assert list(record.previous) == [h["version"] for h in record.history[:-1]]


def test_concurrent_attempts_of_one_run_make_one_version(store: Store) -> None:
    """Zombie task attempts of the same run: all get the same version; one version is visible."""
    if isinstance(store, S3Store):
        _ = store.client
    n = 8
    barrier = threading.Barrier(n, timeout=120)
    results: list[Any] = []
    lock = threading.Lock()
    files = {"model.keras": b"the weights", "metrics.json": b"{}"}

    def attempt() -> None:
        try:
            barrier.wait()
            info = Registry(store).register("the-run", files, {"metrics": {}})
        except BaseException as exc:
            info = exc
        with lock:
            results.append(info)

    threads = [threading.Thread(target=attempt) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    registry = Registry(store)
    visible = registry.list_versions()
    assert len(visible) == 1
    assert results == [visible[0]] * n
    assert registry.version_for_run("the-run") == visible[0]
    assert store.read_bytes(store.key_of(visible[0].model_uri)) == b"the weights"
