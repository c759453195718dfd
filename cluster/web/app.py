"""``mount_web``: the page, its static files and ``/metrics``, added to the sidecar's FastAPI app."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from cluster import metrics
from cluster.web import actions, live, pages
from cluster.web.context import HERE, NodesSource, WebContext
from cluster.web.guards import NeedLogin, Refused, login_redirect, refused_page
from cluster.web.sessions import Authenticator


def mount_web(app: FastAPI, scheduler: Callable[[], Any], store_path: Path, token: str,
              plugin_token: str | None = None, nodes: NodesSource | None = None) -> WebContext:
    """Serve the page under ``/ui`` (``/`` leads there) and Prometheus metrics at ``/metrics``.

    ``nodes`` replaces the scheduler's node inventory (a recorded one, where this machine has no GPU).
    """
    web = WebContext(scheduler, store_path, Authenticator(store_path.parent, token, plugin_token), nodes)
    for name in web.templates.env.list_templates():  # compile now, so the first page is not the slow one
        web.templates.env.get_template(name)
    app.state.hearth_web = web
    for router in (pages.router, actions.router, live.router, metrics.router):
        app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="ui-static")
    app.add_exception_handler(NeedLogin, login_redirect)  # type: ignore[arg-type]
    app.add_exception_handler(Refused, refused_page)  # type: ignore[arg-type]

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    return web
