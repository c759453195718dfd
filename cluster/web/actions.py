"""What people do on the page: answer, approve, reject with a reason, cancel, restart, change
priority, submit a PRD. Each needs a session, the right for it, a good CSRF token, and for decisions a
place among the project's approvers; each acts through the scheduler exactly as the API does."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from agent.prd import PrdError, TaskPlan, parse_prd_text
from cluster.store import TaskRow, UnknownTask
from cluster.web.board import priority_label
from cluster.web.context import ActionError, WebContext, web_context
from cluster.web.guards import Refused, Upload, check_approver, checked_form, current_session, need, safe_next
from cluster.web.pages import fragment, render
from cluster.web.sessions import Session

router = APIRouter(prefix="/ui", include_in_schema=False)


def _task(web: WebContext, task_id: str) -> TaskRow:
    with web.store() as db:
        try:
            return db.task(task_id)
        except UnknownTask:
            raise Refused(f"there is no task {task_id}", status=404) from None


def _back(form: dict[str, Any], task_id: str) -> RedirectResponse:
    return RedirectResponse(safe_next(str(form.get("next") or f"/ui/tasks/{task_id}")), status_code=303)


def _seq(form: dict[str, Any], key: str) -> int | None:
    raw = str(form.get(key) or "")
    return int(raw) if raw.isdigit() else None


async def _act(web: WebContext, session: Session, ok: str, method: str, *args: Any) -> Any:
    """Call the scheduler; its refusal (409, 422) becomes a note on the next page, not an error page."""
    try:
        result = await web.call(method, *args)
    except ActionError as exc:
        if exc.status >= 500:
            raise
        session.flash.append(("error", exc.message))
        return None
    session.flash.append(("ok", ok))
    return result


def _waiting_for(web: WebContext, task: TaskRow, kind: str) -> int | None:
    from cluster.web.board import pending

    with web.store() as db:
        found = pending(db, task)
    return found.seq if found is not None and found.kind == kind else None


@router.post("/tasks/{task_id}/answer")
async def answer(request: Request, task_id: str, web: WebContext = Depends(web_context),
                 session: Session = Depends(current_session)) -> Response:
    form = await checked_form(request, session)
    need(session, "answer", "answer questions")
    task = _task(web, task_id)
    text = str(form.get("text") or "").strip()
    if not text:
        session.flash.append(("error", "an answer cannot be empty"))
        return _back(form, task_id)
    asked, current = _seq(form, "question"), _waiting_for(web, task, "question")
    if current is None or (asked is not None and asked != current):
        session.flash.append(("error", f"{task_id} no longer waits for an answer to that question "
                                       f"(it is {task.state.value}); nothing was sent"))
        return _back(form, task_id)
    await _act(web, session, f"Answered {task_id}", "answer", task_id, text, session.identity.name)
    return _back(form, task_id)


@router.post("/tasks/{task_id}/decision")
async def decision(request: Request, task_id: str, web: WebContext = Depends(web_context),
                   session: Session = Depends(current_session)) -> Response:
    form = await checked_form(request, session)
    need(session, "decide", "approve or reject checkpoints")
    task = _task(web, task_id)
    check_approver(session, task)
    choice = str(form.get("decision") or "")
    if choice not in {"approve", "reject"}:
        raise Refused("a decision is 'approve' or 'reject'", status=422)
    reason = str(form.get("reason") or "").strip()
    if choice == "reject" and not reason:
        session.flash.append(("error", "say why you reject it: the reason is what the step is redone with"))
        return _back(form, task_id)
    asked, current = _seq(form, "checkpoint"), _waiting_for(web, task, "approval")
    if current is None or (asked is not None and asked != current):
        session.flash.append(("error", f"that checkpoint of {task_id} no longer awaits a decision "
                                       f"(the task is {task.state.value}); nothing was changed"))
        return _back(form, task_id)
    verb = "Approved" if choice == "approve" else "Rejected"
    await _act(web, session, f"{verb} {task.waiting_for or 'the checkpoint'} of {task_id}", "decide", task_id,
               choice == "approve", reason, session.identity.name)
    return _back(form, task_id)


@router.post("/tasks/{task_id}/cancel")
async def cancel(request: Request, task_id: str, web: WebContext = Depends(web_context),
                 session: Session = Depends(current_session)) -> Response:
    form = await checked_form(request, session)
    need(session, "cancel", "cancel tasks")
    _task(web, task_id)
    await _act(web, session, f"Cancelled {task_id}", "cancel", task_id, session.identity.name)
    return _back(form, task_id)


@router.post("/tasks/{task_id}/restart")
async def restart(request: Request, task_id: str, web: WebContext = Depends(web_context),
                  session: Session = Depends(current_session)) -> Response:
    form = await checked_form(request, session)
    need(session, "restart", "restart tasks")
    _task(web, task_id)
    await _act(web, session, f"Restarted {task_id} from step 1", "restart", task_id)
    return _back(form, task_id)


@router.post("/tasks/{task_id}/priority")
async def priority(request: Request, task_id: str, web: WebContext = Depends(web_context),
                   session: Session = Depends(current_session)) -> Response:
    form = await checked_form(request, session)
    need(session, "priority", "change priorities")
    _task(web, task_id)
    value = str(form.get("priority") or "").strip()
    row = await _act(web, session, f"Priority of {task_id} set to {value}", "set_priority", task_id, value)
    if row is not None and priority_label(int(row["priority"])) != value:
        session.flash[-1] = ("ok", f"Priority of {task_id} set to {row['priority']}: {value} is above what "
                                   f"project {row['project']} allows")
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


def _parse(text: str, name: str, fmt: str) -> TaskPlan:
    hint = {"json": "prd.json", "markdown": "prd.md", "beads": "issues.jsonl"}.get(fmt, name)
    if not text.strip():
        raise PrdError(name, "is empty: paste a PRD or choose a file")
    return parse_prd_text(text, source=name, filename_hint=hint)


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
        known = db.projects()
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
        hint = {"json": "prd.json", "markdown": "prd.md", "beads": "issues.jsonl"}.get(
            str(form.get("format") or "auto"), name)
        try:
            row = await web.call("submit", known[project]["path"], hint, text, form.get("priority") or None,
                                 str(form.get("model") or "").strip() or None)
        except ActionError as exc:
            error = exc.message
        else:
            session.flash.append(("ok", f"Submitted {row['id']}: {row['name']}"))
            return RedirectResponse(f"/ui/tasks/{row['id']}", status_code=303)
    return render(request, web, "submit.html", session, "submit", status_code=422, projects=sorted(known),
                  values=values, error=error, plan=plan, problem=problem)
