"""Scoring at scale: what the Models page and a landing check cost after many scored batches.

The store state is generated directly (no Keras): registered versions with tiny files, then
for each batch its landing folder (one file and the ``_SUCCESS`` marker) and its output
(a schema-2 manifest, as ``score.commit_batch`` writes it), added to the version summaries
through ``scoring_index.record_scored`` (the commit's own code path). Measured:

* **page data**: what the Models page reads before rendering (the registry's versions, the
  champion, and the scored batches of every version: ``plugins/mnist_models._scored``) with
  ``--batches`` (20,000) scored batches over four versions; seconds from a local store, and
  requests to S3 (the moto server over HTTP, counted with a botocore ``before-send`` hook),
  beside the old way for comparison (every manifest read, one request each: local only);
* **landing check**: an interval run's plan (``score.plan``, no event) with nothing new, after
  10 and after 10,000 old batches, each store's first plan (a sweep: there is no landing record
  yet) done beforehand; seconds on a local store (its folder left unchanged for 6 s first, as
  between two checks) and requests to S3.

Goals (issue 20): page data <= 0.3 s local and <= 20 requests to S3; the landing check costs
the same with 10 and 10,000 old batches, within 20 % (time local, requests S3). Prints a
Markdown table.

    .venv/bin/python bench/score_scale.py             # about 3 minutes on two cores
"""

from __future__ import annotations

import argparse
import concurrent.futures
import cProfile
import importlib.util
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mnist_tasks import score, scoring_index
from mnist_tasks.registry import Registry
from mnist_tasks.scoring_outputs import ERRORS, PREDICTIONS, SCHEMA, output_prefix
from mnist_tasks.storage import LocalStore, S3Store, Store

REPO = Path(__file__).resolve().parents[1]
MODEL = "mnist-classifier"
VERSIONS = 4
BUCKET = "score-scale"
PAGE_GOAL_S, PAGE_GOAL_REQUESTS, FLAT_GOAL = 0.3, 20, 1.2


def _plugin() -> Any:
    spec = importlib.util.spec_from_file_location("mnist_models_plugin",
                                                  REPO / "plugins" / "mnist_models.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manifest(batch: str, version: int, i: int) -> dict[str, Any]:
    commit = f"scheduled__2026-11-{1 + i % 28:02d}T03_00_00_00_00-1a2b3c4d.5e6f7a8b"
    return {
        "schema": SCHEMA, "batch": batch, "model_name": MODEL, "model_version": version,
        "input_uri": f"s3://landing/{batch}", "input_sha256": f"{i:064x}",
        "counts": {"files": 1, "images": 2000, "skipped_files": i % 3, "shards": 1},
        "timing": {"decode_s": 0.2, "score_s": 0.2, "images_per_s": 10000.0, "commit_s": 0.1},
        "report": {"low_confidence": 100 + i % 50, "divergence_tvd": round(0.02 + i % 7 / 100, 4),
                   "divergence_flagged": i % 7 == 6, "divergence_threshold": 0.1,
                   "confidence_threshold": 0.5},
        "commit": commit,
        "files": {name: {"path": f"{commit}/{name}", "sha256": f"{i:064x}", "size": 1}
                  for name in (PREDICTIONS, ERRORS)},
        "run_id": f"scheduled__2026-11-{1 + i % 28:02d}T03:00:00+00:00",
        "created_at": "2026-11-22T03:00:00.000+00:00",
    }


def _put_all(store: Store, items: list[tuple[str, bytes]], markers: list[str],
             landing: Store) -> None:
    """Write many objects (in threads: S3 round trips, not CPU, bound it)."""
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda kv: store.write_bytes(*kv), items))
        list(pool.map(landing.write_marker, markers))


