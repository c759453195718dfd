"""The two channels into a QEMU VM: QMP (the monitor) and qemu-ga (the guest agent), and the tail
that streams a guest file while a command appends to it.

Both are newline-delimited JSON over a unix socket. ``AgentDead`` means QEMU exited or the socket
closed; ``AgentError`` is an error the guest agent answered with.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import json
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.processes import wait_until
from agent.sandbox.base import OutputCallback, SandboxError

OUTPUT_CAP = 32 << 20  # per stream
CHUNK = 1 << 20


class AgentDead(Exception):
    """QEMU exited or the agent channel closed."""


class Channel:
    """Newline-delimited JSON over a unix socket, with a liveness check while waiting."""

    def __init__(self, path: Path, alive: Callable[[], bool], timeout: float) -> None:
        connected: list[socket.socket] = []

        def connect() -> bool:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
            except OSError:
                s.close()
                if not alive():
                    raise AgentDead(f"qemu exited before {path.name} was up") from None
                return False
            connected.append(s)
            return True

        if not wait_until(connect, timeout, 0.01):
            raise TimeoutError(f"{path.name} did not accept a connection within {timeout:.0f} s")
        s = connected[0]
        s.setblocking(False)
        self.sock = s
        self.alive = alive
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise AgentDead(f"agent channel closed: {e}") from e
        finally:
            self.sock.setblocking(False)

    def readline(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer")
            r, _, _ = select.select([self.sock], [], [], min(left, 0.25))
            if not r:
                if not self.alive():
                    raise AgentDead("qemu exited")
                continue
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError as e:
                raise AgentDead(f"channel error: {e}") from e
            if not chunk:
                raise AgentDead("channel closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class QMP:
    def __init__(self, path: Path, alive: Callable[[], bool], timeout: float = 30) -> None:
        self.ch = Channel(path, alive, timeout)
        self.ch.readline(timeout)  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, execute: str, timeout: float = 60, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        self.ch.send(json.dumps(msg).encode() + b"\n")
        while True:
            r = json.loads(self.ch.readline(timeout))
            if "event" in r:
                continue
            if "error" in r:
                raise SandboxError(f"qmp {execute}: {r['error'].get('desc', r['error'])}")
            return r.get("return")

    def hmp(self, line: str, timeout: float = 120) -> str:
        out = self.cmd("human-monitor-command", timeout=timeout, **{"command-line": line})
        return str(out or "")


class AgentError(SandboxError):
    pass


class GuestAgent:
    """qemu-ga client. A request that timed out leaves the stream out of step: resync first."""

    def __init__(self, path: Path, alive: Callable[[], bool]) -> None:
        self.ch = Channel(path, alive, 30)
        self.synced = False
        self._token = int(time.time()) % 1_000_000

    def sync(self, timeout: float, attempt_s: float = 0.25) -> None:
        """guest-sync-delimited until the agent answers (boot wait, after loadvm, after a timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            self._token += 1
            token = self._token
            self.ch.send(b"\xff" + json.dumps({"execute": "guest-sync-delimited",
                                                "arguments": {"id": token}}).encode() + b"\n")
            until = min(deadline, time.monotonic() + attempt_s)
            try:
                while True:
                    line = self.ch.readline(max(0.0, until - time.monotonic()))
                    line = line[line.rfind(b"\xff") + 1 :]
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(r, dict) and r.get("return") == token:
                        self.synced = True
                        return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"guest agent did not answer within {timeout:.0f} s") from None
                attempt_s = min(attempt_s * 1.5, 2.0)

    def call(self, execute: str, timeout: float = 60, **arguments: Any) -> Any:
        if not self.synced:
            self.sync(timeout)
        msg: dict[str, Any] = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        self.ch.send(json.dumps(msg).encode() + b"\n")
        try:
            while True:
                line = self.ch.readline(timeout).lstrip(b"\xff")
                if not line.strip():
                    continue
                r = json.loads(line)
                if "error" in r:
                    raise AgentError(f"guest agent {execute}: {r['error'].get('desc', r['error'])}")
                return r.get("return")
        except TimeoutError:
            self.synced = False
            raise

    def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        """A plain guest-exec with captured output (internal commands): exit code, stdout, stderr."""
        pid = self.call("guest-exec", path=argv[0], arg=argv[1:], **{"capture-output": True})["pid"]
        status: dict[str, Any] = {}

        def exited() -> bool:
            status.update(self.call("guest-exec-status", pid=pid))
            return bool(status.get("exited"))

        if not wait_until(exited, timeout, 0.002, backoff=1.5, max_interval_s=0.05):
            raise TimeoutError(f"guest command {argv!r} did not finish")
        out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
        err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
        return int(status.get("exitcode", -1)), out, err

    # file API -------------------------------------------------------------------------------
    def read_file(self, path: str, limit: int = 1 << 30) -> bytes:
        try:
            h = self.call("guest-file-open", path=path, mode="r")
        except AgentError:
            return b""
        out = bytearray()
        try:
            while len(out) < limit:
                r = self.call("guest-file-read", handle=h, count=4 << 20)
                if r.get("count"):
                    out += base64.b64decode(r["buf-b64"])
                if r.get("eof") or not r.get("count"):
                    break
        finally:
            self.call("guest-file-close", handle=h)
        return bytes(out)

    def write_file(self, path: str, data: bytes) -> None:
        h = self.call("guest-file-open", path=path, mode="w")
        try:
            for i in range(0, len(data), CHUNK):
                chunk = base64.b64encode(data[i : i + CHUNK]).decode()
                args: dict[str, Any] = {"handle": h, "buf-b64": chunk}
                self.call("guest-file-write", **args)
        finally:
            self.call("guest-file-close", handle=h)


class OutputTail:
    """Streams a guest file that the command appends to (opened lazily: the helper creates it)."""

    def __init__(self, qga: GuestAgent, path: str, stream: str, on_output: OutputCallback | None) -> None:
        self.qga = qga
        self.path = path
        self.stream = stream
        self.on_output = on_output
        self.handle: int | None = None
        self.pos = 0
        self.eof = False
        self.parts: list[str] = []
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def poll(self) -> None:
        if self.handle is None:
            try:
                self.handle = int(self.qga.call("guest-file-open", path=self.path, mode="r"))
            except AgentError:
                return  # not created yet
        while self.pos < OUTPUT_CAP:
            if self.eof:  # fread's EOF is sticky: seek to clear it
                self.qga.call("guest-file-seek", handle=self.handle, offset=self.pos, whence="set")
            r = self.qga.call("guest-file-read", handle=self.handle, count=1 << 20)
            n = int(r.get("count", 0))
            self.eof = bool(r.get("eof"))
            if n:
                self.feed(base64.b64decode(r["buf-b64"]))
            if n < (1 << 20):
                return

    def feed(self, data: bytes, final: bool = False) -> None:
        self.pos += len(data)
        text = self.decoder.decode(data, final=final)
        if text:
            self.parts.append(text)
            if self.on_output:
                self.on_output(self.stream, text)

    def finish(self, full: bytes) -> str:
        """``full``: the whole output (from the helper); emits what was not streamed yet."""
        self.feed(full[self.pos :], final=True)
        self.close()
        return "".join(self.parts)

    def close(self) -> None:
        if self.handle is not None:
            with contextlib.suppress(SandboxError, TimeoutError):
                self.qga.call("guest-file-close", handle=self.handle)
            self.handle = None

    def text(self) -> str:
        return "".join(self.parts)
