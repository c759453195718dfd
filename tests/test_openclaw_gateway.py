"""End to end through a REAL OpenClaw gateway (one per session, tests/openclaw_session.py) with a fake
Telegram Bot API on loopback.

Hearth's sidecar (with its outbox sender) runs in this process over the session's real Ray scheduler;
the gateway loads deploy/openclaw/hearth-plugin, which calls the sidecar with the plugin token. The
user's messages and button presses are injected as Telegram updates; what the bot sends is recorded.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import git
import httpx
import pytest
from chaos_head import record
from openclaw_fixtures import make_project, wait_until
from openclaw_session import OUTSIDER, USER, Chat

from agent.project import task_branch
from cluster.store import Store

pytestmark = [pytest.mark.openclaw, pytest.mark.slow, pytest.mark.ray]


def seq_of(message: dict[str, Any]) -> int:
    return int(message["text"].split("#", 1)[1].split("]", 1)[0])



def outbox(chat: Chat, tasks: list[str]) -> list[Any]:
    """The outbox rows (chat messages and their delivery state) of ``tasks``."""
    db = Store(chat.store_path, readonly=True)
    try:
        return [e for t in tasks for e in db.outbox(t)]
    finally:
        db.close()


def test_a_question_reaches_the_chat_and_the_reply_resumes_the_task(chat: Chat, tmp_path: Path) -> None:
    project = make_project(tmp_path, "oc-ask", notify={"channel": "telegram", "target": str(USER)})
    task_id = chat.submit(project, "scripted:ask")
    first = chat.card(task_id, "Question")
    assert "What should answer.txt say?" in first["text"] and "US-001" in first["text"]
    chat.telegram.message(USER, "teal", reply_to=first)  # a reply quoting the question answers it
    chat.telegram.wait_sent(lambda m: m["text"] == f"Answer for {task_id} recorded; the task resumes.", 60,
                            "the plugin's confirmation")
    second = chat.card(task_id, "Question", after_seq=seq_of(first))
    chat.telegram.message(USER, f"/hearth answer {task_id} navy")  # or a command
    assert chat.wait_state(task_id, {"completed", "failed"}) == "completed"
    answers = [(e["answer"], e["who"]) for e in chat.events(task_id, "answer_received")]
    assert answers == [("teal", str(USER)), ("navy", str(USER))]
    assert git.Repo(project).git.show(f"{task_branch(task_id)}:answer.txt") == "navy"
    chat.card(task_id, "Completed", after_seq=seq_of(second))


def test_approve_continues_and_reject_rolls_back_and_redoes_the_step(chat: Chat, tmp_path: Path) -> None:
    project = make_project(tmp_path, "oc-approve", approval="each-step", approvers=[str(USER)],
                           notify={"channel": "telegram", "target": str(USER)})
    task_id = chat.submit(project, "scripted:demo")
    card1 = chat.card(task_id, "Checkpoint waiting for approval")
    for needle in ("US-001", "Commit: ", "Diff: ", "hello.txt", "Check: ok: US-001"):
        assert needle in card1["text"], card1["text"]
    buttons = [b["text"] for row in card1["reply_markup"]["inline_keyboard"] for b in row]
    assert buttons == ["Approve", "Reject"]
    chat.telegram.click(USER, card1, "Approve")
    card2 = chat.card(task_id, "Checkpoint waiting for approval", after_seq=seq_of(card1))
    assert "US-002" in card2["text"]
    chat.telegram.click(USER, card1, "Approve")  # the old card again: acts once, says so
    chat.telegram.wait_said(lambda text: text.endswith(f"{task_id} was already approved by {USER}."), 60,
                            "the duplicate click's answer")
    commit_before = git.Repo(project).commit(task_branch(task_id)).hexsha
    chat.telegram.click(USER, card2, "Reject")
    card3 = chat.card(task_id, "Checkpoint waiting for approval", after_seq=seq_of(card2))
    assert "US-002" in card3["text"]
    chat.telegram.click(USER, card3, "Approve")
    assert chat.wait_state(task_id, {"completed", "failed"}) == "completed"
    decisions = [(e["approve"], e["who"], e["step_id"]) for e in chat.events(task_id, "decision_made")]
    assert decisions == [(True, "111", "US-001"), (False, "111", "US-002"), (True, "111", "US-002")]
    checkpoints = [e["step_id"] for e in chat.events(task_id, "checkpoint_ready")]
    assert checkpoints == ["US-001", "US-002", "US-002"]  # the rejected step was redone
    assert commit_before != git.Repo(project).commit(task_branch(task_id)).hexsha
    chat.telegram.wait_said(lambda text: text.endswith(f"{task_id} approved by {USER}."), 5, "the edited card")


def test_a_non_approvers_click_is_refused_with_a_message_in_the_chat(chat: Chat, tmp_path: Path) -> None:
    project = make_project(tmp_path, "oc-guarded", approval="each-step", approvers=[str(USER)],
                           notify={"channel": "telegram", "target": str(USER)})
    task_id = chat.submit(project, "scripted:demo")
    card = chat.card(task_id, "Checkpoint waiting for approval")
    chat.telegram.click(OUTSIDER, card, "Approve")
    chat.telegram.wait_said(lambda text: f"{OUTSIDER} may not approve or reject {task_id}" in text, 60,
                            "the refusal in the chat")
    assert chat.state(task_id) == "awaiting_approval" and chat.events(task_id, "decision_made") == []
    httpx.post(f"{chat.sidecar.url}/v1/tasks/{task_id}/cancel", headers=chat.admin, timeout=30)


def test_the_plugin_token_cannot_cancel_or_reprioritise(chat: Chat, tmp_path: Path) -> None:
    project = make_project(tmp_path, "oc-rights", notify={"channel": "telegram", "target": str(USER)})
    task_id = chat.submit(project, "scripted:sleep-60")
    chat.wait_state(task_id, {"running"})
    plugin = {"Authorization": f"Bearer {chat.plugin_token}"}  # the token the gateway's plugin holds
    cancel = httpx.post(f"{chat.sidecar.url}/v1/tasks/{task_id}/cancel", headers=plugin, timeout=30)
    assert cancel.status_code == 403 and "'cancel'" in cancel.json()["detail"]
    priority = httpx.post(f"{chat.sidecar.url}/v1/tasks/{task_id}/priority", headers=plugin, timeout=30,
                          json={"priority": "urgent"})
    assert priority.status_code == 403 and "'priority'" in priority.json()["detail"]
    chat.telegram.message(USER, f"/hearth cancel {task_id}")  # the plugin offers no such command
    chat.telegram.wait_sent(lambda m: m["text"].startswith("Hearth commands:"), 60, "the usage text")
    chat.telegram.message(USER, "/hearth status")
    chat.telegram.wait_sent(lambda m: f"{task_id} (oc-rights) running" in m["text"], 60, "the status")
    assert chat.state(task_id) == "running"
    db = Store(chat.store_path, readonly=True)
    try:
        assert db.task(task_id).priority == 50
    finally:
        db.close()
    httpx.post(f"{chat.sidecar.url}/v1/tasks/{task_id}/cancel", headers=chat.admin, timeout=30)


def test_a_gateway_outage_loses_nothing_and_repeats_nothing(chat: Chat, tmp_path: Path) -> None:
    project = make_project(tmp_path, "oc-outage", notify={"channel": "telegram", "target": str(USER)})
    chat.gateway.stop()
    try:
        tasks = [chat.submit(project, "scripted:demo") for _ in range(3)]
        for task_id in tasks:
            chat.wait_state(task_id, {"completed"})

        wait_until(lambda: all(e.tries >= 2 for e in outbox(chat, tasks)), 60, "retries while the gateway is down")
        assert all(e.acked_at is None and "unreachable" in (e.last_error or "") for e in outbox(chat, tasks))
        chat.sidecar.__exit__(None, None, None)  # the sidecar restarts during the outage, too
        chat.sidecar = chat.new_sidecar().__enter__()
    finally:
        chat.gateway.start()
    wait_until(lambda: all(e.acked_at for e in outbox(chat, tasks)), 120, "the outbox to drain after the outage")
    for task_id in tasks:
        tagged = [m for m in chat.telegram.sent(USER) if m["text"].startswith(f"[task {task_id} #")]
        assert len(tagged) == 1 and "Completed" in tagged[0]["text"], json.dumps(tagged)
    assert all(e.outcome == "sent" and e.message_id for e in outbox(chat, tasks))


def test_approve_and_merge_from_the_final_card_merges_the_branch(chat: Chat, tmp_path: Path) -> None:
    project = make_project(tmp_path, "oc-merge", approval="final", approvers=[str(USER)],
                           notify={"channel": "telegram", "target": str(USER)})
    task_id = chat.submit(project, "scripted:demo")
    final = chat.card(task_id, "Checkpoint waiting for approval")
    assert "US-002" in final["text"] and "+goodbye" in final["text"] and "keep|merge|push" in final["text"]
    buttons = [b["text"] for row in final["reply_markup"]["inline_keyboard"] for b in row]
    assert buttons == ["Approve", "Approve & merge", "Approve & push", "Reject"]
    chat.telegram.click(USER, final, "Approve & merge")
    assert chat.wait_state(task_id, {"completed", "failed"}) == "completed"
    assert [e["finish"] for e in chat.events(task_id, "decision_made")] == ["merge"]
    finished = chat.events(task_id, "branch_finished")
    assert finished and finished[0]["ok"] and finished[0]["action"] == "merge", finished
    with git.Repo(project) as repo:
        assert repo.commit("main").hexsha == repo.commit(task_branch(task_id)).hexsha


OUTAGE_S = float(os.environ.get("HEARTH_GATEWAY_OUTAGE_S", "20"))
"""How long the chaos case keeps the gateway down (the issue asks for 10 minutes: run it once with
HEARTH_GATEWAY_OUTAGE_S=600; CI keeps it short)."""


@pytest.mark.chaos
@pytest.mark.timeout(OUTAGE_S + 900)  # the outage itself, plus the usual time to start and drain
def test_gateway_stopped_mid_task_for_a_long_outage(chat: Chat, tmp_path: Path) -> None:
    """The gateway goes down while tasks are mid-step and stays down for ``OUTAGE_S``: the tasks finish
    meanwhile, and once it is back every message people must see arrives exactly once, in order."""
    project = make_project(tmp_path, "oc-long-outage", notify={"channel": "telegram", "target": str(USER)})
    tasks = [chat.submit(project, "scripted:sleep-4") for _ in range(2)]
    for task_id in tasks:
        chat.wait_state(task_id, {"running"})
    chat.gateway.stop()
    stopped = time.monotonic()
    try:
        for task_id in tasks:
            chat.wait_state(task_id, {"completed"}, timeout_s=max(OUTAGE_S, 300))
        wait_until(lambda: time.monotonic() - stopped >= OUTAGE_S, OUTAGE_S + 5, "the outage to last", 1.0)
    finally:
        chat.gateway.start()
    back = time.monotonic()

    wait_until(lambda: all(e.acked_at for e in outbox(chat, tasks)), 300, "the outbox to drain after the outage")
    drained_s = time.monotonic() - back
    for task_id in tasks:
        tagged = [m for m in chat.telegram.sent(USER) if m["text"].startswith(f"[task {task_id} #")]
        seqs = [seq_of(m) for m in tagged]
        assert seqs == sorted(set(seqs)), f"{task_id}: repeated or out of order: {seqs}"
        assert "Completed" in tagged[-1]["text"], json.dumps(tagged)
        db = Store(chat.store_path, readonly=True)
        try:
            events = db.events(task_id, 0, 100_000)
        finally:
            db.close()
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
    record(f"OpenClaw gateway stopped mid-task for {OUTAGE_S:.0f} s", outage_s=time.monotonic() - stopped - drained_s,
           drained_after_restart_s=drained_s, tasks=len(tasks), messages=len(outbox(chat, tasks)))
