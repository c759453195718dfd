"""Chat delivery through an OpenClaw gateway: the outbox's sender.

The events people must see (a question, a checkpoint that waits for approval, the end of a task, a
lost node, a re-queue) get an ``outbox`` row in the same transaction that stores them
(``Store._append``). ``Notifier`` is the only sender: it runs as a background task of the sidecar
(``python -m cluster.api``), holds ``<state_dir>/outbox.lock`` so two sidecars never both send, and
posts each entry to the gateway's ``POST /tools/invoke`` (tool ``message``, action ``send``) with the
channel and target of the task's project (``[notify]`` in hearth.toml), the text, and Approve/Reject
buttons as a ``presentation`` block.

Guarantees (docs/openclaw.md says the same for users):

* **Durable:** an entry exists as soon as its event does; nothing is kept only in memory.
* **Retried until acknowledged:** a failed or unanswered request is retried with exponential
  backoff (``backoff_base_s`` doubling up to ``backoff_cap_s``), forever; ``last_error`` says why.
* **In order per task:** only the oldest unacknowledged entry of a task is ever in flight, so event
  n+1 of a task is not sent before n is acknowledged. Different tasks are sent concurrently.
* **Once, with one documented window:** OpenClaw 2026.9's ``/tools/invoke`` does *not* dedupe on
  ``idempotencyKey`` (verified: three posts with one key gave three Telegram messages), so the
  sender is exactly-once by itself. Each entry is marked ``outcome='sending'`` (with ``tries``,
  ``last_try_at`` and a lease) in a committed transaction *before* the request leaves, and
  acknowledged in another *after* the gateway answers 200. A refused connection or an error
  answer means nothing was sent, so the retry is safe. Only a request that may have arrived (a
  timeout or dropped connection after sending, or a sidecar killed mid-request: found as
  ``sending`` at the next start) is *in doubt*; it is sent again (``outcome`` then says
  ``sent again (may repeat)``), because a lost approval card stalls a task while a repeated one
  is harmless (decisions are idempotent per checkpoint). The key ``hearth-<event id>`` is still
  sent, for gateways that dedupe.

The gateway token is read from a 0600 file and only ever placed in the ``Authorization`` header;
it is never logged, stored in the database or put in an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import filelock
import httpx
from pydantic import BaseModel, ConfigDict, SecretStr

from cluster.chat_cards import Card, render
from cluster.errors import HearthError, UnknownTask
from cluster.outbox import OutboxEntry
from cluster.slack import SLACK, slack_presentation
from cluster.store import Store, TaskRow

log = logging.getLogger("hearth.openclaw")

GATEWAY_CONFIG_FILE = "openclaw.json"
"""``<state_dir>/openclaw.json``: ``{"url": "http://127.0.0.1:18789"}`` (no secrets in it)."""
GATEWAY_TOKEN_FILE = "gateway-token"
"""``<state_dir>/gateway-token`` (0600): the gateway's ``gateway.auth.token``."""


class GatewaySettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: str
    token: SecretStr


def load_gateway_settings(state_dir: Path) -> GatewaySettings | None:
    """The gateway to deliver to, or None when chat delivery is not configured.

    ``HEARTH_OPENCLAW_URL`` / ``HEARTH_OPENCLAW_TOKEN_FILE`` override the files in the state dir.
    """
    url = os.environ.get("HEARTH_OPENCLAW_URL", "")
    config = state_dir / GATEWAY_CONFIG_FILE
    if not url and config.exists():
        url = str(json.loads(config.read_text()).get("url", ""))
    token_file = Path(os.environ.get("HEARTH_OPENCLAW_TOKEN_FILE") or state_dir / GATEWAY_TOKEN_FILE)
    if not url or not token_file.exists():
        return None
    return GatewaySettings(url=url.rstrip("/"), token=SecretStr(token_file.read_text().strip()))


# the gateway -------------------------------------------------------------------------------------
class DeliveryError(HearthError):
    """The gateway did not acknowledge a message (the sentence never contains the token).

    ``maybe_delivered``: the request may have reached the gateway (a timeout or a dropped
    connection after sending), as opposed to a refused connection or an error answer.
    """

    def __init__(self, message: str, *, maybe_delivered: bool = False) -> None:
        super().__init__(message)
        self.maybe_delivered = maybe_delivered


class Sender(Protocol):
    async def send(self, *, channel: str, target: str, card: Card, idempotency_key: str,
                   thread_id: str | None = None) -> str | None: ...


