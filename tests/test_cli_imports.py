"""`hearth tasks` prints in well under 300 ms because the CLI's client path loads only what it needs:
no Ray, git, psutil, the PRD parser, the runner or the event models (each costs tens to hundreds of ms)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

HEAVY = ["ray", "git", "psutil", "docker", "fastapi", "uvicorn", "agent.runner", "agent.prd", "agent.events",
         "agent.models", "cluster.store", "httpx_sse"]


def test_the_cli_client_path_imports_no_heavy_module() -> None:
    probe = ("import json, sys, cluster.cli; "
             f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_hearth_tasks_prints_aligned_columns_and_messages_as_they_are() -> None:
    from cluster.cli_client import text_table

    text = text_table(("id", "state", "message"), [("T-1", "failed", "check [bold]failed[/]\non line 2"),
                                                   ("T-1000", "completed", "")])
    lines = text.splitlines()
    assert lines == ["id      state      message",
                     "T-1     failed     check [bold]failed[/] on line 2",
                     "T-1000  completed"]
