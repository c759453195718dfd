"""``GET /metrics``: the cluster in Prometheus' text format (prometheus-client), read at scrape time.

Everything but the SSE client count is computed from the store (read-only) and the node inventories
when Prometheus scrapes, so the numbers are the store's truth and survive a sidecar restart:

* ``hearth_tasks{state}`` — tasks in each state;
* ``hearth_queue_wait_seconds`` — how long placements waited in the queue (histogram), and
  ``hearth_queue_oldest_wait_seconds`` — the longest wait of a task queued now;
* ``hearth_step_duration_seconds`` — finished steps (histogram);
* ``hearth_tokens_total{kind}`` — prompt and completion tokens where events carry them;
* ``hearth_attempts_total{reason}`` — attempts by how they ended (``running`` while they run);
* ``hearth_node_up{node}``, ``hearth_node_vram_used_mib`` / ``hearth_node_vram_free_mib{node,gpu,name}``;
* ``hearth_model_containers{node,model}`` — model servers Hearth runs on each node;
* ``hearth_outbox_pending`` and ``hearth_outbox_lag_seconds`` — chat messages not yet delivered,
  and how old the oldest is;
* ``hearth_sse_clients{stream}`` — open event streams (board, task and inbox pages; ``/v1`` readers).

Scraping needs the ``read`` right: ``Authorization: Bearer`` with the API token or a person's token
(``hearth token add prometheus --role reader``), or a logged-in page session.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from cluster.scheduling.states import TaskState
from cluster.store import Store
from cluster.web.context import WebContext, web_context
from cluster.web.sessions import COOKIE, PluginTokenRefused

router = APIRouter()
WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, float("inf"))
STEP_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf"))
NODES_WAIT_S = 5.0

_sse_clients: Counter[str] = Counter()


@contextlib.contextmanager
def sse_client(stream: str) -> Iterator[None]:
    """Count an open event stream while it lasts."""
    _sse_clients[stream] += 1
    try:
        yield
    finally:
        _sse_clients[stream] -= 1


def _histogram(name: str, doc: str, values: Iterable[float], buckets: tuple[float, ...]) -> HistogramMetricFamily:
    data = list(values)
    counts = [(("+Inf" if b == float("inf") else repr(float(b))), float(sum(v <= b for v in data)))
              for b in buckets]
    return HistogramMetricFamily(name, doc, buckets=counts, sum_value=float(sum(data)))


def _queue_waits(db: Store) -> list[float]:
    """For each placement, the time since the task last entered the queue."""
    rows = db.db.execute(
        "SELECT task_id, kind, at FROM events WHERE kind IN"
        " ('task_submitted', 'task_requeued', 'answer_received', 'task_placed') ORDER BY task_id, seq").fetchall()
    waits: list[float] = []
    entered: dict[str, float] = {}
    for row in rows:
        if row["kind"] == "task_placed":
            if row["task_id"] in entered:
                waits.append(max(0.0, row["at"] - entered.pop(row["task_id"])))
        else:
            entered.setdefault(row["task_id"], row["at"])
    return waits


class StoreCollector(Collector):
    def __init__(self, db: Store, nodes: list[dict[str, Any]] | None) -> None:
        self.db = db
        self.nodes = nodes

    def collect(self) -> Iterator[Metric]:
        db, now = self.db.db, time.time()
        tasks = GaugeMetricFamily("hearth_tasks", "Tasks in each state.", labels=["state"])
        counts = dict(db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall())
        for state in TaskState:
            tasks.add_metric([state.value], counts.get(state.value, 0))
        yield tasks
        yield _histogram("hearth_queue_wait_seconds", "Time placed tasks waited in the queue.",
                         _queue_waits(self.db), WAIT_BUCKETS)
        oldest = db.execute("SELECT MIN(queued_since) FROM tasks WHERE state = 'queued'").fetchone()[0]
        yield GaugeMetricFamily("hearth_queue_oldest_wait_seconds", "Longest wait of a task queued now.",
                                value=max(0.0, now - oldest) if oldest else 0.0)
        steps = [r[0] for r in db.execute("SELECT json_extract(body, '$.duration_s') FROM events"
                                          " WHERE kind = 'step_completed'").fetchall() if r[0] is not None]
        yield _histogram("hearth_step_duration_seconds", "Duration of finished steps.", steps, STEP_BUCKETS)
        tokens = CounterMetricFamily("hearth_tokens", "Model tokens used, where events count them.",
                                     labels=["kind"])
        for kind in ("prompt", "completion"):
            total = db.execute(f"SELECT COALESCE(SUM(json_extract(body, '$.{kind}_tokens')), 0) FROM events"
                               f" WHERE json_extract(body, '$.{kind}_tokens') IS NOT NULL").fetchone()[0]
            tokens.add_metric([kind], float(total))
        yield tokens
        attempts = CounterMetricFamily("hearth_attempts", "Attempts by how they ended.", labels=["reason"])
        for reason, count in db.execute("SELECT COALESCE(reason, 'running'), COUNT(*) FROM attempts"
                                        " GROUP BY 1").fetchall():
            attempts.add_metric([reason], count)
        yield attempts
        pending, oldest_at = db.execute("SELECT COUNT(*), MIN(e.at) FROM outbox o JOIN events e ON e.id = o.event_id"
                                        " WHERE o.acked_at IS NULL").fetchone()
        yield GaugeMetricFamily("hearth_outbox_pending", "Chat messages not yet delivered.", value=pending)
        yield GaugeMetricFamily("hearth_outbox_lag_seconds", "Age of the oldest undelivered chat message.",
                                value=max(0.0, now - oldest_at) if oldest_at else 0.0)
        clients = GaugeMetricFamily("hearth_sse_clients", "Open event streams.", labels=["stream"])
        for stream in ("board", "task", "inbox", "events"):
            clients.add_metric([stream], _sse_clients[stream])
        yield clients
        yield from self._nodes()

    def _nodes(self) -> Iterator[Metric]:
        if self.nodes is None:
            return
        up = GaugeMetricFamily("hearth_node_up", "1 for a node Ray sees alive, 0 for a lost one.", labels=["node"])
        used = GaugeMetricFamily("hearth_node_vram_used_mib", "VRAM in use per GPU (NVML).",
                                 labels=["node", "gpu", "name"])
        free = GaugeMetricFamily("hearth_node_vram_free_mib", "VRAM free per GPU (NVML).",
                                 labels=["node", "gpu", "name"])
        models = GaugeMetricFamily("hearth_model_containers", "Model servers Hearth runs, per node and model.",
                                   labels=["node", "model"])
        for node in self.nodes:
            node_id = str(node.get("node_id", ""))[:12]
            up.add_metric([node_id], 1 if node.get("alive") else 0)
            for gpu in node.get("gpus") or []:
                labels = [node_id, str(gpu.get("index", 0)), str(gpu.get("name", ""))]
                used.add_metric(labels, gpu.get("used_vram_mib", 0))
                free.add_metric(labels, gpu.get("free_vram_mib", 0))
            for model, count in Counter(str(m.get("model", "")) for m in node.get("models") or []).items():
                models.add_metric([node_id, model], count)
        yield from (up, used, free, models)


def _authorized(request: Request, web: WebContext) -> bool:
    if web.sessions.get(request.cookies.get(COOKIE)) is not None:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:
        identity = web.auth.identify(token)
    except PluginTokenRefused:
        return False
    return identity is not None and "read" in identity.rights


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, web: WebContext = Depends(web_context)) -> Response:
    if not _authorized(request, web):
        raise HTTPException(status_code=401, detail="metrics need the API token or a person's token (bearer)")
    try:
        nodes: list[dict[str, Any]] | None = await asyncio.wait_for(web.nodes(), NODES_WAIT_S)
    except Exception:  # a slow or failing inventory must not fail the scrape: node metrics are left out
        nodes = None
    registry = CollectorRegistry(auto_describe=False)
    with web.store() as db:
        registry.register(StoreCollector(db, nodes))
        body = generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