def build(store: Store, landing: Store | None, n_batches: int, versions: int) -> None:
    """``n_batches`` scored (and landed, with a ``landing``), spread over ``versions``
    registered versions."""
    registry = Registry(store, MODEL)
    for v in range(1, versions + 1):
        registry.register(f"run-{v}", {"model.keras": b"not a real model"}, {})
    registry.promote(versions)
    batches = [f"2026-{i:06d}" for i in range(n_batches)]
    per_version = max(1, n_batches // versions)
    manifests: dict[int, list[dict[str, Any]]] = {}
    for i, batch in enumerate(batches):
        version = min(versions, 1 + i // per_version)
        manifests.setdefault(version, []).append(_manifest(batch, version, i))
    outputs = [(f"{output_prefix(score.ScoringConfig(landing='-'), m['batch'], v)}/"
                f"{scoring_index.MANIFEST}", json.dumps(m).encode())
               for v, ms in manifests.items() for m in ms]
    if landing is not None:
        _put_all(landing, [(f"{b}/a-idx3-ubyte", b"x") for b in batches], batches, landing)
    _put_all(store, outputs, [], store)
    for ms in manifests.values():
        scoring_index.record_scored(store, ms)


class Requests:
    """Counts the HTTP requests of the boto3 clients it is attached to."""

    def __init__(self) -> None:
        self.count = 0

    def attach(self, *stores: S3Store) -> None:
        # A child store shares its parent's client: count each client once.
        for client in {id(s.client): s.client for s in stores}.values():
            client.meta.events.register("before-send.s3", self._one)

    def _one(self, **_: Any) -> None:
        self.count += 1

    @contextmanager
    def counting(self) -> Iterator[list[int]]:
        out: list[int] = []
        start = self.count
        yield out
        out.append(self.count - start)


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def page_data(plugin: Any, store: Store) -> Callable[[], Any]:
    registry = Registry(store, MODEL)

    def load() -> Any:
        infos = registry.list_versions()
        champion = registry.get_alias("champion")
        scored = plugin._scored(registry)
        return infos, champion, scored

    return load


def every_manifest(store: Store) -> int:
    """The old way: list the outputs and read every manifest, one request each."""
    base = f"scoring/{MODEL}/batches/"
    n = 0
    for key in store.list(base.rstrip("/")):
        if key.endswith("/" + scoring_index.MANIFEST):
            json.loads(store.read_bytes(key))
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batches", type=int, default=20_000, help="scored batches (page)")
    parser.add_argument("--old", type=int, nargs=2, default=[10, 10_000],
                        help="old batches before the landing checks (two sizes)")
    parser.add_argument("--repeats", type=int, default=31, help="timed repeats (median)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from moto.server import ThreadedMotoServer

    plugin = _plugin()
    # Importing the plugin imports Airflow, which sets up its own logging: keep the table clean.
    for name in ("", "mnist_tasks", "werkzeug"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    kwargs = {"endpoint_url": f"http://{host}:{port}", "aws_access_key_id": "testing",
              "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    from botocore.config import Config

    client_kwargs = {**kwargs, "config": Config(max_pool_connections=32)}
    rows: list[tuple[str, str, str, str]] = []
    try:
        S3Store(BUCKET, client_kwargs=client_kwargs).client.create_bucket(Bucket=BUCKET)
        with tempfile.TemporaryDirectory(prefix="score-scale-") as tmp:
            # -- the page
            local, s3 = LocalStore(Path(tmp) / "page"), S3Store(BUCKET, "page",
                                                                 client_kwargs=client_kwargs)
            t0 = time.perf_counter()
            for st in (local, s3):
                build(st, None, args.batches, VERSIONS)  # the page never reads the landing
            print(f"page state: {args.batches:,} batches x 2 stores in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            load = page_data(plugin, local)
            _, _, scored = load()
            assert sum(len(v) for v in scored.values()) == args.batches, "rows missing"
            page_s = timed(load, args.repeats)
            scored_s = timed(lambda: plugin._scored(Registry(local, MODEL)), args.repeats)
            old_s = timed(lambda: every_manifest(local), 1)
            counter = Requests()
            counter.attach(s3)
            with counter.counting() as page_requests:
                page_data(plugin, s3)()
            with counter.counting() as scored_requests:
                plugin._scored(Registry(s3, MODEL))
            n = f"{args.batches:,} scored batches, {VERSIONS} versions"
            rows += [
                ("Models page data (versions, champion, scored batches)", f"local, {n}",
                 f"{page_s:.3f} s ({'meets' if page_s <= PAGE_GOAL_S else 'MISSES'} "
                 f"<= {PAGE_GOAL_S} s)", f"scored batches alone {scored_s:.3f} s; every "
                 f"manifest read one by one (before): {old_s:.2f} s"),
                ("Models page data (versions, champion, scored batches)", f"S3, {n}",
                 f"{page_requests[0]} requests ({'meets' if page_requests[0] <= PAGE_GOAL_REQUESTS else 'MISSES'} "  # noqa: E501
                 f"<= {PAGE_GOAL_REQUESTS})",
                 f"scored batches alone {scored_requests[0]} requests (before: one per "
                 f"manifest, {args.batches:,}, plus the listing)"),
            ]

            # -- the landing check: every store built and swept first, then the checks of the
            # two sizes interleaved, so that load from elsewhere on the machine hits both alike
            local_stores, s3_stores = [], []
            sweep_s, sweep_requests = [], []  # the first look: a sweep (no record yet)
            for n_old in args.old:
                st = LocalStore(Path(tmp) / f"old-{n_old}")
                s3st = S3Store(BUCKET, f"old-{n_old}", client_kwargs=client_kwargs)
                for store in (st, s3st):
                    build(store, store.child("landing"), n_old, 1)
                    cfg = score.ScoringConfig(landing=store.uri_for("landing"), model_name=MODEL)
                    landing = store.child("landing")
                    counter = Requests()
                    if isinstance(store, S3Store):
                        assert isinstance(landing, S3Store)
                        counter.attach(store, landing)
                    start = time.perf_counter()
                    with counter.counting() as requests:
                        score.plan(cfg, store, landing, "first")
                    if isinstance(store, S3Store):
                        sweep_requests.append(requests[0])
                    else:
                        sweep_s.append(time.perf_counter() - start)
                local_stores.append(st)
                s3_stores.append(s3st)
                print(f"landing check: {n_old:,} old batches built", flush=True)
            time.sleep(6)  # as between two checks: the local folder's token is trusted
            times: list[list[float]] = [[], []]
            for i in range(-1, args.repeats):  # -1: a first check, not timed
                for k, st in enumerate(local_stores):
                    cfg = score.ScoringConfig(landing=st.uri_for("landing"), model_name=MODEL)
                    start = time.perf_counter()
                    score.plan(cfg, st, st.child("landing"), f"r{i}")
                    if i >= 0:
                        times[k].append(time.perf_counter() - start)
            local_s = [statistics.median(t) for t in times]
            local_min = [min(t) for t in times]
            # The work itself, free of the machine's load: Python calls of one check each.
            calls = []
            for st in local_stores:
                cfg = score.ScoringConfig(landing=st.uri_for("landing"), model_name=MODEL)
                profile = cProfile.Profile()
                profile.runcall(score.plan, cfg, st, st.child("landing"), "profiled")
                calls.append(sum(entry.callcount for entry in profile.getstats()))
            s3_requests = []
            for s3st in s3_stores:
                cfg = score.ScoringConfig(landing=s3st.uri_for("landing"), model_name=MODEL)
                landing_s3 = s3st.child("landing")
                assert isinstance(landing_s3, S3Store)
                counter = Requests()
                counter.attach(s3st, landing_s3)
                with counter.counting() as requests:
                    planned = score.plan(cfg, s3st, landing_s3, "measured")
                assert planned.batches == (), planned
                s3_requests.append(requests[0])
            ratio_s = local_s[1] / local_s[0]
            ratio_r = s3_requests[1] / s3_requests[0]
            a, b = (f"{n:,}" for n in args.old)
            rows += [
                ("Landing check, nothing new (interval plan)", f"local, {a} / {b} old batches",
                 f"{local_s[0] * 1000:.2f} / {local_s[1] * 1000:.2f} ms: x{ratio_s:.2f} "
                 f"({'meets' if ratio_s <= FLAT_GOAL else 'MISSES'} <= x{FLAT_GOAL})",
                 f"median of {args.repeats}, interleaved; fastest {local_min[0] * 1000:.2f} / "
                 f"{local_min[1] * 1000:.2f} ms; Python calls {calls[0]:,} / {calls[1]:,}"),
                ("Landing check, nothing new (interval plan)", f"S3, {a} / {b} old batches",
                 f"{s3_requests[0]} / {s3_requests[1]} requests: x{ratio_r:.2f} "
                 f"({'meets' if ratio_r <= FLAT_GOAL else 'MISSES'} <= x{FLAT_GOAL})", ""),
                ("Sweep (a registry event's run, daily; no goal: grows with history)",
                 f"local / S3, {a} / {b} old batches",
                 f"{sweep_s[0] * 1000:.1f} / {sweep_s[1] * 1000:.0f} ms; "
                 f"{sweep_requests[0]} / {sweep_requests[1]} requests", "one run each"),
            ]
    finally:
        server.stop()
    print()
    print("| measurement | store | result (goal) | note |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
