"""`hearth up` prints the web page's address, and the page is served there by the real sidecar."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parent.parent


def test_hearth_up_prints_the_pages_address_and_serves_it() -> None:
    state = Path(tempfile.mkdtemp(prefix="hearth-up-"))  # short: Ray's socket paths must stay under 107 bytes
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HEARTH_STATE_DIR": str(state), "PYTHONPATH": str(REPO),
           "COLUMNS": "200"}
    hearth = [sys.executable, "-m", "cluster.cli"]
    up = subprocess.run([*hearth, "up", "--port", str(port), "--slots", "1"], env=env, capture_output=True,
                        text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        url = f"http://127.0.0.1:{port}/ui/"
        assert f"Web page: {url}" in up.stdout, up.stdout
        token = (state / "token").read_text().strip()
        with httpx.Client(timeout=30) as client:
            first = client.get(url, follow_redirects=False)
            assert first.status_code == 303 and first.headers["location"].startswith("/ui/login")
            logged = client.post(f"http://127.0.0.1:{port}/ui/login", data={"token": token}, follow_redirects=True)
            assert logged.status_code == 200 and "Board" in logged.text and token not in logged.text
            assert client.get(f"http://127.0.0.1:{port}/metrics").status_code == 200  # the session may scrape
            assert "htmx" in client.get(f"http://127.0.0.1:{port}/ui/static/htmx.min.js").text[:2000]
    finally:
        subprocess.run([*hearth, "down"], env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)
