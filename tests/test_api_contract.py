"""What the sidecar's API promises, on a real Ray scheduler: tokens before anything else, strict and
clear refusals, an OpenAPI document that says what the API does, event streams that do not poll."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from openclaw_fixtures import make_project
from tests_support import ADMIN, PLUGIN, sidecar_on

from cluster.api import create_app
from cluster.scheduler import wait_for
from cluster.scheduler_client import RaySchedulerClient
from cluster.store import Store

pytestmark = pytest.mark.ray


@pytest.fixture
def api(scheduler: Any) -> TestClient:
    return sidecar_on(scheduler)


def test_a_nul_byte_in_a_path_is_a_clear_refusal_not_a_server_error(api: TestClient, tmp_path: Path) -> None:
    project = make_project(tmp_path, "nul-demo")
    for field, value in (("prd_path", "tasks/\x00prd.json"), ("project_path", f"{project}\x00")):
        body = {"project_path": str(project), "prd_path": "tasks/prd.json", "model": "scripted:demo", field: value}
        reply = api.post("/v1/tasks", headers=ADMIN, json=body)
        assert reply.status_code == 422, reply.text
        [error] = reply.json()["detail"]
        assert error["loc"] == ["body", field] and "NUL byte" in error["msg"]


def test_priorities_are_ints_or_names_never_booleans(api: TestClient, tmp_path: Path) -> None:
    project = make_project(tmp_path, "strict-demo")
    body = {"project_path": str(project), "prd_path": "tasks/prd.json", "model": "scripted:sleep-30"}
    for bad in (True, False, 50.5, [50]):
        reply = api.post("/v1/tasks", headers=ADMIN, json={**body, "priority": bad})
        assert reply.status_code == 422, (bad, reply.text)
        assert any(e["loc"][:2] == ["body", "priority"] for e in reply.json()["detail"])
    task = api.post("/v1/tasks", headers=ADMIN, json={**body, "priority": "high"}).json()
    try:
        reply = api.post(f"/v1/tasks/{task['id']}/priority", headers=ADMIN, json={"priority": True})
        assert reply.status_code == 422, reply.text
        assert api.get(f"/v1/tasks/{task['id']}", headers=ADMIN).json()["priority"] == 75
    finally:
        api.post(f"/v1/tasks/{task['id']}/cancel", headers=ADMIN)


def test_the_token_is_checked_before_the_body_is_parsed(api: TestClient) -> None:
    broken = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
    reply = api.post("/v1/tasks", **broken)  # type: ignore[arg-type]
    assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer", reply.text
    reply = api.post("/v1/tasks", **{**broken, "headers": {**broken["headers"], "Authorization": "Bearer nope"}})  # type: ignore[arg-type, dict-item]
    assert reply.status_code == 401
    reply = api.post("/v1/tasks/T-1/priority", **{**broken, "headers": {**broken["headers"], **PLUGIN}})  # type: ignore[arg-type, dict-item]
    assert reply.status_code == 403 and "'priority'" in reply.json()["detail"]
    reply = api.post("/v1/tasks", **{**broken, "headers": {**broken["headers"], **ADMIN}})  # type: ignore[arg-type, dict-item]
    assert reply.status_code == 422 and reply.json()["detail"][0]["type"] == "json_invalid"


def test_the_openapi_document_declares_the_bearer_scheme_and_every_refusal(api: TestClient) -> None:
    document = api.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert operation.get("security"), (method, path)
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
            if "{task_id}" in path:
                assert "404" in operation["responses"], (method, path)
    submit = document["paths"]["/v1/tasks"]["post"]["responses"]
    assert submit["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorDetail")
    assert "409" in document["paths"]["/v1/tasks/{task_id}/cancel"]["post"]["responses"]


def test_405_names_every_method_the_path_has(api: TestClient) -> None:
    reply = api.put("/v1/tasks", headers=ADMIN)
    assert reply.status_code == 405
    assert set(reply.headers["allow"].split(", ")) >= {"GET", "POST"}


def test_refusals_are_400_sentences_and_schema_breaks_are_422_lists(api: TestClient, tmp_path: Path) -> None:
    reply = api.post("/v1/tasks", headers=ADMIN, json={"project_path": str(tmp_path), "prd_path": "x.json"})
    assert reply.status_code == 400 and isinstance(reply.json()["detail"], str)
    reply = api.get("/v1/tasks", headers=ADMIN, params={"state": "sleepy"})
    assert reply.status_code == 422 and isinstance(reply.json()["detail"], list)


def test_idle_event_streams_do_not_poll_the_store(scheduler: Any, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Twenty followers of a task that says nothing: the sidecar reads its events once per stream,
    then waits on the feed (it used to read the store ten times a second per stream)."""
    project = make_project(tmp_path, "quiet-demo")
    app = create_app(RaySchedulerClient(scheduler), Path(scheduler.state_dir) / "hearth.db", "admin-token")
    client = TestClient(app)
    task = client.post("/v1/tasks", headers=ADMIN, json={"project_path": str(project), "prd_path": "tasks/prd.json",
                                                         "model": "scripted:sleep-600"}).json()
    reads: list[str] = []
    real_events = Store.events

    def counted(self: Store, task_id: str, after_seq: int = 0, limit: int = 1000) -> Any:
        reads.append(task_id)
        return real_events(self, task_id, after_seq, limit)

    monkeypatch.setattr(Store, "events", counted)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started, 30)
        port = server.servers[0].sockets[0].getsockname()[1]
        assert wait_for(lambda: client.get(f"/v1/tasks/{task['id']}", headers=ADMIN).json()["state"] == "running", 90)
        streams = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=ADMIN, timeout=30) as http:
            for _ in range(20):
                stream = http.stream("GET", f"/v1/tasks/{task['id']}/events")
                stream.__enter__()
                streams.append(stream)
            assert wait_for(lambda: reads.count(task["id"]) >= 20, 30)
            settled = len(reads)
            time.sleep(2.0)  # a window of idleness to count reads in (not a synchronisation)
            idle_reads = len(reads) - settled
            for stream in streams:
                stream.__exit__(None, None, None)
        assert idle_reads <= 20, f"{idle_reads} store reads in 2 s by 20 idle streams"
    finally:
        client.post(f"/v1/tasks/{task['id']}/cancel", headers=ADMIN)
        server.should_exit = True
        thread.join(30)
