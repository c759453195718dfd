"""A Slack stand-in on loopback for tests that drive the REAL ``@openclaw/slack`` plugin.

* ``FakeSlack`` is a Slack Web API on 127.0.0.1 (the plugin's web clients honour ``SLACK_API_URL``):
  it records every call (``chat.postMessage``, ``chat.update``, ``chat.postEphemeral``, ``views.open``…)
  and answers in Slack's documented shapes, keeping the messages it was asked to post, with their
  ``ts`` and ``thread_ts``, so a test sees the channel the way the team would.
* It is also the Slack side of the Events API: ``event``, ``block_action``, ``view_submission`` and
  ``slash_command`` POST to the gateway's webhook signed the way Slack signs (``v0`` HMAC-SHA256 over
  ``v0:<timestamp>:<body>`` with the app's signing secret, in ``X-Slack-Signature`` and
  ``X-Slack-Request-Timestamp``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import secrets
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
from openclaw_fixtures import LoopbackJsonApi, wait_until

TEAM = "T0HEARTH"
BOT_USER = "U0BOT"
BOT_ID = "B0BOT"
BOT_TOKEN = "xoxb-1-hearth-test-token"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Slack's request signature: ``v0=`` + hex HMAC-SHA256 of ``v0:<timestamp>:<body>``."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class FakeSlack(LoopbackJsonApi):
    """Slack Web API stand-in plus a signed Events API client towards the gateway."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        """Every message in every channel (bot posts, updates applied), oldest first."""
        self.cond = threading.Condition()
        self._clock = itertools.count(1)
        self.bot_token, self.signing_secret = BOT_TOKEN, SIGNING_SECRET
        self.webhook = ""
        """The gateway's Events API URL (set by the test once the gateway's port is known)."""
        super().__init__("fake-slack")

    def answer(self, path: str, body: dict[str, Any], headers: Message) -> Any:
        method = "response_url" if "/response_url/" in path else path.rstrip("/").rsplit("/", 1)[-1]
        for key in ("blocks", "attachments", "view"):
            if isinstance(body.get(key), str):
                with contextlib.suppress(ValueError):
                    body[key] = json.loads(body[key])
        bearer = headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return self._answer(method, body, self.bot_token in (bearer, body.get("token")))

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def _ts(self) -> str:
        return f"{1_800_000_000 + next(self._clock)}.{secrets.randbelow(10**6):06d}"

    def _answer(self, method: str, body: dict[str, Any], authed: bool) -> dict[str, Any]:
        with self.cond:
            call = {"method": method, "body": body, "t": time.time(), "authed": authed}
            self.calls.append(call)
            self.cond.notify_all()
            return self._result(method, body)

    def _result(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {"ok": True, "url": "https://hearth-test.slack.com/", "team": "Hearth", "user": "hearth",
                    "team_id": TEAM, "user_id": BOT_USER, "bot_id": BOT_ID}
        if method in ("chat.postMessage", "chat.postEphemeral"):
            ts = self._ts()
            message = {"type": "message", "ts": ts, "channel": body.get("channel"), "text": body.get("text", ""),
                       "blocks": body.get("blocks") or [], "user": BOT_USER, "bot_id": BOT_ID,
                       "thread_ts": body.get("thread_ts"), "ephemeral": method == "chat.postEphemeral",
                       "to": body.get("user")}
            self.messages.append(message)
            if method == "chat.postEphemeral":
                return {"ok": True, "message_ts": ts}
            return {"ok": True, "channel": body.get("channel"), "ts": ts,
                    "message": {k: v for k, v in message.items() if v is not None}}
        if method == "chat.update":
            for message in self.messages:
                if message["ts"] == body.get("ts") and message["channel"] == body.get("channel"):
                    message["text"] = body.get("text", message["text"])
                    message["blocks"] = body.get("blocks") or []
                    message["edited"] = True
                    return {"ok": True, "channel": body.get("channel"), "ts": body.get("ts"),
                            "text": message["text"]}
            return {"ok": False, "error": "message_not_found"}
        if method == "users.info":
            user = str(body.get("user", ""))
            return {"ok": True, "user": {"id": user, "team_id": TEAM, "name": user.lower(),
                                         "real_name": f"User {user}", "is_bot": False,
                                         "profile": {"display_name": user.lower(), "real_name": f"User {user}"}}}
        if method == "conversations.info":
            channel = str(body.get("channel", ""))
            return {"ok": True, "channel": {"id": channel, "name": f"chan-{channel.lower()}", "is_channel": True,
                                            "is_member": True, "is_im": channel.startswith("D")}}
        if method == "conversations.replies" or method == "conversations.history":
            return {"ok": True, "messages": [], "has_more": False}
        if method == "views.open":
            return {"ok": True, "view": {"id": "V" + secrets.token_hex(4).upper(), **(body.get("view") or {})}}
        if method == "bots.info":
            return {"ok": True, "bot": {"id": BOT_ID, "name": "hearth", "user_id": BOT_USER}}
        if method == "team.info":
            return {"ok": True, "team": {"id": TEAM, "name": "Hearth", "domain": "hearth-test"}}
        return {"ok": True}

    def configure(self, config: dict[str, Any], home: Path, root: Path, gateway_url: str) -> None:
        """Add Slack in HTTP mode to a test gateway's ``config`` (state under ``root``). OpenClaw runs a
        channel plugin only when its state records the official npm install, so the record
        deploy/openclaw/install.sh made (``<home>/slack-state``) is copied into this gateway's state."""
        record = home / "slack-state" / "state" / "openclaw.sqlite"
        (root / "state" / "state").mkdir(parents=True, exist_ok=True)
        shutil.copy(record, root / "state" / "state" / "openclaw.sqlite")
        config["plugins"]["allow"].append("slack")
        config["plugins"]["entries"]["slack"] = {"enabled": True}
        config["channels"]["slack"] = {
            "enabled": True, "mode": "http", "botToken": self.bot_token, "signingSecret": self.signing_secret,
            "webhookPath": "/slack/events", "groupPolicy": "open", "dmPolicy": "open", "allowFrom": ["*"],
            "requireMention": False, "commands": {"native": True}}
        self.webhook = f"{gateway_url}/slack/events"

    # what the team sees ----------------------------------------------------------------------------
    def posted(self, channel: str | None = None) -> list[dict[str, Any]]:
        with self.cond:
            return [dict(m) for m in self.messages if channel is None or m["channel"] == channel]

    def wait_message(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 90,
                     what: str = "a message") -> dict[str, Any]:
        return dict(wait_until(lambda: next((m for m in self.posted() if predicate(m)), None), timeout_s, what))

    def method_calls(self, method: str, *, authed_only: bool = False) -> list[dict[str, Any]]:
        """The bodies of calls to ``method`` (only those carrying the bot token, if ``authed_only``)."""
        with self.cond:
            return [c["body"] for c in self.calls if c["method"] == method and (c["authed"] or not authed_only)]

    # what the team does ----------------------------------------------------------------------------
    def post(self, body: bytes, content_type: str, *, secret: str = SIGNING_SECRET,
             timestamp: int | None = None) -> httpx.Response:
        """POST to the gateway's webhook, signed like Slack (or with another secret / an old stamp)."""
        stamp = int(time.time()) if timestamp is None else timestamp
        headers = {"Content-Type": content_type, "X-Slack-Request-Timestamp": str(stamp),
                   "X-Slack-Signature": sign(secret, stamp, body)}
        return httpx.post(self.webhook, content=body, headers=headers, timeout=60)

    def event(self, event: dict[str, Any], **kw: Any) -> httpx.Response:
        envelope = {"token": "legacy", "team_id": TEAM, "api_app_id": "A0HEARTH", "type": "event_callback",
                    "event_id": "Ev" + secrets.token_hex(5).upper(), "event_time": int(time.time()),
                    "event": event}
        return self.post(json.dumps(envelope).encode(), "application/json", **kw)

    def say(self, user: str, channel: str, text: str, thread_ts: str | None = None, **kw: Any) -> httpx.Response:
        """``user`` writes ``text`` in ``channel`` (in the thread ``thread_ts`` if given)."""
        ts = self._ts()
        event: dict[str, Any] = {"type": "message", "channel": channel, "user": user, "text": text, "ts": ts,
                                 "event_ts": ts, "channel_type": "im" if channel.startswith("D") else "channel"}
        if thread_ts:
            event["thread_ts"] = thread_ts
        return self.event(event, **kw)

    def click(self, user: str, message: dict[str, Any], label: str, **kw: Any) -> httpx.Response:
        """``user`` presses the button ``label`` on the bot's ``message`` (a ``block_actions`` payload)."""
        button = next(e for b in message["blocks"] if b.get("type") == "actions" for e in b.get("elements", [])
                      if e.get("text", {}).get("text") == label)
        payload = {
            "type": "block_actions", "team": {"id": TEAM, "domain": "hearth-test"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
            "api_app_id": "A0HEARTH", "token": "legacy", "trigger_id": f"{secrets.randbelow(10**9)}.trigger",
            "container": {"type": "message", "message_ts": message["ts"], "channel_id": message["channel"],
                          "is_ephemeral": False},
            "channel": {"id": message["channel"], "name": f"chan-{message['channel'].lower()}"},
            "message": {"type": "message", "ts": message["ts"], "text": message["text"], "user": BOT_USER,
                        "bot_id": BOT_ID, "blocks": message["blocks"],
                        **({"thread_ts": message["thread_ts"]} if message.get("thread_ts") else {})},
            "response_url": f"{self.api_url}response_url/{message['ts']}",
            "actions": [{**button, "action_ts": self._ts(), "block_id": button.get("block_id", "b")}],
        }
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        return self.post(body, "application/x-www-form-urlencoded", **kw)

    def submit_view(self, user: str, opened: dict[str, Any], values: dict[str, str], **kw: Any) -> httpx.Response:
        """``user`` submits the dialog the bot opened (a ``views.open`` body), with ``values`` typed into
        its inputs (block id → text; each input's action id as the bot set it)."""
        view = opened["view"]
        state = {}
        for block in view.get("blocks", []):
            if block.get("type") == "input" and block.get("block_id") in values:
                action = block["element"]["action_id"]
                state[block["block_id"]] = {action: {"type": block["element"]["type"],
                                                     "value": values[block["block_id"]]}}
        payload = {
            "type": "view_submission", "team": {"id": TEAM, "domain": "hearth-test"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
            "api_app_id": "A0HEARTH", "token": "legacy", "trigger_id": f"{secrets.randbelow(10**9)}.trigger",
            "view": {"id": "V" + secrets.token_hex(4).upper(), "team_id": TEAM, "type": "modal",
                     "callback_id": view.get("callback_id", ""), "private_metadata": view.get("private_metadata", ""),
                     "blocks": view.get("blocks", []), "title": view.get("title"), "state": {"values": state},
                     "hash": secrets.token_hex(6), "root_view_id": None, "previous_view_id": None,
                     "app_id": "A0HEARTH", "bot_id": BOT_ID},
            "response_urls": [],
        }
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        return self.post(body, "application/x-www-form-urlencoded", **kw)

    def slash(self, user: str, channel: str, text: str, command: str = "/hearth", **kw: Any) -> httpx.Response:
        """``user`` types ``/hearth text`` in ``channel``."""
        form = {"token": "legacy", "team_id": TEAM, "team_domain": "hearth-test", "channel_id": channel,
                "channel_name": f"chan-{channel.lower()}", "user_id": user, "user_name": user.lower(),
                "command": command, "text": text, "api_app_id": "A0HEARTH",
                "response_url": f"{self.api_url}response_url/{secrets.token_hex(4)}",
                "trigger_id": f"{secrets.randbelow(10**9)}.trigger"}
        return self.post(urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded", **kw)
