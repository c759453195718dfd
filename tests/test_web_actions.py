"""The page's operator actions on the real scheduler: change priority, cancel, restart (a scripted
model sleeps so the task is still running when they act), and an operator token through the form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openclaw_fixtures import make_project
from tests_support import from_store
from web_support import login

from cluster import people_tokens
from cluster.api import create_app
from cluster.scheduler import wait_for
from cluster.scheduler_client import RaySchedulerClient

pytestmark = pytest.mark.ray


def test_an_operator_changes_priority_cancels_and_restarts_from_the_page_scripted_sleep_model(
        scheduler: Any, tmp_path: Path) -> None:
    app = create_app(RaySchedulerClient(scheduler), Path(scheduler.state_dir) / "hearth.db", "actions-admin-token")
    client = TestClient(app)
    project = make_project(tmp_path, "actions-demo")
    task_id = client.post("/v1/tasks", headers={"Authorization": "Bearer actions-admin-token"},
                          json={"project_path": str(project), "prd_path": "tasks/prd.json",
                                "model": "scripted:sleep-30"}).json()["id"]

    def state() -> str:
        return str(from_store(scheduler, lambda db: db.task(task_id).state.value))

    assert wait_for(lambda: state() == "running", 120), state()
    operator = people_tokens.add(Path(scheduler.state_dir), f"olga-{tmp_path.name[-6:]}", "operator")
    csrf = login(client, operator)
    page = f"/ui/tasks/{task_id}"
    moved = client.post(f"{page}/priority", data={"csrf": csrf, "priority": "high"})
    assert moved.status_code == 200 and f"Priority of {task_id} set to high" in moved.text
    assert from_store(scheduler, lambda db: db.task(task_id).priority) == 75
    assert 'id="task-priority">high' in moved.text
    capped = client.post(f"{page}/priority", data={"csrf": csrf, "priority": "urgent"})  # max_priority is 80
    assert "set to 80: urgent is above what project actions-demo allows" in capped.text
    cancelled = client.post(f"{page}/cancel", data={"csrf": csrf})
    assert f"Cancelled {task_id}" in cancelled.text and state() == "cancelled"
    again = client.post(f"{page}/cancel", data={"csrf": csrf})  # the scheduler's refusal becomes a note
    assert again.status_code == 200 and "already cancelled" in again.text
    restarted = client.post(f"{page}/restart", data={"csrf": csrf})
    assert f"Restarted {task_id}" in restarted.text
    assert wait_for(lambda: state() in {"queued", "placed", "running"}, 30), state()
    client.post(f"{page}/cancel", data={"csrf": csrf})
    assert wait_for(lambda: state() == "cancelled", 30)
