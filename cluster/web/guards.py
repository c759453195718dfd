"""Who may see and do what on the page: a session for every page, a right for every action, CSRF
and same-origin checks for every form, and a project's approvers for every decision."""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from cluster import people_tokens
from cluster.store import TaskRow
from cluster.web.context import PAGE_HEADERS, WebContext, web_context
from cluster.web.sessions import COOKIE, Session, csrf_ok

UPLOAD_LIMIT = 2 * 1024 * 1024
"""Largest file a form takes (a PRD): bigger ones are refused with a clear message."""


class Upload(NamedTuple):
    filename: str
    data: bytes


class NeedLogin(Exception):
    """No (or an expired) session: the page answers with the login form."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class Refused(Exception):
    """Logged in, but not allowed (a missing right, a bad CSRF token, not an approver): 403 with why."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def safe_next(path: str | None) -> str:
    """Only a path on this site under /ui (never another host) may be a post-login destination."""
    if not path or not path.startswith("/ui") or path.startswith("//") or urlsplit(path).netloc:
        return "/ui/"
    return path


def current_session(request: Request, web: WebContext = Depends(web_context)) -> Session:
    session = web.sessions.get(request.cookies.get(COOKIE))
    if session is not None and not web.auth.still_valid(session.identity):
        web.sessions.drop(session.id)
        session = None
    if session is None:
        target = request.url.path if request.method == "GET" else request.headers.get("referer", "/ui/")
        raise NeedLogin(urlsplit(target).path or "/ui/")
    return session


def need(session: Session, right: str, doing: str) -> None:
    if right not in session.identity.rights:
        raise Refused(f"{session.identity.name} ({session.identity.role}) may not {doing}: that needs the "
                      f"'{right}' right, which a {session.identity.role} does not have")


async def checked_form(request: Request, session: Session) -> dict[str, Any]:
    """The posted form, once its origin and CSRF token are right."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise Refused(f"a form from another site ({origin}) was refused")
    async with request.form(max_files=1) as form:
        presented = form.get("csrf") or request.headers.get("x-csrf-token")
        if not csrf_ok(session, str(presented) if presented is not None else None):
            raise Refused("this form is out of date or did not come from this page (CSRF check failed); reload "
                          "the page and try again")
        fields: dict[str, Any] = {}
        for key, value in form.items():
            if isinstance(value, UploadFile):  # read now: the form's temporary files close with it
                if value.filename:
                    data = await value.read(UPLOAD_LIMIT + 1)
                    if len(data) > UPLOAD_LIMIT:
                        raise Refused(f"{value.filename} is larger than {UPLOAD_LIMIT // 1024} KiB", status=413)
                    fields[key] = Upload(value.filename, data)
            else:
                fields[key] = value
    return fields


WEB_CHANNEL = people_tokens.CHANNEL


def may_decide(session: Session, task: TaskRow) -> bool:
    """As in chat: when the project lists approvers, only they decide (the cluster's API token aside).
    A person is listed by their token's name, or as ``web:NAME``."""
    approvers = task.spec.config.approvers
    name = session.identity.name
    return (session.identity.cluster_admin or not approvers or name in approvers
            or f"{WEB_CHANNEL}:{name}" in approvers)


def approver_note_for(session: Session, task: TaskRow) -> str:
    """Why this person's Approve/Reject would be refused ('' when it would not)."""
    if may_decide(session, task):
        return ""
    approvers = ", ".join(task.spec.config.approvers)
    return f"Only {approvers} may approve or reject tasks of project {task.project}."


def login_redirect(request: Request, exc: NeedLogin) -> Response:
    target = f"/ui/login?next={quote(safe_next(exc.next_path))}"
    if request.headers.get("hx-request"):  # htmx: make the browser go to the login page
        return Response(status_code=401, headers={"HX-Redirect": target})
    if request.url.path.startswith("/ui/live/"):
        return Response("log in first", status_code=401)
    return RedirectResponse(target, status_code=303)


def refused_page(request: Request, exc: Refused) -> Response:
    web: WebContext = request.app.state.hearth_web
    session = web.sessions.get(request.cookies.get(COOKIE))
    back = request.headers.get("referer") or "/ui/"
    if urlsplit(back).netloc not in ("", request.headers.get("host")):
        back = "/ui/"
    context: dict[str, Any] = {"message": exc.message, "back": back, "session": session, "nav": "",
                               "inbox_count": None, "flash": [], "csrf": session.csrf if session else ""}
    response: HTMLResponse = web.templates.TemplateResponse(request, "error.html", context, status_code=exc.status,
                                                            headers=PAGE_HEADERS)
    return response
