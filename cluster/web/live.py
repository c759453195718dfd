"""Live pages over server-sent events: the board and a task's page change without a reload.

Each stream keeps one read-only SQLite connection and looks at ``PRAGMA data_version`` a few times a
second (it changes only when the scheduler commits), so an idle page costs a cheap query, not a
re-render. What changed is sent as HTML fragments; ``hearth.js`` swaps them in by event name. The
browser's EventSource reconnects by itself and sends ``Last-Event-ID`` (the last event seq it got),
so a task page never misses or repeats an event line.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from sse_starlette.sse import EventSourceResponse

from cluster import metrics
from cluster.errors import UnknownTask
from cluster.store import Store
from cluster.web import board as board_view
from cluster.web import task_view
from cluster.web.context import WebContext, web_context
from cluster.web.guards import Refused, approver_note_for, current_session
from cluster.web.sessions import Session

router = APIRouter(prefix="/ui/live", include_in_schema=False)
POLL_S = 0.25


RECHECK_EVERY = 20
"""Polls between checks that the session is still open and its token not removed (about 5 s)."""


def _still_open(web: WebContext, session: Session, polls: int) -> bool:
    if polls % RECHECK_EVERY:
        return True
    return web.sessions.get(session.id) is not None and web.auth.still_valid(session.identity)


def _html(request: Request, web: WebContext, template: str, **context: Any) -> str:
    return str(web.templates.get_template(template).render(request=request, **context))


@router.get("/board")
async def board(request: Request, project: str | None = None, web: WebContext = Depends(web_context),
                session: Session = Depends(current_session)) -> EventSourceResponse:
    async def stream() -> AsyncIterator[dict[str, str]]:
        db = Store(web.store_path, readonly=True)
        seen, polls = -1, 0
        try:
            with metrics.sse_client("board"):
                while not await request.is_disconnected() and _still_open(web, session, polls := polls + 1):
                    version = db.data_version()
                    if version != seen:
                        seen = version
                        data = board_view.board(db, project)
                        yield {"event": "board", "data": _html(request, web, "_board.html", board=data)}
                        yield {"event": "inbox", "data": str(board_view.inbox_count(db))}
                    await asyncio.sleep(POLL_S)
        finally:
            db.close()

    return EventSourceResponse(stream(), ping=15)


@router.get("/inbox")
async def inbox(request: Request, web: WebContext = Depends(web_context),
                session: Session = Depends(current_session)) -> EventSourceResponse:
    async def stream() -> AsyncIterator[dict[str, str]]:
        db = Store(web.store_path, readonly=True)
        seen, shown, polls = -1, None, 0
        try:
            with metrics.sse_client("inbox"):
                while not await request.is_disconnected() and _still_open(web, session, polls := polls + 1):
                    version = db.data_version()
                    if version != seen:
                        seen = version
                        waiting = board_view.inbox(db)
                        now_shown = [(w.task_id, w.seq) for w in waiting]
                        if shown is not None and now_shown != shown:  # the page already shows the first list
                            yield {"event": "inbox-list", "data": _html(request, web, "_inbox.html", waiting=waiting,
                                                                        csrf=session.csrf, session=session)}
                        shown = now_shown
                        yield {"event": "inbox", "data": str(len(waiting))}
                    await asyncio.sleep(POLL_S)
        finally:
            db.close()

    return EventSourceResponse(stream(), ping=15)


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

    async def stream() -> AsyncIterator[dict[str, str]]:
        nonlocal after
        db = Store(web.store_path, readonly=True)
        seen, shape, polls = -1, None, 0
        try:
            with metrics.sse_client("task"):
                while not await request.is_disconnected() and _still_open(web, session, polls := polls + 1):
                    version = db.data_version()
                    if version != seen:
                        seen = version
                        new = db.events(task_id, after)
                        if new:
                            after = new[-1].seq or after
                            rows = _html(request, web, "_events.html",
                                         events=[task_view.event_view(e) for e in new])
                            yield {"event": "events", "data": rows, "id": str(after)}
                        row = db.task(task_id)
                        now_shape = (row.state, row.updated_at, row.priority, after)
                        if now_shape != shape:
                            if shape is not None:
                                page = task_view.task_page(db, row)
                                note = approver_note_for(session, row)
                                yield {"event": "status", "data": _html(
                                    request, web, "_task_status.html", page=page, csrf=session.csrf,
                                    session=session, approver_note=note)}
                                yield {"event": "work", "data": _html(request, web, "_task_work.html", page=page)}
                                yield {"event": "inbox", "data": str(board_view.inbox_count(db))}
                            shape = now_shape
                    await asyncio.sleep(POLL_S)
        finally:
            db.close()

    return EventSourceResponse(stream(), ping=15)
