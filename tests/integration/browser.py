"""Headless Chromium for the browser tests (the Models page, the walk through the Airflow UI):
start it, log in through Airflow's login form, wait for what a user would see, save
screenshots. A plain module, so the test files share it without importing each other.

Needs Debian's ``chromium`` and ``chromium-driver`` packages (``make test-deps`` installs them)
and ``selenium`` from PyPI.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium(user_data_dir: Path) -> Any:
    """A headless Chromium (1280x1000) driven through chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing: `make test-deps` installs Debian's "
                    "chromium and chromium-driver", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", f"--user-data-dir={user_data_dir}",
                 "--no-proxy-server"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: $TEST_ARTIFACTS if set (CI keeps it), else the test's tmp folder."""
    folder = Path(os.environ.get("TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_screenshot(driver: Any, folder: Path, name: str) -> Path:
    path = folder / name
    driver.save_screenshot(str(path))
    return path


def save_failure(driver: Any, folder: Path, name: str) -> None:
    """What the browser showed when a step failed: a screenshot and the page's HTML."""
    save_screenshot(driver, folder, f"{name}.png")
    (folder / f"{name}.html").write_text(driver.page_source)


def save_docs_copy(png: Path) -> Path:
    """A small copy for the docs, beside ``png``: the same picture with a 64-colour palette
    (files under docs/ are copied from it by hand)."""
    from PIL import Image

    with Image.open(png) as image:
        buffer = io.BytesIO()
        image.convert("RGB").quantize(colors=64).save(buffer, format="PNG", optimize=True)
    small = png.with_name(f"{png.stem}-small.png")
    small.write_bytes(buffer.getvalue())
    return small


def full_page(driver: Any, folder: Path, name: str) -> Path:
    """A screenshot of the whole page (the window made as tall as the page, then restored)."""
    size = driver.get_window_size()
    height = driver.execute_script(
        "return Math.max(document.documentElement.scrollHeight, "
        "...Array.from(document.querySelectorAll('*')).map(e => e.scrollHeight))")
    driver.set_window_size(size["width"], min(int(height) + 120, 8000))
    time.sleep(0.5)  # a picture, not an assertion: let the resized page lay out
    try:
        return save_screenshot(driver, folder, name)
    finally:
        driver.set_window_size(size["width"], size["height"])


def log_in(driver: Any, username: str, password: str, tries: int = 3) -> None:
    """Fill in and send Airflow's login form until the browser leaves it. On a busy machine
    the form can be shown before its script is ready, and then a click (or the text typed)
    is lost; the form is filled in again and sent again, up to ``tries`` times."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for attempt in range(1, tries + 1):
        for name, value in (("username", username), ("password", password)):
            field = driver.find_element(By.NAME, name)
            field.clear()
            field.send_keys(value)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        try:
            WebDriverWait(driver, 20).until(lambda d: "/auth/login" not in d.current_url)
            return
        except TimeoutException:
            if attempt == tries:
                raise AssertionError(f"still on the login form after {tries} tries: "
                                     f"{driver.current_url}") from None


def open_logged_in(driver: Any, url: str, username: str = "admin",
                   password: str = "admin-password") -> None:
    """Open ``url``, logging in through Airflow's login form first when it asks."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: "/auth/login" in d.current_url or d.find_elements(
        By.CSS_SELECTOR, "nav, main, body > div#root > *"))
    if "/auth/login" in driver.current_url:
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.NAME, "username"))
        log_in(driver, username, password)
        driver.get(url)


def frame_fits(driver: Any, frame: Any) -> bool:
    """Whether the frame is as tall as the page inside it: no scrollbar of its own."""
    return bool(driver.execute_script(
        "const f = arguments[0], d = f.contentDocument.documentElement;"
        "return d.scrollHeight > 0 && f.clientHeight >= d.scrollHeight - 2", frame))
