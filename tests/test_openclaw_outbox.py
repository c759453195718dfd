"""The outbox and its sender (cluster/openclaw.py) against stand-in gateways: fast, no Ray, no Node."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests_support import stored_spec

from agent.events import (
    AgentAction,
    AttemptEnded,
    CheckpointReady,
    ClarificationRequested,
    DecisionMade,
    ModelOutage,
    StepStarted,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskRequeued,
    TaskSubmitted,
    TerminationReason,
)
from cluster.chat_cards import Card, render
from cluster.openclaw import DeliveryError, GatewayClient, GatewaySettings, Notifier
from cluster.store import Store

TOKEN = "gw-secret-token-never-logged-0123456789"


def make_task(store: Store, notify: dict[str, str] | None = None, name: str = "demo") -> str:
    notify = notify if notify is not None else {"channel": "telegram", "target": "111"}
    spec = stored_spec(name, "scripted:demo", {"US-001": "Write hello"}, notify)
    row = store.create_task(project=name, name="Greeting", priority=50, model="scripted:demo", spec=spec,
                            submitted=TaskSubmitted(task_id="pending", name="Greeting", steps=["US-001"], priority=50))
    return row.id


def checkpoint(task_id: str, needs_approval: bool = True) -> CheckpointReady:
    return CheckpointReady(task_id=task_id, step_id="US-001", commit="0123456789abcdef", snapshot_id="s1",
                           diff_stat="1 file changed, 1 insertion(+)", files_changed=["hello.txt"],
                           check_summary="check passed: hello.txt ok", needs_approval=needs_approval)


def done(task_id: str) -> TaskCompleted:
    return TaskCompleted(task_id=task_id, branch=f"hearth/{task_id}", commits=["abc"])


class FakeSender:
    """Records sends; ``behaviour(call_no, key)`` may raise or sleep."""

    def __init__(self, behaviour: Callable[[int, str], Any] | None = None, delay_s: float = 0.0) -> None:
        self.sent: list[tuple[str, str]] = []  # (idempotency key, text)
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.behaviour = behaviour
        self.delay_s = delay_s

    async def send(self, *, channel: str, target: str, card: Card, idempotency_key: str,
                   thread_id: str | None = None) -> str | None:
        self.calls += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.behaviour is not None:
                self.behaviour(self.calls, idempotency_key)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            self.sent.append((idempotency_key, card.text))
            return str(1000 + len(self.sent))
        finally:
            self.active -= 1


async def drain(notifier: Notifier, store: Store, timeout_s: float = 10) -> None:
    """Run ``notifier`` until the outbox has nothing pending (or fail after ``timeout_s``)."""
    stop = asyncio.Event()
    job = asyncio.create_task(notifier.run(stop))
    deadline = time.monotonic() + timeout_s
    try:
        while store.outbox(pending_only=True):
            assert time.monotonic() < deadline, f"outbox not drained: {store.outbox(pending_only=True)}"
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(job, 5)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "hearth.db")
    yield db
    db.close()


def test_only_what_people_must_see_enters_the_outbox(store: Store) -> None:
    task = make_task(store)
    quiet = make_task(store, notify={}, name="quiet")
    for task_id in (task, quiet):
        store.append_event(StepStarted(task_id=task_id, step_id="US-001", title="t", index=0, total=1))
        store.append_event(AgentAction(task_id=task_id, step_id="US-001", turn=1, tool="write_file", summary="x"))
        store.append_event(checkpoint(task_id, needs_approval=False))
        store.append_event(ClarificationRequested(task_id=task_id, step_id="US-001", question="Which colour?"))
        store.append_event(checkpoint(task_id))
        store.append_event(AttemptEnded(task_id=task_id, reason=TerminationReason.error, message="boom"))
        store.append_event(AttemptEnded(task_id=task_id, reason=TerminationReason.node_lost))
        store.append_event(TaskRequeued(task_id=task_id, reason=TerminationReason.node_lost, from_step=0))
        store.append_event(DecisionMade(task_id=task_id, step_id="US-001", approve=True, who="dave"))
        store.append_event(DecisionMade(task_id=task_id, step_id="US-001", approve=True,
                                        who="hearth (approval timeout)", reason="no decision within 60 s"))
        store.append_event(TaskCancelled(task_id=task_id, who="dave"))
        store.append_event(TaskFailed(task_id=task_id, reason=TerminationReason.budget, message="out of turns"))
        store.append_event(done(task_id))
    kinds = [(e.event.kind, getattr(e.event, "reason", None)) for e in store.outbox(task)]
    assert kinds == [("clarification_requested", None), ("checkpoint_ready", None),
                     ("attempt_ended", TerminationReason.node_lost), ("task_requeued", TerminationReason.node_lost),
                     ("decision_made", "no decision within 60 s"),  # Hearth's own decision, not dave's
                     ("task_failed", TerminationReason.budget), ("task_completed", None)]
    assert store.outbox(quiet) == []  # no [notify] in its hearth.toml: nothing to deliver


def test_cards_carry_what_a_reviewer_needs(store: Store) -> None:
    task_id = make_task(store)
    event = store.append_event(checkpoint(task_id))
    card = render(event, store.task(task_id))
    assert card.text.startswith(f"[task {task_id} #{event.seq}] Checkpoint waiting for approval")
    for needle in ("0123456789ab", "1 file changed, 1 insertion(+)", "hello.txt", "check passed", "Write hello"):
        assert needle in card.text
    assert card.buttons == [("Approve", f"hearth:approve:{task_id}:{event.seq}"),
                            ("Reject", f"hearth:reject:{task_id}:{event.seq}")]
    question = store.append_event(ClarificationRequested(task_id=task_id, step_id="US-001", question="Which?"))
    assert render(question, store.task(task_id)).text.startswith(f"[task {task_id} #{question.seq}] Question")
    failed = render(store.append_event(TaskFailed(task_id=task_id, reason=TerminationReason.budget, message="m")))
    assert "budget" in failed.text and not failed.buttons
    timed_out = render(store.append_event(DecisionMade(task_id=task_id, step_id="US-001", approve=False,
                                                       who="hearth (approval timeout)", reason="no decision")))
    assert "Checkpoint of step US-001 rejected by hearth (approval timeout)" in timed_out.text
    outage = render(store.append_event(ModelOutage(task_id=task_id, step_id="US-001", model="docker:qwen",
                                                   message="cannot connect", recovered=True)))
    assert "Model docker:qwen stopped answering during step US-001" in outage.text and "goes on" in outage.text


def test_in_order_per_task_and_concurrent_across_tasks(store: Store) -> None:
    tasks = [make_task(store) for _ in range(4)]
    expected: dict[str, list[int]] = {t: [] for t in tasks}
    for round_no in range(3):
        for task_id in tasks:
            event = store.append_event(ClarificationRequested(task_id=task_id, step_id="US-001",
                                                              question=f"q{round_no}"))
            expected[task_id].append(event.seq or 0)
    sender = FakeSender(delay_s=0.02)
    asyncio.run(drain(Notifier(store.path, sender, poll_s=0.005), store))
    for task_id in tasks:
        seqs = [int(text.split("#", 1)[1].split("]", 1)[0]) for _, text in sender.sent if f"task {task_id} " in text]
        assert seqs == expected[task_id]
    assert sender.max_active > 1  # other tasks were not held up by one task's queue
    assert len({key for key, _ in sender.sent}) == len(sender.sent) == 12


def test_failures_back_off_and_retry_until_acknowledged(store: Store) -> None:
    task_id = make_task(store)
    first = store.append_event(ClarificationRequested(task_id=task_id, step_id="US-001", question="q"))
    store.append_event(done(task_id))
    tried: list[tuple[float, str]] = []

    def flaky(call_no: int, key: str) -> None:
        tried.append((time.monotonic(), key))
        if call_no <= 3:
            raise DeliveryError("gateway unreachable (ConnectError)")

    sender = FakeSender(flaky)
    notifier = Notifier(store.path, sender, poll_s=0.005, backoff_base_s=0.05, backoff_cap_s=0.12)
    asyncio.run(drain(notifier, store))
    keys = [key for _, key in tried]
    first_key = keys[0]
    assert keys[:4] == [first_key] * 4  # the second event waited for the first to be acknowledged
    assert len(keys) == 5 and keys[4] != first_key
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(tried[:4])]
    assert gaps[0] >= 0.035 and gaps[1] >= 0.075 and gaps[2] >= 0.09  # doubling, capped at 0.12 (-20% jitter)
    entry = store.outbox(task_id)[0]
    assert entry.event_id and entry.event.seq == first.seq and entry.tries == 4
    assert entry.outcome == "sent" and entry.message_id and entry.last_error is None


def test_a_restarted_sender_sends_nothing_twice(store: Store) -> None:
    task_id = make_task(store)
    for n in range(3):
        store.append_event(ClarificationRequested(task_id=task_id, step_id="US-001", question=f"q{n}"))
    sender = FakeSender()
    asyncio.run(drain(Notifier(store.path, sender, poll_s=0.005), store))
    assert len(sender.sent) == 3
    store.append_event(done(task_id))
    again = FakeSender()
    asyncio.run(drain(Notifier(store.path, again, poll_s=0.005), store))  # a new sidecar process
    assert [text.split("]")[1].split()[0] for _, text in again.sent] == ["Completed"]


def test_a_request_in_flight_when_the_sender_died_is_sent_again_and_marked(store: Store) -> None:
    task_id = make_task(store)
    store.append_event(done(task_id))
    entry = store.outbox(task_id)[0]
    store.outbox_mark_sending(entry.event_id, time.time(), lease_s=3600)  # then: kill -9
    sender = FakeSender()
    asyncio.run(drain(Notifier(store.path, sender, poll_s=0.005), store))
    after = store.outbox(task_id)[0]
    assert len(sender.sent) == 1 and after.tries == 2 and after.outcome == "sent again (may repeat)"


def test_two_senders_never_send_together(store: Store) -> None:
    task_id = make_task(store)
    for n in range(5):
        store.append_event(ClarificationRequested(task_id=task_id, step_id="US-001", question=f"q{n}"))
    one, two = FakeSender(delay_s=0.01), FakeSender(delay_s=0.01)

    async def both() -> None:
        stop = asyncio.Event()
        jobs = [asyncio.create_task(Notifier(store.path, s, poll_s=0.005).run(stop)) for s in (one, two)]
        deadline = time.monotonic() + 10
        while store.outbox(pending_only=True):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*jobs), 5)

    asyncio.run(both())
    assert sorted([len(one.sent), len(two.sent)]) == [0, 5]


def test_gateway_client_request_shape_errors_and_secrecy(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[httpx.Request] = []
    answers = iter([
        httpx.Response(200, json={"ok": True, "result": {"content": [{"type": "text", "text": json.dumps(
            {"result": {"receipt": {"primaryPlatformMessageId": "4242"}}})}]}}),
        httpx.Response(200, json={"ok": True, "result": {"details": {"messageId": 77}}}),
        httpx.Response(400, json={"ok": False, "error": {"type": "tool_error", "message": "tool execution failed"}}),
    ])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            return httpx.Response(200, json={"ready": True, "failing": []})
        seen.append(request)
        return next(answers)

    settings = GatewaySettings(url="http://gw.invalid", token=TOKEN)  # type: ignore[arg-type]
    assert TOKEN not in repr(settings) and TOKEN not in str(settings)
    client = GatewayClient(settings, transport=httpx.MockTransport(handler))
    card = Card(text="[task T-1 #4] hi", buttons=[("Approve", "hearth:approve:T-1:4")])

    async def go() -> list[Any]:
        results: list[Any] = [await client.send(channel="slack", target="#hearth", card=card, idempotency_key="k1"),
                              await client.send(channel="slack", target="#hearth", card=Card(text="x"),
                                                idempotency_key="k2")]
        with pytest.raises(DeliveryError) as failed:
            await client.send(channel="slack", target="#hearth", card=card, idempotency_key="k3")
        results.append(failed.value)
        await client.aclose()
        return results

    caplog.set_level(logging.DEBUG)
    first, second, error = asyncio.run(go())
    assert (first, second) == ("4242", "77")
    assert seen[0].url.path == "/tools/invoke" and seen[0].headers["authorization"] == f"Bearer {TOKEN}"
    body = json.loads(seen[0].content)
    assert body["tool"] == "message" and body["action"] == "send" and body["idempotencyKey"] == "k1"
    assert body["args"]["channel"] == "slack" and body["args"]["target"] == "#hearth"
    assert body["args"]["message"] == "[task T-1 #4] hi"
    assert body["args"]["presentation"]["blocks"][0]["buttons"][0] == {
        "label": "Approve", "action": {"type": "callback", "value": "hearth:approve:T-1:4"}}
    assert "presentation" not in json.loads(seen[1].content)["args"]
    assert "400" in str(error) and not error.maybe_delivered and TOKEN not in str(error)
    assert TOKEN not in caplog.text


def test_unreachable_starting_and_silent_gateways_are_told_apart() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def hang_up(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            return httpx.Response(200, json={"ready": True})
        raise httpx.ReadTimeout("timed out", request=request)

    posted: list[str] = []

    def starting(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            return httpx.Response(503, json={"ready": False, "failing": ["telegram"]})
        posted.append(request.url.path)
        return httpx.Response(200, json={"ok": True, "result": {}})

    settings = GatewaySettings(url="http://gw.invalid", token=TOKEN)  # type: ignore[arg-type]

    async def attempt(handler: Callable[[httpx.Request], httpx.Response]) -> DeliveryError:
        client = GatewayClient(settings, transport=httpx.MockTransport(handler))
        try:
            await client.send(channel="telegram", target="1", card=Card(text="x"), idempotency_key="k")
        except DeliveryError as exc:
            return exc
        finally:
            await client.aclose()
        raise AssertionError("no error")

    assert asyncio.run(attempt(refuse)).maybe_delivered is False
    assert asyncio.run(attempt(hang_up)).maybe_delivered is True
    # a gateway that listens but is not ready yet gets nothing (it would hold the request, then send)
    not_ready = asyncio.run(attempt(starting))
    assert not_ready.maybe_delivered is False and "not ready" in str(not_ready) and posted == []


def test_hearth_openclaw_connect_stores_the_gateway_and_prints_the_plugin_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cluster.cli import app
    from cluster.openclaw import load_gateway_settings

    state = tmp_path / "state"
    monkeypatch.setenv("HEARTH_STATE_DIR", str(state))
    monkeypatch.delenv("HEARTH_OPENCLAW_URL", raising=False)
    monkeypatch.delenv("HEARTH_OPENCLAW_TOKEN_FILE", raising=False)
    token = tmp_path / "gw-token"
    token.write_text(TOKEN + "\n")
    runner = CliRunner()
    # Nothing listens on port 9 here: the gateway may come later, so this is a warning, not an error.
    done = runner.invoke(app, ["openclaw", "connect", "--url", "http://127.0.0.1:9/", "--token-file", str(token)])
    assert done.exit_code == 0, done.output
    assert "not answering /readyz yet" in done.output and TOKEN not in done.output
    settings = load_gateway_settings(state)
    assert settings is not None and settings.url == "http://127.0.0.1:9"
    assert settings.token.get_secret_value() == TOKEN
    assert (state / "gateway-token").stat().st_mode & 0o777 == 0o600
    assert str(state / "plugin-token") in done.output and (state / "plugin-token").stat().st_mode & 0o777 == 0o600

    bad = runner.invoke(app, ["openclaw", "connect", "--url", "127.0.0.1:18789", "--token-file", str(token)])
    assert bad.exit_code == 2 and "give the gateway's http(s) address" in bad.output
    empty = tmp_path / "empty"
    empty.write_text("\n")
    bad = runner.invoke(app, ["openclaw", "connect", "--url", "http://127.0.0.1:9", "--token-file", str(empty)])
    assert bad.exit_code == 2 and "the file is empty" in bad.output
    bad = runner.invoke(app, ["openclaw", "connect", "--url", "http://127.0.0.1:9", "--token-file",
                              str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "cannot read: No such file or directory" in bad.output