def _message_id(result: Any, depth: int = 0) -> str | None:
    """The platform message id, wherever this gateway build put it (the shape varies between
    builds: ``details.messageId``, ``details.result.messageId``, or a JSON text part with
    ``receipt.primaryPlatformMessageId``)."""
    if depth > 8:
        return None
    if isinstance(result, str) and result.lstrip().startswith("{"):
        try:
            return _message_id(json.loads(result), depth + 1)
        except ValueError:
            return None
    if isinstance(result, list):
        return next((found for item in result if (found := _message_id(item, depth + 1))), None)
    if isinstance(result, dict):
        for key in ("primaryPlatformMessageId", "messageId", "message_id"):
            if result.get(key) not in (None, ""):
                return str(result[key])
        return next((found for value in result.values() if (found := _message_id(value, depth + 1))), None)
    return None


class GatewayClient:
    """``POST /tools/invoke`` → tool ``message``, action ``send``, with the gateway token."""

    def __init__(self, settings: GatewaySettings, *, timeout_s: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.timeout_s = timeout_s
        self._client = httpx.AsyncClient(
            base_url=settings.url, timeout=timeout_s, transport=transport,
            headers={"Authorization": f"Bearer {settings.token.get_secret_value()}"},
        )
        self._suspect = True
        """Check ``/readyz`` before the next send (at first, and after any failure)."""

    async def ready(self) -> bool:
        """The gateway's own readiness probe. A starting gateway accepts connections long before it
        is ready and holds ``/tools/invoke`` requests meanwhile (30 s and more, then sends them
        anyway): posting only to a ready gateway keeps those requests out of the in-doubt window."""
        try:
            reply = await self._client.get("/readyz", timeout=5.0)
        except httpx.HTTPError:
            return False
        try:
            return reply.status_code == 200 and reply.json().get("ready") is not False
        except ValueError:
            return False

    async def send(self, *, channel: str, target: str, card: Card, idempotency_key: str,
                   thread_id: str | None = None) -> str | None:
        if self._suspect:
            if not await self.ready():
                raise DeliveryError("gateway unreachable or not ready (/readyz)")
            self._suspect = False
        try:
            return await self._post(channel=channel, target=target, card=card, idempotency_key=idempotency_key,
                                    thread_id=thread_id)
        except DeliveryError:
            self._suspect = True
            raise

    async def _post(self, *, channel: str, target: str, card: Card, idempotency_key: str,
                    thread_id: str | None) -> str | None:
        args: dict[str, Any] = {"channel": channel, "target": target, "message": card.text,
                                "idempotencyKey": idempotency_key}
        if thread_id:
            args["threadId"] = thread_id
        if (presentation := card.presentation()) is not None:
            args["presentation"] = presentation
        body = {"tool": "message", "action": "send", "args": args, "idempotencyKey": idempotency_key}
        try:
            reply = await self._client.post("/tools/invoke", json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise DeliveryError(f"gateway unreachable ({type(exc).__name__}: {exc})") from None
        except httpx.HTTPError as exc:
            raise DeliveryError(f"no answer from the gateway ({type(exc).__name__}: {exc})",
                                maybe_delivered=True) from None
        if reply.status_code != 200:
            raise DeliveryError(f"gateway answered {reply.status_code}: {reply.text[:300]}")
        try:
            data = reply.json()
        except ValueError:
            raise DeliveryError(f"gateway answered 200 without JSON: {reply.text[:200]}") from None
        if not isinstance(data, dict) or data.get("ok") is not True:
            raise DeliveryError(f"gateway did not confirm the send: {reply.text[:300]}")
        return _message_id(data.get("result"))

    async def aclose(self) -> None:
        await self._client.aclose()


# the sender loop ---------------------------------------------------------------------------------
class Notifier:
    """Drains the outbox to the gateway: ordered per task, retried with backoff, marked before/after."""

    def __init__(self, store_path: Path, sender: Sender, *, poll_s: float = 0.02, concurrency: int = 8,
                 backoff_base_s: float = 0.5, backoff_cap_s: float = 60.0, lease_s: float | None = None,
                 lock_path: Path | None = None) -> None:
        self.store_path = store_path
        self.sender = sender
        self.poll_s = poll_s
        self.concurrency = concurrency
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.lease_s = lease_s if lease_s is not None else float(getattr(sender, "timeout_s", 30.0)) + 5.0
        self.lock_path = lock_path or store_path.parent / "outbox.lock"
        self.sent = 0
        self.failures = 0
        self.on_ack: Callable[[OutboxEntry, float], Awaitable[None] | None] | None = None

    def backoff(self, tries: int) -> float:
        delay = min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(0, tries - 1))
        return delay * random.uniform(0.8, 1.0)

    async def aclose(self) -> None:
        """Release the sender's connections (the sidecar is stopping)."""
        close = getattr(self.sender, "aclose", None)
        if close is not None:
            await close()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Deliver until cancelled (or ``stop`` is set). Waits for the outbox lock first."""
        lock = filelock.FileLock(str(self.lock_path))
        while True:
            try:
                lock.acquire(timeout=0)
                break
            except filelock.Timeout:
                if stop is not None and stop.is_set():
                    return
                await asyncio.sleep(1.0)
        store = Store(self.store_path)
        try:
            doubtful = store.outbox_recover_in_flight(time.time())
            if doubtful:
                log.warning("%d chat message(s) were in flight when the last sender stopped; sending them "
                            "again (each may arrive twice; see docs/openclaw.md)", doubtful)
            await self._loop(store, stop)
        finally:
            store.close()
            lock.release()

    async def _loop(self, store: Store, stop: asyncio.Event | None) -> None:
        inflight: dict[str, asyncio.Task[None]] = {}
        version = -1
        next_due: float | None = 0.0
        try:
            while stop is None or not stop.is_set():
                now = time.time()
                current = store.data_version()
                finished = [t for t, job in inflight.items() if job.done()]
                for task_id in finished:
                    job = inflight.pop(task_id)
                    if not job.cancelled() and job.exception() is not None:
                        # Not a gateway answer (those are handled in _deliver): the entry stays
                        # unacknowledged and is offered again after its lease.
                        log.error("chat delivery for %s crashed: %r", task_id, job.exception())
                if current != version or finished or (next_due is not None and next_due <= now):
                    version = current
                    room = self.concurrency - len(inflight)
                    if room > 0:
                        for entry in store.outbox_due(now, room, exclude=set(inflight)):
                            inflight[entry.task_id] = asyncio.create_task(self._deliver(store, entry))
                    next_due = store.outbox_next_due_at()
                if inflight:
                    await asyncio.wait(inflight.values(), timeout=self.poll_s,
                                       return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.sleep(self.poll_s)
        finally:
            for job in inflight.values():
                job.cancel()
            for job in inflight.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job

    async def _deliver(self, store: Store, entry: OutboxEntry) -> None:
        try:
            task: TaskRow | None = store.task(entry.task_id)
        except UnknownTask:
            task = None
        channel, target = (task.spec.config.notify.channel, task.spec.config.notify.target) if task else ("", "")
        if not channel or not target:
            store.outbox_ack(entry.event_id, message_id=None,
                             outcome="skipped: no [notify] channel and target")
            return
        card = render(entry.event, task)
        thread_id = None
        if channel == SLACK:  # one thread per task: its first message opens it
            rich = slack_presentation(entry.event, task)
            if rich is not None:  # the first line (with the tag) as the message, the rest as Block Kit
                card = card.model_copy(update={"text": card.text.split("\n", 1)[0], "rich": rich})
            thread_id = store.chat_thread(entry.task_id)
        tries = store.outbox_mark_sending(entry.event_id, time.time(), self.lease_s)
        try:
            message_id = await self.sender.send(channel=channel, target=target, card=card,
                                                idempotency_key=f"hearth-{entry.event_id}", thread_id=thread_id)
        except DeliveryError as exc:
            self.failures += 1
            delay = self.backoff(tries)
            store.outbox_retry_later(entry.event_id, str(exc), time.time() + delay,
                                     in_doubt=exc.maybe_delivered or entry.outcome == "in-doubt")
            # Loud on the first tries and every 10th (a long outage must not flood the log).
            level = logging.WARNING if tries <= 2 or tries % 10 == 0 else logging.DEBUG
            log.log(level, "chat delivery of %s %s (event %d) failed on try %d: %s; retrying in %.1f s",
                    entry.task_id, entry.event.kind, entry.event_id, tries, exc, delay)
            return
        acked = time.time()
        if channel == SLACK and thread_id is None and message_id:
            store.set_chat_thread(entry.task_id, channel, target, message_id)
        store.outbox_ack(entry.event_id, message_id=message_id,
                         outcome="sent again (may repeat)" if entry.outcome == "in-doubt" else "sent")
        self.sent += 1
        if self.on_ack is not None:
            maybe = self.on_ack(entry, acked)
            if maybe is not None:
                await maybe


def notifier_from_state_dir(state_dir: Path) -> Notifier | None:
    settings = load_gateway_settings(state_dir)
    if settings is None:
        return None
    return Notifier(state_dir / "hearth.db", GatewayClient(settings))
