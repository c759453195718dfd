"""Schemathesis fuzzes the sidecar (a real uvicorn over the real Ray scheduler) with the admin token,
the plugin token and none: no 5xx, and every response is what the OpenAPI document says (status
codes, content types, schemas, headers, Allow on 405, 401 without a token). Time-bounded: a few
dozen examples per operation and a wall-clock budget per token."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from cluster.api import create_app
from cluster.scheduler import wait_for
from cluster.scheduler_client import RaySchedulerClient

pytestmark = [pytest.mark.ray, pytest.mark.fuzz]
MAX_EXAMPLES = int(os.environ.get("HEARTH_FUZZ_EXAMPLES", "30"))
"""Cases per API operation and token (25,000 requests were sent by hand once; CI keeps it short)."""
MAX_TIME_S = int(os.environ.get("HEARTH_FUZZ_MAX_S", "25"))
"""Wall-clock budget of one token's run."""
CONFIG = Path(__file__).parent / "data" / "schemathesis.toml"
TOKENS = {"admin": "fuzz-admin-token", "plugin": "fuzz-plugin-token", "none": None}


@pytest.fixture(scope="module")
def sidecar_url(scheduler: Any) -> Iterator[str]:
    app = create_app(RaySchedulerClient(scheduler), Path(scheduler.state_dir) / "hearth.db", TOKENS["admin"] or "",
                     plugin_token=TOKENS["plugin"])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, 30)
    yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    server.should_exit = True
    thread.join(30)


@pytest.mark.parametrize("who", list(TOKENS))
def test_fuzzed_api_keeps_its_contract(sidecar_url: str, who: str, tmp_path: Path) -> None:
    st = shutil.which("st") or str(Path(sys.executable).parent / "st")
    token = TOKENS[who]
    command = [st, "--config-file", str(CONFIG), "run", f"{sidecar_url}/openapi.json", "--checks", "all",
               "--max-examples", str(MAX_EXAMPLES), "--max-time", str(MAX_TIME_S), "--workers", "1", "--seed", "13",
               "--generation-database", "none",
               "--request-timeout", "20", "--no-color", "--report", "ndjson", "--report-dir", str(tmp_path)]
    if token is not None:
        command += ["-H", f"Authorization: Bearer {token}"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=MAX_TIME_S * 3 + 60, cwd=tmp_path)
    assert run.returncode == 0, f"schemathesis ({who} token):\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
