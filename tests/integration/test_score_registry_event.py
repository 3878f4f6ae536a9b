"""``registry promote|rollback --notify-airflow``: when the asset event cannot be posted, the
alias has still moved, and the CLI says both in one line (exit 2), never a traceback. (Posting
to a real Airflow is tested in test_celery_scoring.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mnist_tasks.registry import Registry
from mnist_tasks.storage import LocalStore
from tests.integration.airflow_services import REPO, free_port


def test_unreachable_airflow_is_one_line_and_the_alias_has_moved(tmp_path: Path,
                                                                 model_file: Path) -> None:
    store = LocalStore(tmp_path / "store")
    reg = Registry(store)
    for run in ("a", "b"):
        reg.register(run, {"model.keras": model_file}, {})
    reg.promote(1)
    reg.promote(2)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = subprocess.run(
        [sys.executable, "-m", "mnist_tasks.registry", "--store", store.uri, "rollback",
         "--notify-airflow", url],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "MNIST_AIRFLOW_TOKEN": "t", "NO_PROXY": "*"})
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: champion -> v1 (was v2), but the asset event was not posted: Airflow API GET "
        f"{url}/api/v2/assets"), out.stderr
    assert reg.get_alias("champion") == 1
