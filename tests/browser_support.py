"""A real browser for the web page's tests: Debian's chromium, headless, driven by selenium through
Debian's chromedriver (nothing downloaded), and the sidecar's app served by uvicorn on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Chromium phones home by default (updates, safe browsing, sync); tests may only touch loopback.
QUIET_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-default-apps", "--disable-extensions", "--disable-features=Translate,OptimizationHints",
               "--metrics-recording-only", "--safebrowsing-disable-auto-update", "--window-size=1480,1000"]


class LiveSite:
    """``app`` served by uvicorn in a thread on 127.0.0.1 until ``stop()``."""

    def __init__(self, app: FastAPI) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture
def live_site() -> Iterator[Callable[[FastAPI], LiveSite]]:
    started: list[LiveSite] = []

    def serve(app: FastAPI) -> LiveSite:
        site = LiveSite(app)
        started.append(site)
        return site

    yield serve
    for site in started:
        site.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are missing: HEARTH_SETUP_LAYERS=browser bash deploy/setup.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in QUIET_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: ``HEARTH_SCREENSHOT_DIR`` (docs/images when refreshing the docs) or the test's tmp."""
    target = Path(os.environ.get("HEARTH_SCREENSHOT_DIR") or tmp_path / "screenshots")
    target.mkdir(parents=True, exist_ok=True)
    return target


def full_page_screenshot(driver: Any, path: Path) -> None:
    """The whole page, not only the window (the window grows to the page's height for the shot)."""
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    full = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight);")
    driver.set_window_size(width, min(int(full) + 40, 4000))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(width, height)


def wait_until(driver: Any, condition: Callable[[Any], Any], timeout_s: float = 120, what: str = "") -> Any:
    """Wait (with a deadline, polling the live page) until ``condition(driver)`` is truthy. A live
    swap may replace an element between finding and using it: such a try just counts as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout_s, poll_frequency=0.2,
                         ignored_exceptions=[StaleElementReferenceException, NoSuchElementException])
    return wait.until(condition, message=what)


def fill_and_press(driver: Any, fields: dict[str, str], button: str) -> bool:
    """Type into the inputs with these ids, then press the button with id ``button`` (one try)."""
    from selenium.webdriver.common.by import By

    for field_id, text in fields.items():
        element = driver.find_element(By.ID, field_id)
        element.clear()
        element.send_keys(text)
    driver.find_element(By.ID, button).click()
    return True
