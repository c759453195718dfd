"""The scheduler actor, task actors and the sidecar on a real Ray cluster (scripted models, named so)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import git
import pytest
import ray
from fastapi.testclient import TestClient
from tests_support import configure, from_store

from agent.project import task_branch
from cluster.api import create_app
from cluster.scheduler import wait_for
from cluster.scheduler_client import RaySchedulerClient

pytestmark = pytest.mark.ray
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(scheduler: Any) -> TestClient:
    return TestClient(create_app(RaySchedulerClient(scheduler), Path(scheduler.state_dir) / "hearth.db", TOKEN))


def task_state(scheduler: Any, task_id: str) -> str:
    return str(from_store(scheduler, lambda store: store.task(task_id).state.value))


def wait_state(scheduler: Any, task_id: str, states: set[str], timeout_s: float = 90) -> str:
    assert wait_for(lambda: task_state(scheduler, task_id) in states, timeout_s), \
        f"{task_id} stuck in {task_state(scheduler, task_id)}"
    return task_state(scheduler, task_id)


def submit(api: TestClient, project: Path, **extra: Any) -> dict[str, Any]:
    body = {"project_path": str(project), "prd_path": "tasks/prd.json", "model": "scripted:demo", **extra}
    reply = api.post("/v1/tasks", json=body, headers=AUTH)
    assert reply.status_code == 201, reply.text
    return dict(reply.json())


def test_submitted_prd_runs_to_completion_and_events_stream(api: TestClient, scheduler: Any,
                                                             greeting_project: Path) -> None:
    task = submit(api, greeting_project)
    assert task["state"] == "queued" and task["id"].startswith("T-")
    assert wait_state(scheduler, task["id"], {"completed", "failed"}) == "completed"
    stories = json.loads(git.Repo(greeting_project).git.show(f"{task_branch(task['id'])}:tasks/prd.json"))
    assert [s["passes"] for s in stories["userStories"]] == [True, True]
    with api.stream("GET", f"/v1/tasks/{task['id']}/events", headers=AUTH) as reply:
        lines = [line for line in reply.iter_lines() if line.startswith("id:")]
    seqs = [int(line.split(":")[1]) for line in lines]
    assert seqs == list(range(1, len(seqs) + 1))
    with api.stream("GET", f"/v1/tasks/{task['id']}/events", headers={**AUTH, "Last-Event-ID": str(seqs[-3])}) as reply:
        resumed = [line for line in reply.iter_lines() if line.startswith("event:")]
    assert len(resumed) == 2 and resumed[-1] == "event: attempt_ended"
    listed = api.get("/v1/tasks", headers=AUTH).json()
    assert any(t["id"] == task["id"] and t["state"] == "completed" for t in listed)
    # Token accounting: per step and in all, in the API and in `hearth show`.
    assert task["warnings"] == []  # the greeting project has a check
    usage = api.get(f"/v1/tasks/{task['id']}", headers=AUTH).json()["usage"]
    assert set(usage["steps"]) == {"US-001", "US-002"} and usage["turns"] >= 4
    assert usage["prompt_tokens"] == sum(s["prompt_tokens"] for s in usage["steps"].values()) > 0
    shown = show_via(api, task["id"])
    assert f"{usage['turns']} turns, {usage['prompt_tokens']:,} prompt + {usage['completion_tokens']:,}" in shown


def show_via(api: TestClient, task_id: str) -> str:
    """`hearth show` against this test's sidecar app (the CLI's HTTP client swapped for the app's)."""
    from typer.testing import CliRunner

    from cluster import cli

    class AppClient:
        def request(self, method: str, path: str, **kwargs: Any) -> Any:
            return api.request(method, path, headers=AUTH, **kwargs).json()

    original = cli.Client
    cli.Client = AppClient  # type: ignore[assignment,misc]
    try:
        done = CliRunner().invoke(cli.app, ["show", task_id])
    finally:
        cli.Client = original  # type: ignore[misc]
    assert done.exit_code == 0, done.output
    return str(done.output)


def test_submit_warns_when_nothing_will_check_the_work(api: TestClient, scheduler: Any,
                                                      greeting_project: Path) -> None:
    configure(greeting_project, check="")
    task = submit(api, greeting_project)
    [warning] = task["warnings"]
    assert "no check" in warning and "accepted on the model's word" in warning
    assert wait_state(scheduler, task["id"], {"completed", "failed"}) == "completed"


