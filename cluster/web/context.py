"""What the web pages share: the scheduler, the store (read-only), logins, templates and node data.

The pages use the same two paths as the JSON API: writes go through the API's services and its
``SchedulerClient`` (errors arrive as ``HearthError``s), reads go straight to SQLite, read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates

from cluster.scheduler_client import SchedulerClient
from cluster.store import Store
from cluster.web.sessions import Authenticator, Sessions

HERE = Path(__file__).parent
NODES_FRESH_S = 5.0
"""Node inventories are gathered from every box (NVML, Docker): pages and scrapes share one result
for this long."""


PAGE_HEADERS = {
    # Only this site's own scripts (no inline ones: an injected <script> does nothing), never framed
    # (an Approve button cannot be clickjacked), no referrer leaves the site.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


NodesSource = Callable[[], Awaitable[list[dict[str, Any]]]]


class WebContext:
    def __init__(self, scheduler: SchedulerClient, store_path: Path, auth: Authenticator,
                 nodes: NodesSource | None = None) -> None:
        self.scheduler = scheduler
        """The same client the API's routes use (errors arrive as ``HearthError``s)."""
        self.store_path = store_path
        self.auth = auth
        self.sessions = Sessions()
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.nodes_source: NodesSource = nodes or self._scheduler_nodes
        """Where node inventories come from: the scheduler, or a recorded inventory (no GPU here)."""
        self._nodes: tuple[float, list[dict[str, Any]]] | None = None
        self._nodes_lock = asyncio.Lock()

    @contextlib.contextmanager
    def store(self) -> Iterator[Store]:
        db = Store(self.store_path, readonly=True)
        try:
            yield db
        finally:
            db.close()

    async def _scheduler_nodes(self) -> list[dict[str, Any]]:
        return [node.model_dump(mode="json") for node in await self.scheduler.nodes()]

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node with its inventory, at most ``NODES_FRESH_S`` old."""
        async with self._nodes_lock:
            if self._nodes is None or time.monotonic() - self._nodes[0] > NODES_FRESH_S:
                self._nodes = (time.monotonic(), list(await self.nodes_source()))
            return self._nodes[1]


def web_context(request: Request) -> WebContext:
    context: WebContext = request.app.state.hearth_web
    return context
