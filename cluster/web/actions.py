"""What people do on the page: answer, approve, reject with a reason, cancel, restart, change
priority, submit a PRD. Each needs a session, the right for it, a good CSRF token, and for decisions a
place among the project's approvers; each acts through the scheduler exactly as the API does."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from agent.prd import PrdError, TaskPlan, parse_prd_text
from cluster.api.schemas import SubmitRequest
from cluster.api.services import replies
from cluster.api.services import tasks as tasks_service
from cluster.errors import NotAllowed, RequestRefused, UnknownTask
from cluster.store import TaskRow
from cluster.web.board import priority_label
from cluster.web.context import WebContext, web_context
from cluster.web.guards import WEB_CHANNEL, Refused, Upload, checked_form, current_session, need, safe_next
from cluster.web.pages import fragment, render
from cluster.web.sessions import Session

router = APIRouter(prefix="/ui", include_in_schema=False)
T = TypeVar("T")


def _task(web: WebContext, task_id: str) -> TaskRow:
    with web.store() as db:
        try:
            return db.task(task_id)
        except UnknownTask:
            raise Refused(f"there is no task {task_id}", status=404) from None


async def _task_form(request: Request, web: WebContext, session: Session, task_id: str, right: str,
                     doing: str) -> tuple[dict[str, Any], TaskRow]:
    """An action's form on ``task_id``, once its CSRF token is good, the person has ``right`` (else 403:
    may not ``doing``) and the task exists (else 404)."""
    form = await checked_form(request, session)
    need(session, right, doing)
    return form, _task(web, task_id)


def _back(form: dict[str, Any], task_id: str) -> RedirectResponse:
    return RedirectResponse(safe_next(str(form.get("next") or f"/ui/tasks/{task_id}")), status_code=303)


def _seq(form: dict[str, Any], key: str) -> int | None:
    raw = str(form.get(key) or "")
    return int(raw) if raw.isdigit() else None


async def _act(session: Session, ok: str, call: Awaitable[T]) -> T | None:
    """Run a service call; a refusal becomes a note on the next page (403 stays an error page)."""
    try:
        result = await call
    except NotAllowed as exc:
        raise Refused(str(exc)) from None
    except RequestRefused as exc:
        session.flash.append(("error", str(exc)))
        return None
    session.flash.append(("ok", ok))
    return result


@router.post("/tasks/{task_id}/answer")
async def answer(request: Request, task_id: str, web: WebContext = Depends(web_context),
                 session: Session = Depends(current_session)) -> Response:
    form, _ = await _task_form(request, web, session, task_id, "answer", "answer questions")
    text = str(form.get("text") or "").strip()
    if not text:
        session.flash.append(("error", "an answer cannot be empty"))
        return _back(form, task_id)
    with web.store() as db:  # the same idempotent path as chat: a repeated click acts once
        outcome = await _act(session, f"Answered {task_id}", replies.answer(
            db, web.scheduler, task_id, text, session.identity.name, _seq(form, "question")))
    if outcome is not None and outcome.duplicate:
        session.flash[-1] = ("ok", f"That answer to {task_id} was already given; nothing was sent twice")
    return _back(form, task_id)


@router.post("/tasks/{task_id}/decision")
async def decision(request: Request, task_id: str, web: WebContext = Depends(web_context),
                   session: Session = Depends(current_session)) -> Response:
    form, task = await _task_form(request, web, session, task_id, "decide", "approve or reject checkpoints")
    choice = str(form.get("decision") or "")
    reason = str(form.get("reason") or "").strip()
    if choice == "reject" and not reason:
        session.flash.append(("error", "say why you reject it: the reason is what the step is redone with"))
        return _back(form, task_id)
    verb = "Approved" if choice == "approve" else "Rejected"
    with web.store() as db:  # approvers are checked as in chat: the person is web:NAME there
        await _act(session, f"{verb} {task.waiting_for or 'the checkpoint'} of {task_id}", replies.decide(
            db, web.scheduler, task_id, choice, reason, session.identity.name, WEB_CHANNEL,
            _seq(form, "checkpoint"), admin=session.identity.cluster_admin,
            finish=str(form.get("finish") or "") if choice == "approve" else ""))
    return _back(form, task_id)


@router.post("/tasks/{task_id}/cancel")
async def cancel(request: Request, task_id: str, web: WebContext = Depends(web_context),
                 session: Session = Depends(current_session)) -> Response:
    form, _ = await _task_form(request, web, session, task_id, "cancel", "cancel tasks")
    await _act(session, f"Cancelled {task_id}", web.scheduler.cancel(task_id))
    return _back(form, task_id)


@router.post("/tasks/{task_id}/restart")
async def restart(request: Request, task_id: str, web: WebContext = Depends(web_context),
                  session: Session = Depends(current_session)) -> Response:
    form, _ = await _task_form(request, web, session, task_id, "restart", "restart tasks")
    await _act(session, f"Restarted {task_id} from step 1", web.scheduler.restart(task_id))
    return _back(form, task_id)


@router.post("/tasks/{task_id}/priority")
async def priority(request: Request, task_id: str, web: WebContext = Depends(web_context),
                   session: Session = Depends(current_session)) -> Response:
    form, _ = await _task_form(request, web, session, task_id, "priority", "change priorities")
    value = str(form.get("priority") or "").strip()
    row = await _act(session, f"Priority of {task_id} set to {value}", web.scheduler.set_priority(task_id, value))
    if row is not None and priority_label(row.priority) != value:
        session.flash[-1] = ("ok", f"Priority of {task_id} set to {row.priority}: {value} is above what "
                                   f"project {row.project} allows")
    return _back(form, task_id)


async def _prd_text(form: dict[str, Any]) -> tuple[str, str]:
    """The PRD's text and file name: an uploaded file wins over the pasted text."""
    upload = form.get("file")
    name = str(form.get("filename") or "").strip()
    if isinstance(upload, Upload):
        try:
            return upload.data.decode("utf-8"), upload.filename
        except UnicodeDecodeError:
            raise PrdError(upload.filename, "is not UTF-8 text") from None
    return str(form.get("prd") or ""), name or "pasted PRD"


