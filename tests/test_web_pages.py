"""What the pages show, without Ray: the board's columns and filter, the inbox's order, a task's plan
and waiting card, the nodes from a hand-made NVML-shaped inventory. The store is real (written
through its lifecycle); these pages only read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from web_support import SchedulerNotAsked, login, recorded_nodes, seed_task

from agent.artifacts import ArtifactRef, ContentStore
from agent.events import CheckpointReady
from cluster.api import create_app
from cluster.blobs import BlobStore
from cluster.store import Store

TOKEN = "pages-token"


@pytest.fixture
def site(tmp_path: Path) -> tuple[TestClient, Store]:
    db = Store(tmp_path / "hearth.db")
    app = create_app(SchedulerNotAsked(), tmp_path / "hearth.db", TOKEN)

    async def recorded() -> list[dict[str, Any]]:
        return recorded_nodes(running=["T-2"])

    app.state.hearth_web.nodes_source = recorded
    client = TestClient(app)
    return client, db


def column_ids(html: str, column: str) -> list[str]:
    section = re.search(rf'data-column="{column}">(.*?)</section>', html, re.S)
    assert section, column
    return re.findall(r'data-task="(T-\d+)"', section.group(1))


def test_the_board_puts_tasks_in_their_columns_and_filters_by_project(site: tuple[TestClient, Store]) -> None:
    client, db = site
    queued = seed_task(db, "queued", project="alpha")
    running = seed_task(db, "running", project="beta")
    asking = seed_task(db, "waiting_input", project="alpha")
    review = seed_task(db, "awaiting_approval", project="alpha")
    login(client, TOKEN)
    html = client.get("/ui/").text
    assert column_ids(html, "queued") == [queued] and column_ids(html, "running") == [running]
    assert column_ids(html, "waiting_input") == [asking] and column_ids(html, "awaiting_approval") == [review]
    card = re.search(rf'id="card-{running}".*?</a>', html, re.S).group(0)  # type: ignore[union-attr]
    assert "beta" in card and "step 1/2" in card and "node-record" in card and "normal" in card
    assert 'id="inbox-count" class="count">2<' in html
    alpha = client.get("/ui/", params={"project": "alpha"}).text
    assert column_ids(alpha, "running") == [] and column_ids(alpha, "queued") == [queued]
    assert '<option value="beta">beta</option>' in alpha


def test_the_inbox_lists_whatever_waits_for_a_person_oldest_first(site: tuple[TestClient, Store]) -> None:
    client, db = site
    first = seed_task(db, "awaiting_approval")
    second = seed_task(db, "waiting_input")
    seed_task(db, "running")
    login(client, TOKEN)
    html = client.get("/ui/inbox").text
    assert re.findall(r'<section class="card waiting (\w+)" data-task="(T-\d+)"', html) == [
        ("approval", first), ("question", second)]
    assert "Which colour?" in html and "hello.txt | 1 +" in html
    assert html.count('name="next" value="/ui/inbox"') == 3  # answer, approve, reject come back here


def test_a_task_page_shows_its_plan_and_waiting_question(site: tuple[TestClient, Store]) -> None:
    client, db = site
    task_id = seed_task(db, "waiting_input")
    login(client, TOKEN)
    html = client.get(f"/ui/tasks/{task_id}").text
    plan = re.search(r'id="plan">(.*?)</table>', html, re.S).group(1)  # type: ignore[union-attr]
    assert re.search(r"US-001.*?step-waiting", plan, re.S) and re.search(r"US-002.*?step-pending", plan, re.S)
    assert 'id="question"' in html and "Which colour?" in html and 'id="answer-text"' in html
    assert 'id="artifacts-none"' in html and 'id="tokens-none"' in html  # none yet, and it says so
    assert "clarification requested" in html  # the event log
    assert client.get("/ui/tasks/T-999").status_code == 404


def test_the_nodes_cards_show_vram_from_a_hand_made_nvml_shaped_inventory(site: tuple[TestClient, Store]) -> None:
    client, _ = site
    login(client, TOKEN)
    html = client.get("/ui/nodes/cards").text
    assert html.count('class="gpu"') == 2 and "NVIDIA GeForce RTX 3090" in html
    assert "17.5 GiB used" in html and "6.5 GiB free" in html and 'style="width: 73.0%"' in html
    assert "1 / 4 busy" in html and 'href="/ui/tasks/T-2"' in html
    assert 'class="card node lost"' in html


def test_a_steps_transcript_is_readable_and_only_the_tasks_own_files_are(site: tuple[TestClient, Store],
                                                                        tmp_path: Path) -> None:
    client, db = site
    task_id = seed_task(db, "running", project_path=str(tmp_path / "proj"))
    # Kept on the head beside its store (cluster/blobs.py), as attempts on any box send them.
    BlobStore(tmp_path / "blobs").put(task_id, "transcripts", "US-001.attempt-1.json", json.dumps([
        {"role": "user", "content": "Write hello.txt"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "write_file", "arguments": '{"path": "hello.txt"}'}}]},
    ]).encode())
    (tmp_path / "secret.json").write_text("[]")
    login(client, TOKEN)
    link = f'href="/ui/tasks/{task_id}/transcripts/US-001.attempt-1.json"'
    assert link in client.get(f"/ui/tasks/{task_id}").text
    page = client.get(f"/ui/tasks/{task_id}/transcripts/US-001.attempt-1.json").text
    assert "Write hello.txt" in page and "write_file(" in page
    for name in ("..%2F..%2F..%2F..%2Fsecret.json", "secret.json"):
        assert client.get(f"/ui/tasks/{task_id}/transcripts/{name}").status_code == 404


def test_a_tasks_artifacts_are_listed_and_download_with_their_hash(site: tuple[TestClient, Store],
                                                                   tmp_path: Path) -> None:
    import hashlib

    client, db = site
    task_id = seed_task(db, "running")
    body = b"#!/bin/sh\necho built\n"
    sha = hashlib.sha256(body).hexdigest()
    ContentStore(tmp_path / "artifacts").put([body], sha256=sha, size=len(body), name="dist/app")  # the head's store
    refs = [ArtifactRef(name="dist/app", kind="file", sha256=sha, size=len(body), path="dist/app"),
            ArtifactRef(name="image", kind="image", sha256="f" * 64, size=1, image_tag="hearth/app:T-1",
                        stored=False)]
    db.append_event(CheckpointReady(task_id=task_id, attempt_id=db.task(task_id).attempt_id, step_id="US-001",
                                    commit="c" * 40, snapshot_id="s", diff_stat="", files_changed=[],
                                    check_summary="check passed", artifacts=refs))
    login(client, TOKEN)
    html = client.get(f"/ui/tasks/{task_id}").text
    table = re.search(r'id="artifacts">(.*?)</table>', html, re.S).group(1)  # type: ignore[union-attr]
    assert sha[:12] in table and "hearth/app:T-1" in table and "Docker engine only" in table
    link = re.search(r'href="(/ui/tasks/[^"]+/artifacts/[^"]+)"', table).group(1)  # type: ignore[union-attr]
    reply = client.get(link.replace("&amp;", "&"))
    assert reply.status_code == 200 and reply.content == body and reply.headers["x-hearth-sha256"] == sha
    assert client.get(f"/ui/tasks/{task_id}/artifacts/image").status_code == 409  # no bytes on the head
    assert client.get(f"/ui/tasks/{task_id}/artifacts/nothing").status_code == 404
    client.cookies.clear()
    assert client.get(link.replace("&amp;", "&"), follow_redirects=False).status_code in (303, 401)
