"""Benchmark chat delivery (the outbox sender) and the answer path.

    python bench/events.py [--events 50] [--drain 1000] [--tasks 100] [--answers 10] [--real]

Figures (progress on stderr; the last line on stdout is one JSON object):

* ``event_to_gateway_ms_p50`` / ``_p90``: from an event stored (``Store.append_event`` returned, as
  the scheduler stores it) to the gateway's 200 for its message, one event at a time, through the
  real ``Notifier`` and ``GatewayClient``, against a stand-in gateway on loopback (a minimal
  ``POST /tools/invoke`` that answers at once), so it measures Hearth's side. Target < 100 ms.
* ``answer_to_resume_ms_p50``: from the moment the answer is POSTed to the sidecar (uvicorn, real
  HTTP) to the moment the model sees it: the ``AgentAction`` the runner records for the model's
  next reply, which is built from the answer (scripted:ask writes it to answer.txt). A real Ray
  cluster, the real scheduler actor and task actors. Target < 2 s. ``answer_recorded_ms_p50`` is
  the part until the scheduler has stored ``AnswerReceived`` (sidecar + scheduler);
  ``answer_to_placed_ms_p50`` until the new attempt's actor is created (``TaskPlaced``: the asking
  attempt has parked and the scheduler re-placed the task); ``answer_to_step_started_ms_p50`` until
  the new attempt's runner has its workspace and sandbox back; the rest is the model's turn.
* ``outbox_drain_per_s``: ``--drain`` events (spread over ``--tasks`` tasks, 10 each by default)
  queued while the gateway is down (the sender keeps retrying with its normal backoff), then the
  gateway comes back: messages acknowledged per second, from the first acknowledgement to the
  last. ``outbox_drain_s`` is from the gateway's return to the last acknowledgement (it includes
  the wait for the next retry). Stand-in gateway.
* With ``--real``: also ``real_gateway_*``: the same latency and a smaller drain (``--real-drain``,
  default 100) against a REAL OpenClaw gateway delivering to a fake Telegram Bot API
  (deploy/openclaw/install.sh must have run; the gateway takes about a minute to start). All the
  real drain's messages go to one chat, and OpenClaw's Telegram channel throttles sends to about one
  per second per chat (grammy's apiThrottler, Telegram's own limit), which bounds that figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pydantic import SecretStr  # noqa: E402
from tests_support import stored_spec  # noqa: E402

from agent.events import ClarificationRequested, TaskCompleted, TaskSubmitted  # noqa: E402
from cluster.openclaw import GatewayClient, GatewaySettings, Notifier  # noqa: E402
from cluster.outbox import OutboxEntry  # noqa: E402
from cluster.store import Store  # noqa: E402

TOKEN = "bench-gateway-token"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else float("nan")


class StandInGateway:
    """``POST /tools/invoke`` that checks the bearer and answers 200 at once; can go down and come back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self.server: ThreadingHTTPServer | None = None

    def up(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:  # the readiness probe the sender checks after a failure
                body = b'{"ready": true}' if self.path == "/readyz" else b"{}"
                self.send_response(200 if self.path == "/readyz" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ok = self.path == "/tools/invoke" and self.headers.get("Authorization") == f"Bearer {TOKEN}"
                outer.count += 1
                body = json.dumps({"ok": True, "result": {"details": {"messageId": str(outer.count)}}}
                                  if ok else {"ok": False}).encode()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def new_task(store: Store, n: int) -> str:
    spec = stored_spec("bench", "scripted:demo", {"US-001": "Bench"}, {"channel": "telegram", "target": "111"})
    return store.create_task(project="bench", name=f"bench {n}", priority=50, model="scripted:demo", spec=spec,
                             submitted=TaskSubmitted(task_id="pending", name="b", steps=["US-001"], priority=50)).id


async def latency(store: Store, url: str, token: str, count: int, timeout_s: float = 60) -> list[float]:
    """ms from append_event() returning to the gateway's acknowledgement, one event at a time."""
    acked: dict[int, float] = {}

    def on_ack(entry: OutboxEntry, at: float) -> None:
        acked[entry.event.seq or 0] = at

    client = GatewayClient(GatewaySettings(url=url, token=SecretStr(token)))
    notifier = Notifier(store.path, client, lock_path=store.path.parent / "bench.lock")
    notifier.on_ack = on_ack
    stop = asyncio.Event()
    job = asyncio.create_task(notifier.run(stop))
    task_id = new_task(store, 0)
    samples = []
    try:
        for n in range(count):
            event = store.append_event(ClarificationRequested(task_id=task_id, step_id="US-001", question=f"q{n}"))
            stored = time.time()
            deadline = time.monotonic() + timeout_s
            while (event.seq or 0) not in acked:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"event {event.seq} not acknowledged in {timeout_s} s")
                await asyncio.sleep(0.001)
            samples.append((acked[event.seq or 0] - stored) * 1000)
    finally:
        stop.set()
        await job
        await client.aclose()
    return samples


async def drain(store: Store, url: str, token: str, total: int, tasks: int, up: Any, timeout_s: float = 600
                ) -> dict[str, float]:
    """Queue ``total`` events while the gateway is down, bring it up, time the drain."""
    acks: list[float] = []
    client = GatewayClient(GatewaySettings(url=url, token=SecretStr(token)))
    notifier = Notifier(store.path, client, lock_path=store.path.parent / "bench.lock")
    notifier.on_ack = lambda entry, at: acks.append(at)
    stop = asyncio.Event()
    job = asyncio.create_task(notifier.run(stop))
    ids = [new_task(store, n) for n in range(tasks)]
    for n in range(total):
        store.append_event(TaskCompleted(task_id=ids[n % tasks], branch="b", commits=[str(n)]))
    await asyncio.sleep(3.0)  # a short outage: the sender keeps failing and backing off
    failures = notifier.failures
    back = time.time()
    await asyncio.to_thread(up)
    deadline = time.monotonic() + timeout_s
    while len(acks) < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(acks)} of {total} acknowledged in {timeout_s} s")
        await asyncio.sleep(0.01)
    stop.set()
    await job
    await client.aclose()
    span = max(acks) - min(acks)
    return {"per_s": round(total / span, 1) if span > 0 else float("inf"),
            "drain_s": round(max(acks) - back, 2), "failures_during_outage": failures}


