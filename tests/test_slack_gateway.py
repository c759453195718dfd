"""Slack as a team uses it, end to end: the REAL ``@openclaw/slack`` plugin (HTTP / Events API mode)
inside the session's real OpenClaw gateway (tests/openclaw_session.py), its Web API pointed at
``FakeSlack`` on loopback, which records every call. The team's side (thread replies, button clicks,
the reason dialog, ``/hearth`` commands) is POSTed to the gateway's webhook signed the way Slack
signs. The asserts are what the channel shows: one thread per task, updated cards, refusals.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import git
import httpx
import pytest
from openclaw_fixtures import make_project, wait_until
from openclaw_session import Chat
from slack_fixtures import FakeSlack

from agent.project import task_branch

pytestmark = [pytest.mark.openclaw, pytest.mark.slow, pytest.mark.ray]
ALICE, MALLORY = "U0ALICE", "U0MALLORY"
CHANNEL = "C0HEARTH"


def slack_project(tmp_path: Path, name: str, **config: Any) -> Path:
    return make_project(tmp_path, name, approvers=[f"slack:{ALICE}"],
                        notify={"channel": "slack", "target": f"channel:{CHANNEL}"}, **config)


def tagged(slack: FakeSlack, task_id: str) -> list[dict[str, Any]]:
    """The bot's messages about ``task_id`` (each carries ``[task T-n #seq]``), oldest first."""
    return [m for m in slack.posted(CHANNEL) if f"[task {task_id} #" in m["text"]]


def after(slack: FakeSlack, task_id: str, message: dict[str, Any]) -> int:
    """How many of the task's messages come up to and including ``message`` (found by its ts)."""
    return 1 + [m["ts"] for m in tagged(slack, task_id)].index(message["ts"])


def wait_tagged(slack: FakeSlack, task_id: str, word: str, skip: int = 0, timeout_s: float = 120) -> dict[str, Any]:
    """The first of the task's messages past the first ``skip`` that contains ``word``."""
    def find() -> dict[str, Any] | None:
        return next((m for m in tagged(slack, task_id)[skip:] if word in m["text"]), None)

    return dict(wait_until(find, timeout_s, f"a '{word}' message about {task_id}"))


def wait_said(slack: FakeSlack, predicate: Any, what: str, timeout_s: float = 90) -> dict[str, Any]:
    return slack.wait_message(lambda m: predicate(m["text"]), timeout_s, what)


def responses(slack: FakeSlack) -> list[str]:
    """What only the asker saw: said through a response URL or ``chat.postEphemeral`` (the answers to a
    click or a slash command; both are shown in the channel where it happened, to that person only)."""
    said = slack.method_calls("response_url") + slack.method_calls("chat.postEphemeral")
    return [str(b.get("text", "")) for b in said]


SLASH_FAILED = "Sorry, something went wrong handling that command."
"""What @openclaw/slack answers when the gateway refused to run a slash command: OpenClaw 2026.9.6
refuses new command sessions while it runs its own SQLite maintenance ("Gateway is draining; new tasks
are not accepted" in its log), which on a loaded machine takes seconds. A person sends it again."""


def slash(slack: FakeSlack, user: str, channel: str, text: str, expect: str, tries: int = 6) -> str:
    """``user`` types ``/hearth text`` (again, if the gateway refused it) until the answer has ``expect``."""
    for _ in range(tries):
        seen = len(responses(slack))
        assert slack.slash(user, channel, text).status_code == 200
        answers = wait_until(lambda n=seen: responses(slack)[n:], 90, f"an answer to /hearth {text}")
        if any(expect in answer for answer in answers):
            return str(next(a for a in answers if expect in a))
        assert all(answer == SLASH_FAILED for answer in answers), answers
    raise AssertionError(f"/hearth {text}: the gateway refused it {tries} times")


