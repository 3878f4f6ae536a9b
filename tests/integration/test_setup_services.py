"""scripts/setup-test-services.sh (``make test-deps``, run by ``make test``): the one line it
says when it cannot provide what the tests need, and that it is a few quiet checks when
everything is there.

It runs for real, as a user who is not root (``nobody``, through setpriv, when the tests run as
root), so it can install nothing; "missing" is a PATH without Chromium, chromedriver and Compose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.airflow_services import SETUP_SCRIPT

MISSING = ("chromium", "chromium-driver", "docker-compose")  # Debian's packages, in its order
INSTALL = "apt-get update && apt-get install -y --no-install-recommends " + " ".join(MISSING)
NOBODY = 65534  # Debian's nobody and nogroup


def _as_a_user(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the set-up as a user who is not root, with the environment ``env``."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) runs the set-up as nobody"
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    bash = shutil.which("bash")
    assert bash
    # A copy the user can read: the checkout may sit in a folder only root may enter (a
    # mktemp -d clone is 0700).
    with tempfile.TemporaryDirectory(prefix="setup-script-") as folder:
        os.chmod(folder, 0o755)
        script = Path(folder) / SETUP_SCRIPT.name
        shutil.copyfile(SETUP_SCRIPT, script)
        os.chmod(script, 0o755)
        return subprocess.run([*prefix, bash, str(script)], env=env, capture_output=True,
                              text=True, timeout=60, cwd="/")


@pytest.fixture
def bin_dir() -> Iterator[Path]:
    """An empty folder that the user of :func:`_as_a_user` may read: a PATH holding only what a
    test links into it."""
    with tempfile.TemporaryDirectory(prefix="setup-path-") as folder:
        os.chmod(folder, 0o755)
        yield Path(folder)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert len(output.splitlines()) == 1, output  # no traceback, no apt-get output
    return output.strip()


def test_not_root_on_debian_names_the_missing_packages_and_the_apt_get_command(
        bin_dir: Path) -> None:
    apt_get = shutil.which("apt-get")
    assert apt_get, "the set-up installs with apt-get: a Debian machine"
    (bin_dir / "apt-get").symlink_to(apt_get)
    line = _one_line(_as_a_user({"PATH": str(bin_dir)}))
    assert line.startswith("make test needs chromium, chromium-driver, docker-compose"), line
    assert f"as root, run: {INSTALL}" in line


def test_without_apt_get_it_names_the_missing_packages_and_the_debian_command(
        bin_dir: Path) -> None:
    line = _one_line(_as_a_user({"PATH": str(bin_dir)}))
    assert line.startswith("make test needs chromium, chromium-driver, docker-compose"), line
    assert "this system has no apt-get" in line and INSTALL in line


def test_with_everything_there_it_is_quiet_and_quick() -> None:
    """No apt-get, nothing started: a few checks (about 0.05 s here; the bound is loose)."""
    started = time.monotonic()
    result = _as_a_user({"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    took = time.monotonic() - started
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), result.stderr
    assert took < 5, f"{took:.1f} s"
