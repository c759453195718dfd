"""Helpers for the web page's tests: a store with tasks in given states (written through the store's
own lifecycle, as the scheduler writes it), a logged-in TestClient, and the recorded GPU inventory."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from agent.config import ProjectConfig
from agent.events import CheckpointReady, ClarificationRequested, StepStarted, TaskPlaced, TaskSubmitted
from agent.prd import Step, TaskPlan
from agent.runner import TaskSpec
from cluster.scheduling.states import TaskState
from cluster.store import Store

DATA = Path(__file__).parent / "data"


class SchedulerNotAsked:
    """A ``SchedulerClient`` for pages that must refuse, or only read, before asking the scheduler:
    any call fails the test."""

    def __getattr__(self, method: str) -> Any:
        raise AssertionError(f"the page asked the scheduler ({method}) where it must not")
RECORDED_NODES = DATA / "nodes" / "two-gpu-box.nodes.json"


def seed_task(db: Store, state: str, *, project: str = "web-demo", approvers: list[str] | None = None,
              name: str = "Greeting", project_path: str = "/nonexistent") -> str:
    """A task driven through the lifecycle to ``state`` (queued, running, waiting_input, awaiting_approval)."""
    config = ProjectConfig(name=project, approvers=approvers or [])
    plan = TaskPlan(name=name, source="prd.json", format="prd-json",
                    steps=[Step(id="US-001", title="Write hello.txt"), Step(id="US-002", title="Say bye")])
    spec = TaskSpec(task_id="pending", project_path=project_path, plan=plan, model="scripted:demo",
                    base_commit="0" * 40, config=config)
    db.put_project(project_path, config)
    row = db.create_task(project=project, name=name, priority=50, model="scripted:demo", spec=spec,
                         submitted=TaskSubmitted(task_id="x", name=name, steps=["US-001", "US-002"], priority=50))
    if state == "queued":
        return row.id
    attempt = f"{row.id}.1-abcdef"
    db.start_attempt(row.id, attempt, 1, "node-recorded")
    db.set_state(row.id, TaskState.placed, TaskPlaced(task_id=row.id, attempt_id=attempt, node_id="node-recorded",
                                                      attempt_no=1), attempt_id=attempt, node_id="node-recorded",
                 attempts=1)
    db.set_state(row.id, TaskState.running, StepStarted(task_id=row.id, attempt_id=attempt, step_id="US-001",
                                                        title="Write hello.txt", index=0, total=2))
    if state == "waiting_input":
        db.set_state(row.id, TaskState.waiting_input, ClarificationRequested(
            task_id=row.id, attempt_id=attempt, step_id="US-001", question="Which colour?"),
            waiting_for="Which colour?")
    elif state == "awaiting_approval":
        db.set_state(row.id, TaskState.awaiting_approval, CheckpointReady(
            task_id=row.id, attempt_id=attempt, step_id="US-001", commit="1" * 40, snapshot_id="s1",
            diff_stat=" hello.txt | 1 +", files_changed=["hello.txt"], check_summary="check passed",
            needs_approval=True), waiting_for="US-001")
    return row.id


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def login(client: TestClient, token: str) -> str:
    """Log in through the form; returns the session's CSRF token (read from the board page)."""
    reply = client.post("/ui/login", data={"token": token, "next": "/ui/"}, follow_redirects=False)
    assert reply.status_code == 303, reply.text
    return csrf_of(client.get("/ui/").text)


def recorded_nodes(node_id: str | None = None, running: list[str] | None = None) -> list[dict[str, Any]]:
    """The recorded two-GPU box (hand-made in NVML's shape, see the file), optionally as ``node_id``."""
    nodes = json.loads(RECORDED_NODES.read_text())["nodes"]
    if node_id is not None:
        nodes[0]["node_id"] = node_id
    if running is not None:
        nodes[0]["running"] = running
    return list(nodes)
