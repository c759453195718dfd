"""One ``docker exec`` seen from the host: its output stream as it arrives, its state, its process.

The Docker sandbox (agent/sandbox/docker.py) runs every command this way.
"""

from __future__ import annotations

import codecs
import contextlib
import socket
import threading
from pathlib import Path
from typing import Any

from docker.utils.socket import STDERR, frames_iter

from agent import processes
from agent.sandbox.base import OutputCallback
from agent.sandbox.output import OutputEmitter, TailBuffer


def exec_final_state(api: Any, exec_id: str) -> dict[str, Any]:
    """The exec's final state ({} if it still runs after two seconds)."""
    info: dict[str, Any] = {}

    def finished() -> bool:
        nonlocal info
        info = api.exec_inspect(exec_id)
        return not info.get("Running")

    return info if processes.wait_until(finished, 2.0, 0.02) else {}


def exec_host_pid(api: Any, exec_id: str) -> int:
    """The host pid of the exec's first process (0 if it has already ended or is not visible)."""
    pid = 0

    def known() -> bool:
        nonlocal pid
        info = api.exec_inspect(exec_id)
        pid = int(info.get("Pid") or 0)
        return bool(pid) or (info.get("ExitCode") is not None and not info.get("Running"))

    return pid if processes.wait_until(known, 2.0, 0.01) else 0


def in_container(pid: int, container_id: str) -> bool:
    """Whether host pid ``pid`` is in the container (guards the /proc-based kill on a remote daemon)."""
    try:
        return container_id in Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False


class ExecStream:
    """Reads a docker attach stream with docker-py's frame decoder (``frames_iter``, what
    ``demux=True`` uses), on a socket of our own so that a stuck exec can be cut off."""

    def __init__(self, sock: Any, callback: OutputCallback | None) -> None:
        self._sock = sock
        self.emit = OutputEmitter(callback)
        self.done = threading.Event()
        self._buffers = {"stdout": TailBuffer(), "stderr": TailBuffer()}
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in self._buffers}
        self.thread = threading.Thread(target=self._run, name="docker-exec-stream", daemon=True)
        self.thread.start()

    def _raw(self) -> Any:
        return getattr(self._sock, "_sock", self._sock)

    def _run(self) -> None:
        try:
            for stream_id, payload in frames_iter(self._raw(), tty=False):
                stream = "stderr" if stream_id == STDERR else "stdout"
                self._add(stream, self._decoders[stream].decode(payload))
        except (OSError, ValueError):
            pass
        finally:
            for stream, decoder in self._decoders.items():
                self._add(stream, decoder.decode(b"", final=True))
            self._close_all()
            self.done.set()

    def _close_all(self) -> None:
        for sock in (self._sock, self._raw()):
            with contextlib.suppress(Exception):
                sock.close()

    def _add(self, stream: str, text: str) -> None:
        if text:
            self.emit(stream, text)
            self._buffers[stream].add(text)

    def text(self, stream: str) -> str:
        return self._buffers[stream].text()

    def close(self) -> None:
        raw = self._raw()
        with contextlib.suppress(Exception):
            raw.shutdown(socket.SHUT_RDWR)
        self._close_all()