def _filename_hint(fmt: str, name: str) -> str:
    """The file name that tells the PRD parser the format chosen on the form (auto: the file's own)."""
    return {"json": "prd.json", "markdown": "prd.md", "beads": "issues.jsonl"}.get(fmt, name)


def _parse(text: str, name: str, fmt: str) -> TaskPlan:
    if not text.strip():
        raise PrdError(name, "is empty: paste a PRD or choose a file")
    return parse_prd_text(text, source=name, filename_hint=_filename_hint(fmt, name))


def _prd_problem(exc: PrdError) -> dict[str, str]:
    return {"file": exc.file, "story": exc.story or "", "field": exc.field or "", "problem": exc.problem,
            "message": str(exc)}


@router.post("/submit/preview", response_class=HTMLResponse)
async def preview(request: Request, web: WebContext = Depends(web_context),
                  session: Session = Depends(current_session)) -> HTMLResponse:
    """The plan table (or the PRD's problems) before anything is submitted."""
    form = await checked_form(request, session)
    try:
        text, name = await _prd_text(form)
        plan, problem = _parse(text, name, str(form.get("format") or "auto")), None
    except PrdError as exc:
        plan, problem = None, _prd_problem(exc)
    return fragment(request, web, "_plan.html", plan=plan, problem=problem)


@router.post("/submit", response_model=None)
async def submit(request: Request, web: WebContext = Depends(web_context),
                 session: Session = Depends(current_session)) -> Response:
    form = await checked_form(request, session)
    need(session, "submit", "submit PRDs")
    with web.store() as db:
        known = db.project_paths()
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    project = str(form.get("project") or "")
    plan, problem, error = None, None, ""
    try:
        text, name = await _prd_text(form)
        plan = _parse(text, name, str(form.get("format") or "auto"))
    except PrdError as exc:
        problem = _prd_problem(exc)
    if project not in known:
        error = f"choose a project this cluster knows ({', '.join(sorted(known)) or 'none yet'})"
    if problem is None and not error:
        fmt = str(form.get("format") or "auto")
        body = SubmitRequest(project=project, prd_path=_filename_hint(fmt, name), prd=text,
                             priority=form.get("priority") or None, model=str(form.get("model") or "").strip() or None)
        try:
            with web.store() as db:  # the API's own submission path
                row = await tasks_service.submit(db, web.scheduler, body)
        except RequestRefused as exc:
            error = str(exc)
        else:
            session.flash.append(("ok", f"Submitted {row.id}: {row.name}"))
            return RedirectResponse(f"/ui/tasks/{row.id}", status_code=303)
    return render(request, web, "submit.html", session, "submit", status_code=422, projects=sorted(known),
                  values=values, error=error, plan=plan, problem=problem)