def test_every_route_needs_the_token(api: TestClient) -> None:
    assert api.get("/v1/tasks").status_code == 401
    assert api.get("/v1/tasks", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert api.post("/v1/tasks", json={}).status_code == 401
    assert api.get("/openapi.json").status_code == 200  # the API document itself is public


def test_bad_input_gets_clear_errors(api: TestClient, greeting_project: Path, tmp_path: Path) -> None:
    bad = {"name": "x", "userStories": [{"id": "A", "title": "a", "passes": False, "dependsOn": ["B"]}]}
    reply = api.post("/v1/tasks", headers=AUTH, json={"project_path": str(greeting_project),
                                                      "prd": json.dumps(bad), "prd_path": "prd.json"})
    assert reply.status_code == 400 and "story A" in reply.json()["detail"] and "dependsOn" in reply.json()["detail"]
    reply = api.post("/v1/tasks", headers=AUTH, json={"project_path": str(tmp_path), "prd_path": "x.json"})
    assert reply.status_code == 400 and "not a git repository" in reply.json()["detail"]
    reply = api.post("/v1/tasks", headers=AUTH, json={"project_path": str(greeting_project),
                                                      "prd_path": "tasks/prd.json", "priority": "asap"})
    assert reply.status_code == 400 and "asap" in reply.json()["detail"]
    reply = api.post("/v1/tasks", headers=AUTH, json={"project_path": str(greeting_project),
                                                      "prd_path": "tasks/prd.json", "model": "gpt:x"})
    assert reply.status_code == 400 and "gpt:x" in reply.json()["detail"]
    assert api.get("/v1/tasks/T-999", headers=AUTH).status_code == 404
    assert api.post("/v1/tasks/T-999/cancel", headers=AUTH).status_code == 404
    assert api.post("/v1/tasks", headers=AUTH, json={"project_path": "/x", "oops": 1}).status_code == 422


def test_a_question_pauses_the_task_until_answered(api: TestClient, scheduler: Any, greeting_project: Path) -> None:
    task = submit(api, greeting_project, model="scripted:ask")
    assert wait_state(scheduler, task["id"], {"waiting_input"}) == "waiting_input"
    assert api.get("/v1/approvals", headers=AUTH).json()[0]["waiting_for"] == "What should answer.txt say?"
    reply = api.post(f"/v1/tasks/{task['id']}/answer", headers=AUTH, json={"text": "blue", "who": "dave"})
    assert reply.status_code == 200
    again = api.post(f"/v1/tasks/{task['id']}/answer", headers=AUTH, json={"text": "red"})
    assert again.status_code in (200, 409)
    # The task may ask again for step 2; answer every question until it completes.
    def answered() -> bool:
        state = task_state(scheduler, task["id"])
        if state == "waiting_input":
            api.post(f"/v1/tasks/{task['id']}/answer", headers=AUTH, json={"text": "blue", "who": "dave"})
        return state in {"completed", "failed"}
    assert wait_for(answered, 90)
    assert task_state(scheduler, task["id"]) == "completed"
    late = api.post(f"/v1/tasks/{task['id']}/answer", headers=AUTH, json={"text": "late"})
    assert late.status_code == 409 and "completed" in late.json()["detail"]
    answer = git.Repo(greeting_project).git.show(f"{task_branch(task['id'])}:answer.txt")
    assert answer == "blue"


def test_cancel_and_restart(api: TestClient, scheduler: Any, greeting_project: Path) -> None:
    task = submit(api, greeting_project, model="scripted:sleep-30")
    wait_state(scheduler, task["id"], {"running"})
    assert api.post(f"/v1/tasks/{task['id']}/cancel", headers=AUTH).json()["state"] == "cancelled"
    assert api.post(f"/v1/tasks/{task['id']}/cancel", headers=AUTH).status_code == 409
    restarted = api.post(f"/v1/tasks/{task['id']}/restart", headers=AUTH).json()
    assert restarted["state"] == "queued"
    api.post(f"/v1/tasks/{task['id']}/cancel", headers=AUTH)


def test_reports_from_a_stale_attempt_are_dropped(scheduler: Any, api: TestClient, greeting_project: Path) -> None:
    task = submit(api, greeting_project)
    wait_state(scheduler, task["id"], {"completed"})
    event = {"kind": "step_started", "task_id": task["id"], "step_id": "US-001", "title": "x", "index": 0,
             "total": 2}
    assert ray.get(scheduler.report.remote(f"{task['id']}.1-stale0", event)) is False


def test_prd_text_body_is_accepted(api: TestClient, scheduler: Any, greeting_project: Path) -> None:
    text = (greeting_project / "tasks" / "prd-greeting.md").read_text()
    reply = api.post("/v1/tasks", headers=AUTH, json={"project_path": str(greeting_project), "prd": text,
                                                      "prd_path": "prd-greeting.md", "model": "scripted:demo"})
    assert reply.status_code == 201, reply.text
    assert reply.json()["spec"]["plan"]["format"] == "ralph-markdown"
    assert wait_state(scheduler, reply.json()["id"], {"completed", "failed"}) == "completed"



def events_of(scheduler: Any, task_id: str) -> list[Any]:
    return list(from_store(scheduler, lambda store: store.events(task_id)))


def test_an_unanswered_checkpoint_takes_the_projects_default_action(api: TestClient, scheduler: Any,
                                                                     greeting_project: Path) -> None:
    configure(greeting_project, approval="each-step", approval_timeout_s=1.0)  # action: approve
    approved = submit(api, greeting_project)
    assert wait_state(scheduler, approved["id"], {"completed", "failed", "cancelled"}) == "completed"
    events = events_of(scheduler, approved["id"])
    ready = [e for e in events if e.kind == "checkpoint_ready"]
    decided = [e for e in events if e.kind == "decision_made"]
    assert [(d.step_id, d.approve, d.who) for d in decided] == [
        ("US-001", True, "hearth (approval timeout)"), ("US-002", True, "hearth (approval timeout)")]
    assert all(d.at - r.at >= 1.0 for r, d in zip(ready, decided, strict=True))

    configure(greeting_project, approval_timeout_action="cancel")
    cancelled = submit(api, greeting_project)
    assert wait_state(scheduler, cancelled["id"], {"completed", "failed", "cancelled"}) == "cancelled"
    kinds = [e.kind for e in events_of(scheduler, cancelled["id"])]
    assert kinds.count("checkpoint_ready") == 1 and kinds[-1] == "task_cancelled"