def test_a_task_has_one_thread_where_replies_answer_its_questions(chat: Chat, tmp_path: Path) -> None:
    slack = chat.slack
    project = slack_project(tmp_path, "sl-ask")
    task_id = chat.submit(project, "scripted:ask")
    opened = wait_tagged(slack, task_id, "Placed on node")
    assert opened["thread_ts"] is None  # the task's first message opens its thread
    question = wait_tagged(slack, task_id, "What should answer.txt say?")
    assert question["thread_ts"] == opened["ts"] and f"<@{ALICE}>" in question["text"]
    assert slack.say(ALICE, CHANNEL, "teal, the colour", thread_ts=opened["ts"]).status_code == 200
    confirmation = wait_said(slack, lambda t: t == f"Answer for {task_id} recorded from <@{ALICE}>; the task resumes.",
                             "the confirmation in the thread")
    assert confirmation["thread_ts"] == opened["ts"]
    second = wait_tagged(slack, task_id, "What should answer.txt say?", skip=after(slack, task_id, question))
    assert second["thread_ts"] == opened["ts"]
    slash(slack, ALICE, CHANNEL, f"answer {task_id} navy", f"Answer for {task_id} recorded")  # or the command
    assert chat.wait_state(task_id, {"completed", "failed"}) == "completed"
    answers = [(e["answer"], e["who"]) for e in chat.events(task_id, "answer_received")]
    assert answers == [("teal, the colour", ALICE), ("navy", ALICE)]  # verbatim, with the Slack user
    assert git.Repo(project).git.show(f"{task_branch(task_id)}:answer.txt") == "navy"
    done = wait_tagged(slack, task_id, "Completed")
    assert all(m["thread_ts"] == opened["ts"] for m in tagged(slack, task_id)[1:])  # one thread, all of it
    assert done["thread_ts"] == opened["ts"]
    # The task ended: a late reply in its thread is told so and changes nothing.
    slack.say(ALICE, CHANNEL, "actually, make it red", thread_ts=opened["ts"])
    wait_said(slack, lambda t: t.startswith(f"{task_id} has ended (completed)"), "the refusal in the ended thread")
    assert len(chat.events(task_id, "answer_received")) == 2


def test_a_second_answer_to_an_answered_question_is_refused_and_changes_nothing(chat: Chat, tmp_path: Path) -> None:
    slack = chat.slack
    task_id = chat.submit(slack_project(tmp_path, "sl-twice"), "scripted:ask")
    opened = wait_tagged(slack, task_id, "Placed on node")
    wait_tagged(slack, task_id, "What should answer.txt say?")
    slack.say(ALICE, CHANNEL, "teal", thread_ts=opened["ts"])
    chat.wait_state(task_id, {"running", "waiting_input", "completed"})
    wait_until(lambda: chat.events(task_id, "answer_received"), 90, "the first answer")
    # The same question again through the command, naming its number: refused, nothing recorded.
    asked = chat.events(task_id, "clarification_requested")[0]["seq"]
    refusal = slash(slack, MALLORY, CHANNEL, f"answer {task_id} #{asked} crimson", "already answered by")
    assert refusal.startswith(f"{task_id}: that question was already answered by {ALICE}")
    assert [e["answer"] for e in chat.events(task_id, "answer_received")] == ["teal"]
    httpx.post(f"{chat.sidecar.url}/v1/tasks/{task_id}/cancel", headers=chat.admin, timeout=30)


