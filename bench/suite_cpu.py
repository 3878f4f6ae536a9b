"""Where the test suite's time goes: CPU seconds and wall seconds per test file and per layer.

``make test`` on this machine is CPU-bound (pytest-xdist workers on two cores), so its wall
time is about the suite's CPU time over two; this finds what to cut. Runs pytest on the given
arguments (default: the whole suite on ``--workers`` xdist workers, as ``make test``) with a
small plugin that records, per test, the CPU time of the pytest process and of the processes
it waited for (CLI subprocesses, ``airflow dags test``, the Celery deployment's services when
they stop), and the wall time. Prints a Markdown table (docs/benchmarks.md), the machine's busy
CPU over the run (/proc/stat: database and broker included), and a speed probe before and after
(bench/plain_keras.py, 2 epochs): the machine's speed drifts up to 2x within a day, so suite
times are compared next to the probe.

    .venv/bin/python bench/suite_cpu.py                      # the whole suite (8-16 min)
    .venv/bin/python bench/suite_cpu.py -- tests/unit        # any pytest arguments after --

A service's CPU is counted when it is waited for: the Celery deployment's daemons show up in
the teardown of the last test of its half, and the processes they did not wait for (a task
process killed with its worker) not at all; the machine's figure has everything.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
import json, os, resource, time
import pytest

def _cpu():
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cpu, wall, start = _cpu(), time.monotonic(), time.time()
    yield
    record = {"id": item.nodeid, "cpu": _cpu() - cpu, "wall": time.monotonic() - wall,
              "start": start, "worker": os.environ.get("PYTEST_XDIST_WORKER", "")}
    with open(os.environ["SUITE_CPU_RECORDS"], "a") as out:
        out.write(json.dumps(record) + "\\n")
'''


def _table(records: list[dict[str, float | str]], top: int) -> str:
    files: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    layers: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for rec in records:
        path = str(rec["id"]).split("::", 1)[0]
        layer = path.split("/")[1] if path.count("/") >= 2 else path
        for acc in (files[path], layers[layer]):
            acc[0] += float(rec["cpu"])
            acc[1] += float(rec["wall"])
            acc[2] += 1
    cpu_total = sum(v[0] for v in layers.values())
    lines = ["| layer / file | tests | CPU s | share | wall s (summed over workers) |",
             "|---|---:|---:|---:|---:|"]
    for name, (cpu, wall, n) in sorted(layers.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| **{name}** | {n} | {cpu:.0f} | {cpu / cpu_total:.0%} | {wall:.0f} |")
    for name, (cpu, wall, n) in sorted(files.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| {name} | {n} | {cpu:.0f} | {cpu / cpu_total:.0%} | {wall:.0f} |")
    lines.append(f"| **all** | {len(records)} | {cpu_total:.0f} | 100% | "
                 f"{sum(v[1] for v in layers.values()):.0f} |")
    return "\n".join(lines)


def _machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat: every process,
    whoever waits for it; on an otherwise idle machine, the suite's own)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _probe() -> float:
    """The machine's speed now: bench/plain_keras.py's fit seconds for 2 epochs (plain Keras,
    the first notebook's MLP, in a fresh process). Its speed drifts up to 2x within a day, so
    a suite's time is comparable across runs only next to this."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "plain_keras.py"), "--epochs",
                          "2"], cwd=REPO, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["fit_seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=3,
                        help="pytest-xdist workers (3, as make test)")
    parser.add_argument("--top", type=int, default=15, help="files to list (15)")
    parser.add_argument("--records", type=Path,
                        help="also write each test's record (JSON lines: id, cpu, wall, start, "
                        "worker) here")
    parser.add_argument("--no-probe", action="store_true",
                        help="skip the plain-Keras speed probe before and after the run")
    parser.add_argument("pytest_args", nargs="*", help="after --: pytest's arguments")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="suite-cpu-") as tmp:
        (Path(tmp) / "suite_cpu_plugin.py").write_text(PLUGIN)
        records_file = Path(tmp) / "records.jsonl"
        env = {**os.environ, "SUITE_CPU_RECORDS": str(records_file),
               "PYTHONPATH": os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")]))}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as `make test`: .pyc files are written
        command = [sys.executable, "-m", "pytest", "-q", "-p", "suite_cpu_plugin",
                   "-n", str(args.workers), "--dist", "loadscope", *args.pytest_args]
        before = None if args.no_probe else _probe()
        started, machine = time.monotonic(), _machine_cpu()
        result = subprocess.run(command, cwd=REPO, env=env, check=False)
        wall, machine = time.monotonic() - started, _machine_cpu() - machine
        after = None if args.no_probe else _probe()
        records = [json.loads(line) for line in records_file.read_text().splitlines()] \
            if records_file.exists() else []
        if args.records and records_file.exists():
            args.records.write_text(records_file.read_text())
    if not records:
        print(f"pytest exited {result.returncode} and ran no test", file=sys.stderr)
        return 1
    print(f"\npytest exit {result.returncode}; {wall:.0f} s wall on {args.workers} workers; the "
          f"machine was busy {machine:.0f} CPU s ({machine / wall / os.cpu_count():.0%} of "
          f"{os.cpu_count()} cores)")
    if before is not None and after is not None:
        print(f"speed probe (plain Keras, 2 epochs' fit): {before:.2f} s before, {after:.2f} s "
              f"after; the suite's wall is {wall / ((before + after) / 2):.0f}x the probe")
    print()
    print(_table(records, args.top))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
