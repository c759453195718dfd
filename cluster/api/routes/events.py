"""A task's event log as server-sent events, resumable with ``Last-Event-ID`` (the event's seq).

Streams read through the app's one ``EventFeed`` (cluster/api/feed.py) and sleep until their task
has new events: no stream polls the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from cluster import metrics
from cluster.api.auth import need
from cluster.api.deps import ReadStore
from cluster.api.feed import EventFeed
from cluster.api.schemas import AUTHED, refusals
from cluster.scheduling.states import TERMINAL

router = APIRouter(prefix="/v1/tasks", responses=AUTHED)
RECHECK_S = 15.0
"""A stream re-reads its task this often even without news (belt and braces; also the SSE ping)."""


@router.get("/{task_id}/events", dependencies=[need("read")], response_class=EventSourceResponse,
            responses={**refusals(404), 200: {"content": {"text/event-stream": {}},
                                              "description": "The task's events; `id:` is each event's seq"}})
async def events(task_id: str, request: Request, store: ReadStore, follow: bool = True) -> EventSourceResponse:
    store.task(task_id)  # 404 before the stream starts
    last = request.headers.get("last-event-id", "0")
    feed: EventFeed = request.app.state.feed
    return EventSourceResponse(_stream(feed, task_id, int(last) if last.isdigit() else 0, follow), ping=15)


async def _stream(feed: EventFeed, task_id: str, after: int, follow: bool) -> AsyncIterator[dict[str, Any]]:
    with metrics.sse_client("events"):
        async for item in _events_after(feed, task_id, after, follow):
            yield item


async def _events_after(feed: EventFeed, task_id: str, after: int, follow: bool) -> AsyncIterator[dict[str, Any]]:
    while True:
        seen = feed.mark(task_id)
        store = feed.view()
        batch = store.events(task_id, after)
        finished = store.task(task_id).state in TERMINAL
        for event in batch:
            after = event.seq or after
            yield {"id": str(event.seq), "event": event.kind, "data": event.model_dump_json()}
        if (finished and not batch) or not follow:
            return
        if not batch:
            await feed.wait(task_id, seen, RECHECK_S)
