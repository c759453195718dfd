"""A task's event log as server-sent events, resumable with ``Last-Event-ID`` (the event's seq)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from cluster import metrics
from cluster.api.auth import need
from cluster.api.deps import ReadStore, open_store
from cluster.scheduling.states import TERMINAL

router = APIRouter(prefix="/v1/tasks")
POLL_S = 0.1


@router.get("/{task_id}/events", dependencies=[need("read")])
async def events(task_id: str, request: Request, store: ReadStore, follow: bool = True) -> EventSourceResponse:
    store.task(task_id)  # 404 before the stream starts
    last = request.headers.get("last-event-id", "0")
    return EventSourceResponse(_stream(request, task_id, int(last) if last.isdigit() else 0, follow), ping=15)


async def _stream(request: Request, task_id: str, after: int, follow: bool) -> AsyncIterator[dict[str, Any]]:
    with metrics.sse_client("events"):
        async for item in _events_after(request, task_id, after, follow):
            yield item


async def _events_after(request: Request, task_id: str, after: int, follow: bool) -> AsyncIterator[dict[str, Any]]:
    while True:
        store = open_store(request)  # one short read a poll: the stream may last for hours
        try:
            batch = store.events(task_id, after)
            finished = store.task(task_id).state in TERMINAL
        finally:
            store.close()
        for event in batch:
            after = event.seq or after
            yield {"id": str(event.seq), "event": event.kind, "data": event.model_dump_json()}
        if (finished and not batch) or not follow or await request.is_disconnected():
            return
        await asyncio.sleep(POLL_S)
