"""The sidecar's chat-facing rules on a real Ray scheduler: token roles, approvers, idempotent decisions."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openclaw_fixtures import make_project
from tests_support import ADMIN, PLUGIN, sidecar_on

from cluster.private_files import ensure_token_file
from cluster.scheduler import wait_for
from cluster.store import Store

pytestmark = pytest.mark.ray


@pytest.fixture
def api(scheduler: Any) -> TestClient:
    return sidecar_on(scheduler)


def state(scheduler: Any, task_id: str) -> str:
    db = Store(Path(scheduler.state_dir) / "hearth.db", readonly=True)
    try:
        return db.task(task_id).state.value
    finally:
        db.close()


def wait_state(scheduler: Any, task_id: str, wanted: set[str], timeout_s: float = 90) -> str:
    assert wait_for(lambda: state(scheduler, task_id) in wanted, timeout_s), state(scheduler, task_id)
    return state(scheduler, task_id)


def pending(api: TestClient, task_id: str, after_seq: int = 0, timeout_s: float = 90) -> dict[str, Any]:
    """What ``task_id`` waits for (a question or a checkpoint newer than ``after_seq``), once it waits."""
    def find() -> dict[str, Any] | None:
        waiting = {t["id"]: t for t in api.get("/v1/approvals", headers=PLUGIN).json()}
        found = waiting.get(task_id, {}).get("pending")
        return found if found and found["seq"] > after_seq else None

    assert wait_for(lambda: find() is not None, timeout_s), f"{task_id} waits for nothing after #{after_seq}"
    return dict(find() or {})


def test_plugin_token_reads_submits_answers_decides_but_nothing_else(api: TestClient, scheduler: Any,
                                                                      tmp_path: Path) -> None:
    project = make_project(tmp_path, "rights-demo")
    reply = api.post("/v1/tasks", headers=PLUGIN, json={"project_path": str(project), "prd_path": "tasks/prd.json",
                                                        "model": "scripted:sleep-30"})
    assert reply.status_code == 201, reply.text
    task_id = reply.json()["id"]
    wait_state(scheduler, task_id, {"running"})
    for method, path, body, right in [
        ("post", f"/v1/tasks/{task_id}/cancel", None, "cancel"),
        ("post", f"/v1/tasks/{task_id}/priority", {"priority": "urgent"}, "priority"),
        ("post", f"/v1/tasks/{task_id}/restart", None, "restart"),
        ("get", "/v1/nodes", None, "nodes"),
    ]:
        denied = api.request(method, path, headers=PLUGIN, json=body)
        assert denied.status_code == 403 and f"'{right}'" in denied.json()["detail"], denied.text
    assert state(scheduler, task_id) == "running"
    assert api.get(f"/v1/tasks/{task_id}", headers=PLUGIN).json()["priority"] == 50
    assert api.get("/v1/tasks", headers=PLUGIN).status_code == 200
    # the same project by name, as `/hearth submit rights-demo tasks/prd.json` sends it
    by_name = api.post("/v1/tasks", headers=PLUGIN, json={"project": "rights-demo", "prd_path": "tasks/prd.json",
                                                          "model": "scripted:demo"})
    assert by_name.status_code == 201 and by_name.json()["project"] == "rights-demo"
    unknown = api.post("/v1/tasks", headers=PLUGIN, json={"project": "nope", "prd_path": "x.json"})
    assert unknown.status_code == 400 and "rights-demo" in unknown.json()["detail"]
    assert api.post(f"/v1/tasks/{task_id}/cancel", headers=ADMIN).json()["state"] == "cancelled"
    wait_state(scheduler, by_name.json()["id"], {"completed"})


def test_every_route_needs_a_token(api: TestClient) -> None:
    routes = [(m, r.path) for r in api.app.routes for m in getattr(r, "methods", ())  # type: ignore[attr-defined]
              if r.path.startswith("/v1/")]
    assert len(routes) >= 12
    for method, path in routes:
        concrete = path.replace("{task_id}", "T-1")
        assert api.request(method, concrete).status_code == 401, (method, path)
        assert api.request(method, concrete, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api.get("/openapi.json").status_code == 200


def test_decisions_are_idempotent_and_limited_to_approvers(api: TestClient, scheduler: Any, tmp_path: Path) -> None:
    project = make_project(tmp_path, "approve-demo", approval="each-step", approvers=["111", "slack:U42"])
    task_id = api.post("/v1/tasks", headers=ADMIN, json={"project_path": str(project), "prd_path": "tasks/prd.json",
                                                         "model": "scripted:demo"}).json()["id"]
    wait_state(scheduler, task_id, {"awaiting_approval"})
    card = pending(api, task_id)
    assert card["kind"] == "approval" and card["step_id"] == "US-001" and card["commit"]
    url = f"/v1/tasks/{task_id}/decision"
    outsider = api.post(url, headers=PLUGIN, json={"decision": "approve", "who": "222", "channel": "telegram",
                                                   "checkpoint": card["seq"]})
    assert outsider.status_code == 403 and "222 may not approve" in outsider.json()["detail"]
    assert state(scheduler, task_id) == "awaiting_approval"
    click = {"decision": "approve", "who": "111", "channel": "telegram", "checkpoint": card["seq"]}
    first = api.post(url, headers=PLUGIN, json=click)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    again = api.post(url, headers=PLUGIN, json=click)  # the same button, clicked twice
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["reply"]["who"] == "111"
    other = api.post(url, headers=PLUGIN, json={**click, "decision": "reject"})
    assert other.status_code == 409 and "already approved by 111" in other.json()["detail"]
    assert api.post("/v1/tasks/T-99999/decision", headers=PLUGIN, json=click).status_code == 404

    second = pending(api, task_id, after_seq=card["seq"])  # step 2's checkpoint
    assert second["seq"] > card["seq"] and second["step_id"] == "US-002"
    stale = api.post(url, headers=PLUGIN, json={**click, "decision": "reject"})  # an old card's Reject
    assert stale.status_code == 409
    results: list[int] = []

    def race() -> None:  # two people press Approve on the same card at once: it acts once
        reply = api.post(url, headers=PLUGIN, json={"decision": "approve", "who": "U42", "channel": "slack",
                                                    "checkpoint": second["seq"]})
        results.append(reply.status_code)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200, 200]
    wait_state(scheduler, task_id, {"completed"})
    late = api.post(url, headers=ADMIN, json={"decision": "approve"})
    assert late.status_code == 409 and "completed" in late.json()["detail"]
    events = api.get(f"/v1/tasks/{task_id}/events?follow=false", headers=ADMIN).text
    assert events.count("event: decision_made") == 2


def test_answers_carry_their_question_and_repeat_safely(api: TestClient, scheduler: Any, tmp_path: Path) -> None:
    project = make_project(tmp_path, "ask-demo")
    task_id = api.post("/v1/tasks", headers=ADMIN, json={"project_path": str(project), "prd_path": "tasks/prd.json",
                                                         "model": "scripted:ask"}).json()["id"]
    wait_state(scheduler, task_id, {"waiting_input"})
    question = pending(api, task_id)
    assert question["kind"] == "question" and question["question"] == "What should answer.txt say?"
    body = {"text": "teal", "who": "111", "channel": "telegram", "question": question["seq"]}
    url = f"/v1/tasks/{task_id}/answer"
    assert api.post(url, headers=PLUGIN, json=body).json()["duplicate"] is False
    repeat = api.post(url, headers=PLUGIN, json=body)
    assert repeat.status_code == 200 and repeat.json()["duplicate"] is True
    changed = api.post(url, headers=PLUGIN, json={**body, "text": "red"})
    assert changed.status_code == 409 and "already answered by 111" in changed.json()["detail"]
    second = pending(api, task_id, after_seq=question["seq"])  # the next story asks again
    assert api.post(url, headers=PLUGIN, json={**body, "question": second["seq"]}).status_code == 200
    wait_state(scheduler, task_id, {"completed"})


def test_plugin_token_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "plugin-token"
    token = ensure_token_file(path)
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert ensure_token_file(path) == token


def test_a_model_url_needs_the_endpoint_right_only_admin_has(api: TestClient, scheduler: Any, tmp_path: Path) -> None:
    project = make_project(tmp_path, "endpoint-demo")
    body = {"project_path": str(project), "prd_path": "tasks/prd.json", "model": "openai:http://127.0.0.1:9/v1#m"}
    refused = api.post("/v1/tasks", headers=PLUGIN, json=body)
    assert refused.status_code == 403 and "'endpoint'" in refused.json()["detail"], refused.text
    accepted = api.post("/v1/tasks", headers=ADMIN, json=body)
    assert accepted.status_code == 201, accepted.text
    assert api.post(f"/v1/tasks/{accepted.json()['id']}/cancel", headers=ADMIN).status_code == 200
    bad_url = api.post("/v1/tasks", headers=ADMIN, json={**body, "model": "openai:file:///etc/passwd"})
    assert bad_url.status_code == 400 and "http" in bad_url.json()["detail"]
