"""The web page's doors, without Ray: sessions, roles, approvers, CSRF, tokens, PRD errors, /metrics.

The store is real (tasks written through its lifecycle as the scheduler writes them); the scheduler
is never reached here: each case is refused before any write, and the stand-in fails the test if it
were asked.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner
from web_support import SchedulerNotAsked, csrf_of, login, recorded_nodes, seed_task

from cluster import people_tokens
from cluster.api import create_app
from cluster.store import Store

ADMIN_TOKEN = "admin-token-for-web-tests"
PLUGIN_TOKEN = "plugin-token-for-web-tests"


@pytest.fixture
def site(tmp_path: Path) -> tuple[TestClient, Store, Path]:
    db = Store(tmp_path / "hearth.db")
    app = create_app(SchedulerNotAsked(), tmp_path / "hearth.db", ADMIN_TOKEN, plugin_token=PLUGIN_TOKEN)

    async def recorded() -> list[dict[str, Any]]:
        return recorded_nodes()

    app.state.hearth_web.nodes_source = recorded
    return TestClient(app), db, tmp_path


def test_every_page_and_action_without_a_session_leads_to_the_login(site: tuple[TestClient, Store, Path]) -> None:
    client, db, _ = site
    task_id = seed_task(db, "awaiting_approval")
    from cluster.web import actions, live, pages

    routes = [(m, r.path) for router in (pages.router, actions.router, live.router) for r in router.routes
              for m in getattr(r, "methods", ()) if r.path not in {"/ui/login", "/ui/static/pygments.css"}]
    assert len(routes) >= 16, routes
    for method, path in routes:
        concrete = path.replace("{task_id}", task_id).replace("{name}", "US-001.attempt-1.json")
        reply = client.request(method, concrete, follow_redirects=False)
        if path.startswith("/ui/live/"):
            assert reply.status_code == 401, (method, path)
            continue
        assert reply.status_code == 303, (method, path, reply.status_code)
        assert reply.headers["location"].startswith("/ui/login"), (method, path)
        with_htmx = client.request(method, concrete, headers={"HX-Request": "true"}, follow_redirects=False)
        assert with_htmx.status_code == 401 and with_htmx.headers["HX-Redirect"].startswith("/ui/login")
    assert client.get("/", follow_redirects=True).url.path == "/ui/login"
    assert db.task(task_id).state.value == "awaiting_approval"


def test_login_sets_an_httponly_session_and_never_puts_a_token_in_a_url(site: tuple[TestClient, Store, Path]) -> None:
    client, _, _ = site
    wrong = client.post("/ui/login", data={"token": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not one this cluster knows" in wrong.text
    plugin = client.post("/ui/login", data={"token": PLUGIN_TOKEN}, follow_redirects=False)
    assert plugin.status_code == 403 and "token cannot log in" in plugin.text
    assert "hearth_session" not in plugin.headers.get("set-cookie", "")
    evil = client.post("/ui/login", data={"token": ADMIN_TOKEN, "next": "https://evil.example/"},
                       follow_redirects=False)
    assert evil.status_code == 303 and evil.headers["location"] == "/ui/"
    cookie = evil.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and ADMIN_TOKEN.lower() not in cookie
    board = client.get("/ui/")
    assert board.status_code == 200 and ADMIN_TOKEN not in board.text
    assert "script-src 'self';" in board.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in board.headers["content-security-policy"]
    assert board.headers["x-frame-options"] == "DENY"  # an Approve button cannot be clickjacked
    assert all(ADMIN_TOKEN not in str(r.url) for r in [*board.history, board])
    client.post("/ui/logout", data={"csrf": csrf_of(board.text)})
    assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_a_reader_session_cannot_approve_answer_or_cancel(site: tuple[TestClient, Store, Path]) -> None:
    client, db, state_dir = site
    waiting = seed_task(db, "awaiting_approval")
    asking = seed_task(db, "waiting_input")
    csrf = login(client, people_tokens.add(state_dir, "rita", "reader"))
    page = client.get(f"/ui/tasks/{waiting}").text
    assert 'id="approve"' not in page and "cannot approve or reject" in page
    for path, form in [(f"/ui/tasks/{waiting}/decision", {"decision": "approve", "checkpoint": "4"}),
                       (f"/ui/tasks/{asking}/answer", {"text": "teal"}),
                       (f"/ui/tasks/{waiting}/cancel", {})]:
        reply = client.post(path, data={**form, "csrf": csrf})
        assert reply.status_code == 403 and "rita (reader) may not" in reply.text, path
    assert db.task(waiting).state.value == "awaiting_approval" and db.task(asking).state.value == "waiting_input"


def test_a_member_who_is_not_among_the_projects_approvers_is_refused(site: tuple[TestClient, Store, Path]) -> None:
    client, db, state_dir = site
    task_id = seed_task(db, "awaiting_approval", approvers=["slack:U42", "web:alice"])
    csrf = login(client, people_tokens.add(state_dir, "mallory", "member"))
    assert "Only slack:U42, web:alice may approve" in client.get(f"/ui/tasks/{task_id}").text
    reply = client.post(f"/ui/tasks/{task_id}/decision", data={"decision": "approve", "csrf": csrf})
    assert reply.status_code == 403 and "mallory may not approve or reject" in reply.text
    assert db.task(task_id).state.value == "awaiting_approval"


def test_forms_without_the_sessions_csrf_token_or_from_another_site_are_refused(
        site: tuple[TestClient, Store, Path]) -> None:
    client, db, _ = site
    task_id = seed_task(db, "running")
    csrf = login(client, ADMIN_TOKEN)
    url = f"/ui/tasks/{task_id}/cancel"
    assert client.post(url, data={}).status_code == 403
    assert "CSRF check failed" in client.post(url, data={"csrf": "forged"}).text
    other = client.post(url, data={"csrf": csrf}, headers={"Origin": "https://evil.example"})
    assert other.status_code == 403 and "another site" in other.text
    assert db.task(task_id).state.value == "running"


def test_removing_a_persons_token_ends_their_session(site: tuple[TestClient, Store, Path]) -> None:
    client, _, state_dir = site
    login(client, people_tokens.add(state_dir, "bob", "member"))
    assert client.get("/ui/inbox").status_code == 200
    people_tokens.remove(state_dir, "bob")
    assert client.get("/ui/inbox", follow_redirects=False).status_code == 303


def test_hearth_token_add_prints_the_token_once_and_keeps_only_its_hash(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster.cli import app

    monkeypatch.setenv("HEARTH_STATE_DIR", str(tmp_path))
    made = CliRunner().invoke(app, ["token", "add", "alice", "--role", "member"])
    assert made.exit_code == 0, made.output
    token = made.output.strip().splitlines()[-1].strip()
    stored = (tmp_path / "people.json").read_text()
    assert token not in stored and "alice" in stored
    assert stat.S_IMODE((tmp_path / "people.json").stat().st_mode) == 0o600
    assert people_tokens.find(tmp_path, token).name == "alice"  # type: ignore[union-attr]
    again = CliRunner().invoke(app, ["token", "add", "alice", "--role", "member"])
    assert again.exit_code == 2 and "already has a token" in again.output
    bad = CliRunner().invoke(app, ["token", "add", "eve", "--role", "boss"])
    assert bad.exit_code == 2 and "unknown role 'boss'" in bad.output
    listed = CliRunner().invoke(app, ["token", "list"])
    assert "alice" in listed.output and "member" in listed.output and token not in listed.output


def test_the_plan_preview_shows_a_prds_problem_with_file_story_and_field(
        site: tuple[TestClient, Store, Path]) -> None:
    client, db, _ = site
    seed_task(db, "queued")
    csrf = login(client, ADMIN_TOKEN)
    bad = ('{"name": "x", "userStories": [{"id": "US-001", "title": "a", "passes": false},'
           ' {"id": "US-002", "title": "b", "passes": false, "dependsOn": ["US-009"]}]}')
    reply = client.post("/ui/submit/preview", data={"csrf": csrf, "prd": bad, "filename": "tasks/prd.json"})
    assert reply.status_code == 200
    assert 'id="prd-error-file">tasks/prd.json<' in reply.text
    assert 'id="prd-error-story">US-002<' in reply.text and 'id="prd-error-field">dependsOn<' in reply.text
    good = bad.replace('"US-009"', '"US-001"')
    table = client.post("/ui/submit/preview", data={"csrf": csrf, "prd": good, "filename": "prd.json"}).text
    assert 'id="plan-table"' in table and table.index("US-001") < table.index("US-002")
    upload = client.post("/ui/submit/preview", data={"csrf": csrf},
                         files={"file": ("prd.json", good.encode(), "application/json")}).text
    assert 'id="plan-table"' in upload
    refused = client.post("/ui/submit", data={"csrf": csrf, "project": "web-demo", "prd": bad})
    assert refused.status_code == 422 and 'id="prd-error-story">US-002<' in refused.text


def test_metrics_are_scraped_and_parsed_with_prometheus_clients_parser(
        site: tuple[TestClient, Store, Path]) -> None:
    client, db, state_dir = site
    for state in ("queued", "queued", "running", "waiting_input", "awaiting_approval"):
        seed_task(db, state)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {PLUGIN_TOKEN}"}).status_code == 401
    reader = people_tokens.add(state_dir, "prometheus", "reader")
    reply = client.get("/metrics", headers={"Authorization": f"Bearer {reader}"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    tasks = {s.labels["state"]: s.value for s in families["hearth_tasks"].samples}
    assert tasks["queued"] == 2 and tasks["running"] == 1 and tasks["awaiting_approval"] == 1
    assert tasks["completed"] == 0
    waits = [s for s in families["hearth_queue_wait_seconds"].samples if s.name.endswith("_count")]
    assert waits[0].value == 3  # three placements
    attempts = {s.labels["reason"]: s.value for s in families["hearth_attempts"].samples}
    assert attempts == {"running": 3}
    used = {(s.labels["node"], s.labels["gpu"]): s.value for s in families["hearth_node_vram_used_mib"].samples}
    assert used[("9f2c41e07b5d", "0")] == 17946 and used[("9f2c41e07b5d", "1")] == 5816
    free = {s.labels["gpu"]: s.value for s in families["hearth_node_vram_free_mib"].samples}
    assert free == {"0": 6630, "1": 18760}
    up = {s.labels["node"]: s.value for s in families["hearth_node_up"].samples}
    assert up == {"9f2c41e07b5d": 1, "3b8e6f0a2c4d": 0}
    models = {s.labels["model"] for s in families["hearth_model_containers"].samples}
    assert models == {"docker:qwen2.5-coder-7b", "docker:llama3.2-3b-ollama"}
    for name in ("hearth_step_duration_seconds", "hearth_tokens", "hearth_outbox_pending",
                 "hearth_outbox_lag_seconds", "hearth_sse_clients", "hearth_queue_oldest_wait_seconds"):
        assert name in families, name


def test_a_persons_token_works_on_the_api_with_its_roles_rights_and_speaks_as_them(
        site: tuple[TestClient, Store, Path]) -> None:
    client, db, state_dir = site
    task_id = seed_task(db, "awaiting_approval", approvers=["web:alice"])
    reader = {"Authorization": f"Bearer {people_tokens.add(state_dir, 'rita', 'reader')}"}
    assert client.get("/v1/tasks", headers=reader).status_code == 200
    denied = client.post(f"/v1/tasks/{task_id}/decision", headers=reader, json={"decision": "approve"})
    assert denied.status_code == 403 and "lacks the 'decide' right" in denied.json()["detail"]
    member = {"Authorization": f"Bearer {people_tokens.add(state_dir, 'mallory', 'member')}"}
    posing = client.post(f"/v1/tasks/{task_id}/decision", headers=member,  # claims to be alice: speaks as mallory
                         json={"decision": "approve", "who": "alice", "channel": "web"})
    assert posing.status_code == 403 and "mallory may not approve" in posing.json()["detail"]
    assert db.task(task_id).state.value == "awaiting_approval"