def answer_to_resume(answers: int, phases: dict[str, list[float]]) -> list[float]:
    """ms from POST /answer to the model's next action, on a real Ray cluster with scripted:ask."""
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import httpx
    import ray
    from openclaw_fixtures import Sidecar, make_project
    from ray.cluster_utils import Cluster

    from cluster.api import create_app
    from cluster.scheduler import get_or_create_scheduler
    from cluster.scheduler_client import RaySchedulerClient

    work = Path(tempfile.mkdtemp(prefix="hearth-bench-events-"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"hearth_slots": 4},
                                                            "include_dashboard": False})
    ray.init(address=cluster.address, namespace="hearth", logging_level=logging.WARNING, log_to_driver=False)
    samples: list[float] = []
    try:
        scheduler = get_or_create_scheduler(str(work / "state"))
        db_path = work / "state" / "hearth.db"
        project = make_project(work, "bench-ask")
        app = create_app(RaySchedulerClient(scheduler), db_path, "admin")
        with Sidecar(app) as sidecar, httpx.Client(base_url=sidecar.url, headers={"Authorization": "Bearer admin"},
                                                   timeout=60) as http:
            while len(samples) < answers:
                task_id = http.post("/v1/tasks", json={"project_path": str(project), "prd_path": "tasks/prd.json",
                                                       "model": "scripted:ask"}).json()["id"]
                for _ in range(2):  # two stories, one question each
                    deadline = time.monotonic() + 120
                    while True:
                        waiting = [t for t in http.get("/v1/approvals").json() if t["id"] == task_id]
                        if waiting and waiting[0]["pending"]:
                            break
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"{task_id} never asked")
                        time.sleep(0.02)
                    seq = waiting[0]["pending"]["seq"]
                    sent = time.time()
                    reply = http.post(f"/v1/tasks/{task_id}/answer", json={"text": "blue", "question": seq})
                    assert reply.status_code == 200, reply.text
                    deadline = time.monotonic() + 60
                    while True:
                        db = Store(db_path, readonly=True)
                        try:
                            later = db.events(task_id, seq)
                            after = [e for e in later if e.kind == "agent_action"]
                            received = [e for e in later if e.kind == "answer_received"]
                        finally:
                            db.close()
                        if after:
                            samples.append((after[0].at - sent) * 1000)
                            phases["recorded"].append((received[0].at - sent) * 1000)
                            for kind in ("task_placed", "step_started"):
                                seen = [e for e in later if e.kind == kind]
                                if seen:
                                    phases[kind].append((seen[0].at - sent) * 1000)
                            break
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"{task_id} did not resume")
                        time.sleep(0.005)
                say(f"  answer→resume: {[round(s) for s in samples]}")
    finally:
        ray.shutdown()
        cluster.shutdown()
    return samples[:answers]


