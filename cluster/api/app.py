"""``create_app``: the sidecar's FastAPI application, its routers, and errors mapped to HTTP by type.

What the OpenAPI document says is what the API does (fuzzed by tests/test_api_fuzz.py): the bearer
scheme, every refusal a route can answer, 400 (``{"detail": sentence}``) for requests Hearth refuses,
422 (FastAPI's field-error list) only for requests that break the schema, and only after the token
was checked; a 405 names every method the path has.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from cluster.api.auth import refusal, token_table
from cluster.api.feed import EventFeed
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
    (Invalid, 400), (NotAllowed, 403), (Conflict, 409), (UnknownTask, 404), (SchedulerUnavailable, 503),
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
            await app.state.feed.aclose()

    app = FastAPI(title="Hearth sidecar", version="0.1.0", lifespan=lifespan)
    app.state.scheduler = scheduler
    app.state.store_path = store_path
    app.state.tokens = token_table(token, plugin_token)
    app.state.feed = EventFeed(store_path)
    for router in ROUTERS:
        # Each router's prefix is already in its routes' paths. Added flat rather than with
        # include_router (which FastAPI >= 0.165 keeps as one nested entry), so ``app.routes`` lists
        # every endpoint: the token test walks it to prove no route is open.
        app.router.routes.extend(router.routes)

    @app.exception_handler(HearthError)
    async def refused(_: Request, exc: HearthError) -> JSONResponse:
        return JSONResponse(status_code=http_status(exc), content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI parses a JSON body before it runs a route's dependencies: check the token first.
        refused = refusal(request)
        if refused is not None:
            return await http_exception_handler(request, refused)
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:  # Starlette's Allow names only the first route with this path
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(app, request))}
        return await http_exception_handler(request, exc)

    mount_web(app, token, plugin_token)  # the web page under /ui, and /metrics (cluster/web/)
    return app


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at the request's path."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**request.scope, "method": "__none__"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)
