"""``mount_web``: the page, its static files and ``/metrics``, added to the sidecar's FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from cluster import metrics
from cluster.web import actions, live, pages
from cluster.web.context import HERE, NodesSource, WebContext
from cluster.web.guards import NeedLogin, Refused, login_redirect, refused_page
from cluster.web.sessions import Authenticator

ROUTERS = [pages.router, actions.router, live.router, metrics.router]


def mount_web(app: FastAPI, token: str, plugin_token: str | None = None, nodes: NodesSource | None = None
              ) -> WebContext:
    """Serve the page under ``/ui`` (``/`` leads there) and Prometheus metrics at ``/metrics``, over the
    app's own scheduler client and store (``app.state.scheduler``, ``app.state.store_path``).

    ``nodes`` replaces the scheduler's node inventory (a recorded one, where this machine has no GPU).
    """
    store_path = app.state.store_path
    web = WebContext(app.state.scheduler, store_path, Authenticator(store_path.parent, token, plugin_token), nodes)
    for name in web.templates.env.list_templates():  # compile now, so the first page is not the slow one
        web.templates.env.get_template(name)
    app.state.hearth_web = web
    for router in ROUTERS:
        app.router.routes.extend(router.routes)  # flat, as the API's routers: app.routes lists every page
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="ui-static")
    app.add_exception_handler(NeedLogin, login_redirect)  # type: ignore[arg-type]
    app.add_exception_handler(Refused, refused_page)  # type: ignore[arg-type]

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    return web
