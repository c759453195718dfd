"""``create_app``: the sidecar's FastAPI application, its routers, and errors mapped to HTTP by type."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cluster.api.auth import token_table
from cluster.api.routes import chat, cluster, deliverables, events, replies, tasks, transcripts
from cluster.errors import Conflict, HearthError, Invalid, NotAllowed, SchedulerUnavailable, UnknownTask
from cluster.scheduler_client import SchedulerClient
from cluster.web.app import mount_web

if TYPE_CHECKING:
    from cluster.openclaw import Notifier

ROUTERS = [
    cluster.router,
    tasks.router,
    events.router,
    replies.router,
    chat.router,
    deliverables.router,
    transcripts.router,
]
"""Every router the sidecar serves: adding one is one line here."""

HTTP_STATUS: list[tuple[type[HearthError], int]] = [
    (Invalid, 422), (NotAllowed, 403), (Conflict, 409), (UnknownTask, 404), (SchedulerUnavailable, 503),
]


def http_status(exc: HearthError) -> int:
    return next((status for kind, status in HTTP_STATUS if isinstance(exc, kind)), 500)


def create_app(scheduler: SchedulerClient, store_path: Path, token: str, *, plugin_token: str | None = None,
               notifier: Notifier | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        job = asyncio.create_task(notifier.run()) if notifier is not None else None
        try:
            yield
        finally:
            if job is not None:
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
            if notifier is not None:
                await notifier.aclose()

    app = FastAPI(title="Hearth sidecar", version="0.1.0", lifespan=lifespan)
    app.state.scheduler = scheduler
    app.state.store_path = store_path
    app.state.tokens = token_table(token, plugin_token)
    for router in ROUTERS:
        # Each router's prefix is already in its routes' paths. Added flat rather than with
        # include_router (which FastAPI >= 0.165 keeps as one nested entry), so ``app.routes`` lists
        # every endpoint: the token test walks it to prove no route is open.
        app.router.routes.extend(router.routes)

    @app.exception_handler(HearthError)
    async def refused(_: Request, exc: HearthError) -> JSONResponse:
        return JSONResponse(status_code=http_status(exc), content={"detail": str(exc)})

    mount_web(app, token, plugin_token)  # the web page under /ui, and /metrics (cluster/web/)
    return app