def test_checkpoint_cards_approve_reject_with_a_reason_and_refuse_others(chat: Chat, tmp_path: Path) -> None:
    slack = chat.slack
    project = slack_project(tmp_path, "sl-approve", approval="each-step")
    task_id = chat.submit(project, "scripted:demo")
    opened = wait_tagged(slack, task_id, "Placed on node")
    card1 = wait_tagged(slack, task_id, "Checkpoint")
    assert card1["thread_ts"] == opened["ts"]
    kinds = [b["type"] for b in card1["blocks"]]
    assert kinds[:2] == ["section", "header"] and kinds[-1] == "actions", kinds  # tag line, then Block Kit
    text = "\n".join(b.get("text", {}).get("text", "") for b in card1["blocks"] if b["type"] == "section")
    for needle in ("*Commit*", "*Diff*", "*Check*", "ok: US-001", "*Files changed*", "hello.txt"):
        assert needle in text, text
    labels = [e["text"]["text"] for b in card1["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert labels == ["Approve", "Reject"]
    # Someone who is not an approver: told so (only them), nothing decided, the card keeps its buttons.
    assert slack.click(MALLORY, card1, "Approve").status_code == 200
    wait_until(lambda: any(f"{MALLORY} may not approve or reject {task_id}" in r for r in responses(slack)), 90,
               "the refusal of a non-approver")
    assert chat.state(task_id) == "awaiting_approval" and chat.events(task_id, "decision_made") == []
    # The approver approves: the card is updated in place, saying who and when, without buttons.
    slack.click(ALICE, card1, "Approve")
    updated = wait_until(lambda: next((m for m in slack.posted(CHANNEL) if m["ts"] == card1["ts"]
                                       and m.get("edited")), None), 90, "the updated card")
    assert "actions" not in [b["type"] for b in updated["blocks"]]
    assert any(f"Approved by <@{ALICE}> at " in e["text"] for b in updated["blocks"] if b["type"] == "context"
               for e in b["elements"])
    # Reject opens a dialog for the reason; submitting it rejects with that reason and updates the card.
    card2 = wait_tagged(slack, task_id, "Checkpoint", skip=after(slack, task_id, card1))
    slack.click(ALICE, card2, "Reject")
    dialog = wait_until(lambda: slack.method_calls("views.open", authed_only=True), 90, "the reason dialog")[-1]
    assert dialog["view"]["type"] == "modal" and task_id in dialog["view"]["title"]["text"]
    assert slack.submit_view(ALICE, dialog, {"reason": "say hello to the whole world"}).status_code == 200
    wait_until(lambda: len(chat.events(task_id, "decision_made")) == 2, 90, "the rejection")
    wait_until(lambda: any(m["ts"] == card2["ts"] and m.get("edited") and "Rejected by" in str(m["blocks"])
                           for m in slack.posted(CHANNEL)), 90, "the rejected card")
    # The redone step's card: a reply in the thread decides it too.
    card3 = wait_tagged(slack, task_id, "Checkpoint", skip=after(slack, task_id, card2))
    slack.say(ALICE, CHANNEL, "approve", thread_ts=opened["ts"])
    assert chat.wait_state(task_id, {"completed", "failed"}) == "completed"
    decisions = [(e["approve"], e["who"], e["step_id"], e["reason"]) for e in chat.events(task_id, "decision_made")]
    assert decisions == [(True, ALICE, "US-001", ""), (False, ALICE, "US-002", "say hello to the whole world"),
                         (True, ALICE, "US-002", "")]
    assert card3["thread_ts"] == opened["ts"]


def test_hearth_commands_answer_in_the_asking_channel_and_name_unknowns(chat: Chat, tmp_path: Path) -> None:
    slack = chat.slack
    task_id = chat.submit(slack_project(tmp_path, "sl-cmds"), "scripted:sleep-60")
    chat.wait_state(task_id, {"running"})
    before = len(slack.method_calls("chat.postMessage"))
    for text, expect in ((f"status {task_id}", f"{task_id} (sl-cmds: "), ("tasks", f"{task_id} (sl-cmds) running"),
                         ("status T-99999", "There is no task T-99999."),
                         ("submit no-such-project tasks/prd.json", "Not submitted: ")):
        slash(slack, ALICE, "C0ELSEWHERE", text, expect)
    posts = slack.method_calls("chat.postMessage")[before:]
    assert not [p for p in posts if p.get("channel") == "C0ELSEWHERE" or "There is no task" in str(p)]
    httpx.post(f"{chat.sidecar.url}/v1/tasks/{task_id}/cancel", headers=chat.admin, timeout=30)


def test_forged_and_stale_signatures_get_401_and_change_nothing(chat: Chat, tmp_path: Path) -> None:
    slack = chat.slack
    task_id = chat.submit(slack_project(tmp_path, "sl-forged", approval="each-step"), "scripted:demo")
    card = wait_tagged(slack, task_id, "Checkpoint")
    forged = slack.click(ALICE, card, "Approve", secret="not-the-signing-secret")
    stale = slack.click(ALICE, card, "Approve", timestamp=int(time.time()) - 600)
    assert (forged.status_code, stale.status_code) == (401, 401)
    assert slack.slash(ALICE, CHANNEL, "tasks", secret="guess").status_code == 401
    assert chat.state(task_id) == "awaiting_approval" and chat.events(task_id, "decision_made") == []
    httpx.post(f"{chat.sidecar.url}/v1/tasks/{task_id}/cancel", headers=chat.admin, timeout=30)