def real_gateway(events: int, total: int) -> dict[str, Any]:
    from openclaw_fixtures import FakeTelegram, Gateway, install_openclaw

    home = install_openclaw()
    root = Path(tempfile.mkdtemp(prefix="hearth-bench-openclaw-"))
    token_file = root / "plugin-token"
    token_file.write_text("unused")
    telegram = FakeTelegram()
    gateway = Gateway(home, root / "gateway", telegram, "http://127.0.0.1:9", token_file, allow_from=["111"])
    result: dict[str, Any] = {}
    try:
        say("real gateway: starting (about a minute)")
        result["real_gateway_start_s"] = round(gateway.start(), 1)
        store = Store(root / "hearth.db")
        samples = asyncio.run(latency(store, gateway.url, gateway.token, events, timeout_s=120))
        result["real_gateway_event_to_gateway_ms_p50"] = pct(samples, 0.5)
        result["real_gateway_event_to_gateway_ms_p90"] = pct(samples, 0.9)
        say(f"real gateway latency p50 {result['real_gateway_event_to_gateway_ms_p50']} ms")
        gateway.stop()
        figures = asyncio.run(drain(store, gateway.url, gateway.token, total, max(1, total // 10), gateway.start))
        result["real_gateway_outbox_drain_per_s"] = figures["per_s"]
        result["real_gateway_drain_events"] = total
        sent = [m for m in telegram.sent("111") if m["text"].startswith("[task ")]
        result["real_gateway_duplicates"] = len(sent) - len({m["text"] for m in sent})
        store.close()
    finally:
        gateway.stop()
        telegram.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--drain", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--answers", type=int, default=10)
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--real-events", type=int, default=20)
    parser.add_argument("--real-drain", type=int, default=100)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gateway = StandInGateway(port)
    url = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {"gateway": "stand-in /tools/invoke on loopback (answers at once)"}
    with tempfile.TemporaryDirectory(prefix="hearth-bench-events-") as tmp:
        gateway.up()
        store = Store(Path(tmp) / "latency.db")
        samples = asyncio.run(latency(store, url, TOKEN, args.events))
        store.close()
        result["event_to_gateway_ms_p50"] = pct(samples, 0.5)
        result["event_to_gateway_ms_p90"] = pct(samples, 0.9)
        say(f"event→gateway: p50 {result['event_to_gateway_ms_p50']} ms over {len(samples)} events")
        gateway.down()
        store = Store(Path(tmp) / "drain.db")
        figures = asyncio.run(drain(store, url, TOKEN, args.drain, args.tasks, gateway.up))
        store.close()
        gateway.down()
        result["outbox_drain_per_s"] = figures["per_s"]
        result["outbox_drain_s"] = figures["drain_s"]
        result["outbox_drain_events"] = args.drain
        result["outbox_drain_tasks"] = args.tasks
        say(f"drain: {figures}")
    phases: dict[str, list[float]] = {"recorded": [], "task_placed": [], "step_started": []}
    samples = answer_to_resume(args.answers, phases)
    result["answer_to_resume_ms_p50"] = pct(samples, 0.5)
    result["answer_to_resume_ms_p90"] = pct(samples, 0.9)
    result["answer_recorded_ms_p50"] = pct(phases["recorded"], 0.5)
    result["answer_to_placed_ms_p50"] = pct(phases["task_placed"], 0.5)
    result["answer_to_step_started_ms_p50"] = pct(phases["step_started"], 0.5)
    if args.real:
        result.update(real_gateway(args.real_events, args.real_drain))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
