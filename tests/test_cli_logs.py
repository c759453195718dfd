"""``hearth logs -f`` keeps the SSE ``id:`` of each event and, when the connection drops, resumes after
it with ``Last-Event-ID``: against the real sidecar and scheduler, no event is lost or shown twice."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from openclaw_fixtures import Sidecar
from tests_support import from_store

from cluster.api import create_app
from cluster.cli_client import SidecarClient
from cluster.scheduler_client import RaySchedulerClient

pytestmark = pytest.mark.ray
TOKEN = "logs-token"


def _drop(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv()
    sock.close()


class CuttableProxy:
    """A loopback TCP forwarder whose open connections can be cut mid-stream: to the client, a
    dropped connection (the response body ends before its last chunk)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: list[socket.socket] = []
        self.accepted = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.open += [client, upstream]
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            _drop(sock)

    def cut(self) -> None:
        with self.lock:
            for sock in self.open:
                _drop(sock)
            self.open.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_logs_follow_resumes_after_a_dropped_connection_without_losing_or_repeating_events(
        scheduler: Any, greeting_project: Path) -> None:
    app = create_app(RaySchedulerClient(scheduler), Path(scheduler.state_dir) / "hearth.db", TOKEN)
    with Sidecar(app) as sidecar:
        proxy = CuttableProxy(sidecar.port)
        try:
            client = SidecarClient(f"http://127.0.0.1:{proxy.port}", TOKEN)
            task = client.request("POST", "/v1/tasks", json={
                "project_path": str(greeting_project), "prd_path": "tasks/prd.json", "model": "scripted:sleep-2"})
            seen: list[int | None] = []
            for event in client.stream_events(task["id"]):
                seen.append(event.seq)
                if len(seen) == 2:
                    proxy.cut()  # the task is still running: more events come after the drop
            stored = from_store(scheduler, lambda store: [e.seq for e in store.events(task["id"])])
            final = client.request("GET", f"/v1/tasks/{task['id']}")
        finally:
            proxy.close()
    assert final["state"] == "completed"
    assert proxy.accepted >= 3  # the submit, the first stream, and at least one resumed stream
    assert seen == stored and len(seen) > 2
