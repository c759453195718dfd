"""The pages: board, task, submit, nodes, inbox, login. Every one needs a session (guards.py)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response

from cluster.artifact_store import ArtifactUnavailable, artifact_file
from cluster.errors import UnknownTask
from cluster.web import board as board_view
from cluster.web import nodes_view, task_view
from cluster.web.context import PAGE_HEADERS, WebContext, web_context
from cluster.web.guards import Refused, approver_note_for, checked_form, current_session, safe_next
from cluster.web.sessions import COOKIE, PluginTokenRefused, Session

router = APIRouter(prefix="/ui", include_in_schema=False)


def render(request: Request, web: WebContext, template: str, session: Session | None, nav: str,
           status_code: int = 200, **context: Any) -> HTMLResponse:
    """A full page: the navigation (with the inbox count), the person, their CSRF token, one-time notes."""
    inbox_count = None
    if session is not None:
        with web.store() as db:
            inbox_count = board_view.inbox_count(db)
    flash, session_flash = [], getattr(session, "flash", None)
    if session_flash:
        flash, session_flash[:] = list(session_flash), []
    base = {"session": session, "nav": nav, "inbox_count": inbox_count, "flash": flash,
            "csrf": session.csrf if session else ""}
    response: HTMLResponse = web.templates.TemplateResponse(request, template, base | context,
                                                            status_code=status_code, headers=PAGE_HEADERS)
    return response


def fragment(request: Request, web: WebContext, template: str, **context: Any) -> HTMLResponse:
    response: HTMLResponse = web.templates.TemplateResponse(request, template, context, headers=PAGE_HEADERS)
    return response


@router.get("/", response_class=HTMLResponse)
def board(request: Request, project: str | None = None, web: WebContext = Depends(web_context),
          session: Session = Depends(current_session)) -> HTMLResponse:
    with web.store() as db:
        data = board_view.board(db, project)
    return render(request, web, "board.html", session, "board", board=data)


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task(request: Request, task_id: str, web: WebContext = Depends(web_context),
         session: Session = Depends(current_session)) -> HTMLResponse:
    with web.store() as db:
        try:
            row = db.task(task_id)
        except UnknownTask:
            raise Refused(f"there is no task {task_id}", status=404) from None
        page = task_view.task_page(db, row)
    return render(request, web, "task.html", session, "board", page=page, approver_note=approver_note_for(session, row))


@router.get("/tasks/{task_id}/transcripts/{name}", response_class=HTMLResponse)
def transcript(request: Request, task_id: str, name: str, web: WebContext = Depends(web_context),
               session: Session = Depends(current_session)) -> HTMLResponse:
    with web.store() as db:
        try:
            row = db.task(task_id)
            messages = task_view.transcript_messages(db, row, name)
        except (UnknownTask, FileNotFoundError, ValueError):
            raise Refused(f"{task_id} has no transcript {name!r}", status=404) from None
    return render(request, web, "transcript.html", session, "board", task_id=task_id, name=name,
                  messages=messages)


@router.get("/tasks/{task_id}/artifacts/{name:path}")
def artifact(task_id: str, name: str, step: str | None = None, web: WebContext = Depends(web_context),
             session: Session = Depends(current_session)) -> FileResponse:
    """An artifact's bytes, as ``GET /v1/tasks/{id}/artifacts/{name}`` serves them to the API."""
    with web.store() as db:
        try:
            db.task(task_id)
            found = artifact_file(db, web.store_path.parent, task_id, name, step)
        except UnknownTask:
            raise Refused(f"there is no task {task_id}", status=404) from None
        except ArtifactUnavailable as exc:
            raise Refused(str(exc), status=exc.status) from None
    return FileResponse(found.path, filename=found.filename, media_type="application/octet-stream",
                        headers={"X-Hearth-Sha256": found.sha256})


@router.get("/inbox", response_class=HTMLResponse)
def inbox(request: Request, web: WebContext = Depends(web_context),
          session: Session = Depends(current_session)) -> HTMLResponse:
    with web.store() as db:
        waiting = board_view.inbox(db)
    return render(request, web, "inbox.html", session, "inbox", waiting=waiting)


@router.get("/submit", response_class=HTMLResponse)
def submit_form(request: Request, web: WebContext = Depends(web_context),
                session: Session = Depends(current_session)) -> HTMLResponse:
    with web.store() as db:
        projects = sorted(db.project_paths())
    return render(request, web, "submit.html", session, "submit", projects=projects, values={}, error=None,
                  plan=None)


@router.get("/nodes", response_class=HTMLResponse)
def nodes(request: Request, web: WebContext = Depends(web_context),
          session: Session = Depends(current_session)) -> HTMLResponse:
    return render(request, web, "nodes.html", session, "nodes")


@router.get("/nodes/cards", response_class=HTMLResponse)
async def node_cards(request: Request, web: WebContext = Depends(web_context),
                     session: Session = Depends(current_session)) -> HTMLResponse:
    """The node cards, loaded after the page (gathering inventories takes a moment)."""
    try:
        views, error = nodes_view.views(await web.nodes()), ""
    except Exception as exc:  # the page says why, rather than failing
        views, error = [], str(getattr(exc, "message", exc))
    return fragment(request, web, "_nodes.html", nodes=views, error=error, at=time.strftime("%H:%M:%S"))


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/ui/", web: WebContext = Depends(web_context)) -> HTMLResponse:
    return render(request, web, "login.html", None, "", next=safe_next(next), error="")


@router.post("/login", response_model=None)
def login(request: Request, token: str = Form(default=""), next: str = Form(default="/ui/"),
          web: WebContext = Depends(web_context)) -> Response:
    origin = request.headers.get("origin")
    if origin and origin != "null" and origin.split("://", 1)[-1] != request.headers.get("host", ""):
        return render(request, web, "login.html", None, "", status_code=403, next=safe_next(next),
                      error="a login from another site was refused")
    try:
        identity = web.auth.identify(token)
    except PluginTokenRefused as exc:
        return render(request, web, "login.html", None, "", status_code=403, next=safe_next(next), error=str(exc))
    if identity is None:
        return render(request, web, "login.html", None, "", status_code=401, next=safe_next(next),
                      error="that token is not one this cluster knows")
    web.sessions.drop(request.cookies.get(COOKIE))
    session = web.sessions.create(identity)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(COOKIE, session.id, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


@router.get("/static/pygments.css")
def pygments_css() -> PlainTextResponse:
    return PlainTextResponse(task_view.pygments_css(), media_type="text/css",
                             headers={"Cache-Control": "max-age=3600"})


@router.post("/logout")
async def logout(request: Request, web: WebContext = Depends(web_context),
                 session: Session = Depends(current_session)) -> RedirectResponse:
    await checked_form(request, session)
    web.sessions.drop(session.id)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
