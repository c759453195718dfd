"""Slack threads, cards and setup without a gateway (the gateway end to end is test_slack_gateway.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from test_openclaw_outbox import TOKEN, checkpoint, done, drain, make_task

from agent.events import ClarificationRequested, TaskPlaced
from cluster.openclaw import Card, Notifier
from cluster.slack import decided_blocks, slack_presentation, thread_reply
from cluster.store import Store

SLACK = {"channel": "slack", "target": "channel:C0HEARTH"}


class ThreadRecorder:
    """A sender that answers like Slack: each message gets a ``ts``; records the thread it went to."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, *, channel: str, target: str, card: Card, idempotency_key: str,
                   thread_id: str | None = None) -> str | None:
        ts = f"1800000000.{len(self.sent) + 1:06d}"
        self.sent.append({"ts": ts, "thread": thread_id, "card": card, "channel": channel})
        return ts


def placed(task_id: str) -> TaskPlaced:
    return TaskPlaced(task_id=task_id, node_id="node-a", attempt_no=1)


def test_each_slack_task_gets_one_thread_that_outlives_the_sender(tmp_path: Path) -> None:
    path = tmp_path / "hearth.db"
    store = Store(path)
    a, b = make_task(store, SLACK, name="a"), make_task(store, SLACK, name="b")
    telegram = make_task(store, name="t")
    for task_id in (a, b, telegram):
        store.append_event(placed(task_id))
    store.append_event(ClarificationRequested(task_id=a, step_id="US-001", question="Which colour?"))
    store.append_event(checkpoint(b))
    sender = ThreadRecorder()
    asyncio.run(drain(Notifier(path, sender, poll_s=0.01), store))
    first = {s["card"].text.split("]")[0]: s for s in sender.sent if s["thread"] is None}
    assert sorted(first) == [f"[task {a} #2", f"[task {b} #2"]  # placements open the threads, only Slack's
    question = next(s for s in sender.sent if "Which colour?" in json.dumps(s["card"].presentation()))
    assert question["thread"] == first[f"[task {a} #2"]["ts"]
    store.close()
    again = Store(path)  # a new sidecar: the thread is remembered in the store
    again.append_event(done(b))
    asyncio.run(drain(Notifier(path, sender, poll_s=0.01), again))
    assert sender.sent[-1]["thread"] == first[f"[task {b} #2"]["ts"] == again.chat_thread(b)
    assert again.task_of_thread("slack", again.chat_thread(a) or "") == a and again.chat_thread(telegram) is None
    again.close()


def test_slack_cards_are_block_kit_with_mentions_buttons_and_a_decided_form(tmp_path: Path) -> None:
    store = Store(tmp_path / "hearth.db")
    task_id = make_task(store, {**SLACK, "ask": ["slack:U0BOB"]})
    task = store.task(task_id)
    ask = store.append_event(ClarificationRequested(task_id=task_id, step_id="US-001", question="Which colour?"))
    shown = slack_presentation(ask, task)
    assert shown is not None and "<@U0BOB>" in json.dumps(shown) and "Which colour?" in json.dumps(shown)
    card = store.append_event(checkpoint(task_id))
    shown = slack_presentation(card, task)
    assert shown is not None and shown["title"].startswith("Checkpoint")
    text = json.dumps(shown)
    for needle in ("0123456789ab", "1 file changed", "check passed", "hello.txt"):
        assert needle in text
    buttons = shown["blocks"][-1]["buttons"]
    assert [(b["label"], b["action"]["value"]) for b in buttons] == [
        ("Approve", f"hearth:approve:{task_id}:{card.seq}"), ("Reject", f"hearth:reject:{task_id}:{card.seq}")]
    after = decided_blocks("the card", False, "U0BOB", at=0)
    assert [b["type"] for b in after] == ["section", "context"]
    assert after[1]["elements"][0]["text"] == ":x: Rejected by <@U0BOB> at 1970-01-01 00:00 UTC"
    store.close()


@pytest.mark.parametrize(("text", "pending", "meaning"), [
    ("teal", "question", ("answer", "teal")),
    ("reject: the greeting is rude", "approval", ("reject", "the greeting is rude")),
    ("LGTM", "approval", ("approve", "")),
    ("what is this?", "approval", ("none", "")),
    ("hello", None, ("none", "")),
])
def test_what_a_thread_reply_means(text: str, pending: str | None, meaning: tuple[str, str]) -> None:
    assert thread_reply(text, pending) == meaning


def test_connect_writes_the_slack_part_into_openclaw_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cluster.cli import app

    monkeypatch.setenv("HEARTH_STATE_DIR", str(tmp_path / "state"))
    token, bot, signing = tmp_path / "gw-token", tmp_path / "bot", tmp_path / "signing"
    token.write_text(TOKEN)
    bot.write_text("xoxb-1-2-3\n")
    signing.write_text("s3cret\n")
    config = tmp_path / "openclaw.json"
    config.write_text(json.dumps({"gateway": {"port": 18789}, "plugins": {"load": {"paths": ["/other/plugin"]}}}))
    args = ["openclaw", "connect", "--url", "http://127.0.0.1:9", "--token-file", str(token),
            "--slack-channel", "C0HEARTH", "--slack-bot-token-file", str(bot),
            "--slack-signing-secret-file", str(signing), "--write", str(config)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = json.loads(config.read_text())
    assert written["gateway"] == {"port": 18789} and written["plugins"]["load"]["paths"][0] == "/other/plugin"
    assert written["plugins"]["entries"]["slack"] == {"enabled": True}
    slack = written["channels"]["slack"]
    assert (slack["mode"], slack["botToken"], slack["signingSecret"]) == ("http", "xoxb-1-2-3", "s3cret")
    assert slack["channels"] == {"C0HEARTH": {"requireMention": False}} and slack["commands"] == {"native": True}
    assert config.stat().st_mode & 0o777 == 0o600 and "xoxb-1-2-3" not in result.output
    printed = CliRunner().invoke(app, args[:-2])  # without --write: printed, with placeholders for secrets
    assert printed.exit_code == 0 and '"webhookPath": "/slack/events"' in printed.output
    assert "s3cret" not in printed.output and f"<the contents of {signing}>" in printed.output
