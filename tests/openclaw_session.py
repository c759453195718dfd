"""The session's one REAL OpenClaw gateway (a start costs 40-55 s and more), shared by the Telegram
and the Slack end-to-end tests: Telegram against ``FakeTelegram``, Slack (the official
``@openclaw/slack`` plugin, HTTP mode) against ``FakeSlack``, and the Hearth plugin calling a sidecar
served in this process over the session's real Ray scheduler."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openclaw_fixtures import (
    FakeTelegram,
    Gateway,
    Sidecar,
    build_plugin,
    free_port,
    install_openclaw,
    wait_until,
)
from pydantic import SecretStr
from slack_fixtures import FakeSlack

from cluster.api import create_app
from cluster.openclaw import GatewayClient, GatewaySettings, Notifier
from cluster.scheduler_client import RaySchedulerClient
from cluster.store import Store

USER, OUTSIDER = 111, 222
"""Telegram users the gateway accepts (OpenClaw's allowFrom)."""


@dataclass
class Chat:
    telegram: FakeTelegram
    slack: FakeSlack
    gateway: Gateway
    sidecar: Sidecar
    scheduler: Any
    admin: dict[str, str]
    plugin_token: str
    store_path: Path

    def new_sidecar(self) -> Sidecar:
        """A fresh sidecar process stand-in (new app, new outbox sender) on the same port."""
        notifier = Notifier(self.store_path, GatewayClient(GatewaySettings(
            url=self.gateway.url, token=SecretStr(self.gateway.token))),
            poll_s=0.02, backoff_base_s=0.25, backoff_cap_s=2.0)
        app = create_app(RaySchedulerClient(self.scheduler), self.store_path, self.admin["Authorization"].split()[1],
                         plugin_token=self.plugin_token, notifier=notifier)
        return Sidecar(app, port=self.sidecar.port if hasattr(self, "sidecar") else None)

    def submit(self, project: Path, model: str) -> str:
        reply = httpx.post(f"{self.sidecar.url}/v1/tasks", headers=self.admin, timeout=30, json={
            "project_path": str(project), "prd_path": "tasks/prd.json", "model": model})
        assert reply.status_code == 201, reply.text
        return str(reply.json()["id"])

    def state(self, task_id: str) -> str:
        db = Store(self.store_path, readonly=True)
        try:
            return db.task(task_id).state.value
        finally:
            db.close()

    def wait_state(self, task_id: str, states: set[str], timeout_s: float = 90) -> str:
        return str(wait_until(lambda: (s := self.state(task_id)) in states and s, timeout_s,
                              f"{task_id} to reach {states} (it is {self.state(task_id)})"))

    def events(self, task_id: str, kind: str) -> list[dict[str, Any]]:
        db = Store(self.store_path, readonly=True)
        try:
            return [e.model_dump() for e in db.events(task_id) if e.kind == kind]
        finally:
            db.close()

    def card(self, task_id: str, word: str, after_seq: int = 0, timeout_s: float = 90) -> dict[str, Any]:
        """The bot's message tagged for ``task_id`` containing ``word``, with an event seq > ``after_seq``."""
        def match(m: dict[str, Any]) -> bool:
            text = m["text"]
            prefix = f"[task {task_id} #"
            return text.startswith(prefix) and word in text and int(text[len(prefix):].split("]")[0]) > after_seq

        return self.telegram.wait_sent(match, timeout_s, f"a '{word}' message for {task_id} after #{after_seq}")


@pytest.fixture(scope="session")
def chat(scheduler: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chat]:
    home = install_openclaw()
    built = build_plugin(home, check=True)
    assert built.returncode == 0, built.stderr  # dist/index.js is what src/index.ts builds to
    root = tmp_path_factory.mktemp("openclaw")
    plugin_token = secrets.token_urlsafe(24)
    token_file = root / "plugin-token"
    token_file.write_text(plugin_token)
    os.chmod(token_file, 0o600)
    telegram = FakeTelegram()
    slack = FakeSlack()
    sidecar_port = free_port()
    gateway = Gateway(home, root / "gateway", telegram, f"http://127.0.0.1:{sidecar_port}", token_file,
                      allow_from=[str(USER), str(OUTSIDER)], slack=slack)
    session = Chat(telegram=telegram, slack=slack, gateway=gateway, sidecar=None, scheduler=scheduler,  # type: ignore[arg-type]
                   admin={"Authorization": f"Bearer {secrets.token_urlsafe(24)}"}, plugin_token=plugin_token,
                   store_path=Path(scheduler.state_dir) / "hearth.db")
    session.sidecar = Sidecar(None, port=sidecar_port)  # placeholder so new_sidecar reuses the port
    session.sidecar = session.new_sidecar().__enter__()
    try:
        gateway.start()
        yield session
    finally:
        gateway.stop()
        session.sidecar.__exit__(None, None, None)
        telegram.close()
        slack.close()


