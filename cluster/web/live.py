"""Live pages over server-sent events: the board and a task's page change without a reload.

A stream does not poll: it sleeps on the sidecar's one store watcher (``EventFeed.wait_commit``,
cluster/api/feed.py), which wakes it when the scheduler commits anything, and only then re-renders
and sends what changed as HTML fragments; ``hearth.js`` swaps them in by event name. An idle page
costs nothing but a session check every ``RECHECK_S``. The browser's EventSource reconnects by
itself and sends ``Last-Event-ID`` (the last event seq it got), so a task page never misses or
repeats an event line.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from sse_starlette.sse import EventSourceResponse

from cluster import metrics
from cluster.api.feed import EventFeed
from cluster.errors import UnknownTask
from cluster.store import Store
from cluster.web import board as board_view
from cluster.web import task_view
from cluster.web.context import WebContext, web_context
from cluster.web.guards import Refused, approver_note_for, current_session
from cluster.web.sessions import Session

router = APIRouter(prefix="/ui/live", include_in_schema=False)

RECHECK_S = 5.0
"""How often an idle stream checks that its session is still open and its token not removed."""

Frames = Callable[[Store], Iterator[dict[str, str]]]
"""Reads the store and yields the SSE frames to send for what changed since its last call."""


def _html(request: Request, web: WebContext, template: str, **context: Any) -> str:
    return str(web.templates.get_template(template).render(request=request, **context))


def _live(request: Request, web: WebContext, session: Session, kind: str, frames: Frames) -> EventSourceResponse:
    """A stream that calls ``frames`` once at the start and again after every commit to the store."""
    feed: EventFeed = request.app.state.feed

    async def stream() -> AsyncIterator[dict[str, str]]:
        checked = time.monotonic()
        with metrics.sse_client(kind):
            while not await request.is_disconnected():
                if time.monotonic() - checked >= RECHECK_S:
                    if web.sessions.get(session.id) is None or not web.auth.still_valid(session.identity):
                        return
                    checked = time.monotonic()
                seen = feed.commits  # before reading: a commit during the read wakes the next wait
                for frame in frames(feed.view()):
                    yield frame
                await feed.wait_commit(seen, RECHECK_S)

    return EventSourceResponse(stream(), ping=15)


@router.get("/board")
async def board(request: Request, project: str | None = None, web: WebContext = Depends(web_context),
                session: Session = Depends(current_session)) -> EventSourceResponse:
    def frames(db: Store) -> Iterator[dict[str, str]]:
        data = board_view.board(db, project)
        yield {"event": "board", "data": _html(request, web, "_board.html", board=data)}
        yield {"event": "inbox", "data": str(board_view.inbox_count(db))}

    return _live(request, web, session, "board", frames)


@router.get("/inbox")
async def inbox(request: Request, web: WebContext = Depends(web_context),
                session: Session = Depends(current_session)) -> EventSourceResponse:
    shown: list[tuple[str, int]] | None = None

    def frames(db: Store) -> Iterator[dict[str, str]]:
        nonlocal shown
        waiting = board_view.inbox(db)
        now_shown = [(w.task_id, w.seq) for w in waiting]
        if shown is not None and now_shown != shown:  # the page already shows the first list
            yield {"event": "inbox-list", "data": _html(request, web, "_inbox.html", waiting=waiting,
                                                        csrf=session.csrf, session=session)}
        shown = now_shown
        yield {"event": "inbox", "data": str(len(waiting))}

    return _live(request, web, session, "inbox", frames)


@router.get("/tasks/{task_id}")
async def task(request: Request, task_id: str, after: int = 0, web: WebContext = Depends(web_context),
               session: Session = Depends(current_session)) -> EventSourceResponse:
    last = request.headers.get("last-event-id", "")
    after = int(last) if last.isdigit() else after
    with web.store() as db:
        try:
            db.task(task_id)
        except UnknownTask:
            raise Refused(f"there is no task {task_id}", status=404) from None
    shape: tuple[Any, ...] | None = None

    def frames(db: Store) -> Iterator[dict[str, str]]:
        nonlocal after, shape
        new = db.events(task_id, after)
        if new:
            after = new[-1].seq or after
            rows = _html(request, web, "_events.html", events=[task_view.event_view(e) for e in new])
            yield {"event": "events", "data": rows, "id": str(after)}
        row = db.task(task_id)
        now_shape = (row.state, row.updated_at, row.priority, after)
        if now_shape != shape:
            if shape is not None:
                page = task_view.task_page(db, row)
                note = approver_note_for(session, row)
                yield {"event": "status", "data": _html(request, web, "_task_status.html", page=page,
                                                         csrf=session.csrf, session=session, approver_note=note)}
                yield {"event": "work", "data": _html(request, web, "_task_work.html", page=page)}
                yield {"event": "inbox", "data": str(board_view.inbox_count(db))}
            shape = now_shape

    return _live(request, web, session, "task", frames)
