"""The FastAPI sidecar: thin routes over the scheduler actor and a read-only view of the store.

Every route needs a bearer token (the OpenAPI document stays public). Two tokens, two roles:

* the **admin** token (``<state_dir>/token``): every right;
* the **plugin** token (``<state_dir>/plugin-token``, 0600, made on first start), which the
  OpenClaw plugin uses: it may ``read``, ``submit``, ``answer`` and ``decide``, never ``cancel``,
  ``restart``, change ``priority`` or see or touch ``nodes`` (403 naming the missing right). A
  plugin's decision must come from one of the project's ``approvers`` (channel user ids) when
  hearth.toml lists any.

Writes go to the scheduler (the store's only writer of tasks and events); reads (task lists, event
streams) go straight to SQLite, read-only. The event stream is server-sent events, resumable with
``Last-Event-ID`` (the per-task event number). With a gateway configured
(``<state_dir>/openclaw.json`` + ``gateway-token``), the sidecar also runs the chat delivery loop
(cluster/openclaw.py), the one writer of the outbox's delivery columns.

Decisions and answers are idempotent per checkpoint/question (``checkpoint``/``question`` = the
event's seq, as the chat buttons and tags carry it): repeating the same decision for a checkpoint
that was already decided that way answers 200 with ``"duplicate": true`` and acts no more; a
different decision, or one for a task that no longer waits, is 409 with the task's state.

Run it with ``python -m cluster.api`` (``hearth up`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sse_starlette.sse import EventSourceResponse

from cluster.states import TERMINAL, TaskState
from cluster.store import Store, TaskRow, UnknownTask

if TYPE_CHECKING:
    from cluster.openclaw import Notifier

RIGHTS = ("read", "submit", "answer", "decide", "cancel", "restart", "priority", "nodes")
PLUGIN_RIGHTS = ("read", "submit", "answer", "decide")
PLUGIN_TOKEN_FILE = "plugin-token"


class Caller(BaseModel):
    model_config = ConfigDict(frozen=True)
    role: str
    rights: tuple[str, ...]


ADMIN = Caller(role="admin", rights=RIGHTS)
PLUGIN = Caller(role="plugin", rights=PLUGIN_RIGHTS)


def ensure_token_file(path: Path) -> str:
    """The token in ``path``, made (random, 0600, never world-readable even briefly) if missing."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_path: str | None = None
    project: str | None = None
    """Instead of ``project_path``: the name of a project this cluster has run before."""
    prd_path: str | None = None
    """A PRD file, relative to the project or absolute."""
    prd: str | None = None
    """The PRD's text (prd.json, Ralph markdown or beads JSONL); ``prd_path`` then only hints the format."""
    priority: str | int | None = None
    model: str | None = None


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    who: str = "api"
    channel: str = ""
    """The chat channel ``who`` is an id on (``telegram``, ``slack``…), when it comes from a chat."""
    question: int | None = None
    """The seq of the ClarificationRequested event this answers (stale or repeated replies are caught)."""


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: str
    reason: str = ""
    who: str = "api"
    channel: str = ""
    checkpoint: int | None = None
    """The seq of the CheckpointReady event this decides (a second click on the same card acts once)."""


class PriorityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: str | int


def _translate(exc: BaseException) -> HTTPException:
    """Scheduler errors (wrapped by Ray) → HTTP statuses with the scheduler's sentence."""
    cause = getattr(exc, "cause", None) or exc
    name = type(cause).__name__
    status = {"SubmitError": 422, "Conflict": 409, "UnknownTask": 404}.get(name, 500)
    message = str(cause) if not isinstance(cause, KeyError) else f"no task {cause.args[0]!r}"
    return HTTPException(status_code=status, detail=message)


Pair = tuple[dict[str, Any], dict[str, Any] | None]


def _asks(db: Store, task_id: str, ask: str, reply: str) -> list[Pair]:
    """Each question (or approval checkpoint) of a task, paired with the first reply after it."""
    rows = db.db.execute("SELECT kind, body FROM events WHERE task_id = ? AND kind IN (?, ?) ORDER BY seq",
                         (task_id, ask, reply)).fetchall()
    pairs: list[Pair] = []
    for row in rows:
        body = json.loads(row["body"])
        if row["kind"] == ask:
            if ask == "checkpoint_ready" and not body.get("needs_approval"):
                continue
            pairs.append((body, None))
        elif pairs and pairs[-1][1] is None:
            pairs[-1] = (pairs[-1][0], body)
    return pairs


def _pending(db: Store, task: TaskRow) -> dict[str, Any] | None:
    """What a waiting task waits for: the question or the checkpoint, with the seq chat replies carry."""
    if task.state == TaskState.waiting_input:
        pairs = _asks(db, task.id, "clarification_requested", "answer_received")
        if pairs and pairs[-1][1] is None:
            ask = pairs[-1][0]
            return {"kind": "question", "seq": ask["seq"], "step_id": ask["step_id"],
                    "question": ask["question"]}
    if task.state == TaskState.awaiting_approval:
        pairs = _asks(db, task.id, "checkpoint_ready", "decision_made")
        if pairs and pairs[-1][1] is None:
            ask = pairs[-1][0]
            return {"kind": "approval", "seq": ask["seq"], "step_id": ask["step_id"], "commit": ask["commit"],
                    "diff_stat": ask["diff_stat"], "files_changed": ask["files_changed"],
                    "check_summary": ask["check_summary"]}
    return None


def create_app(scheduler: Callable[[], Any], store_path: Path, token: str, *, plugin_token: str | None = None,
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

    app = FastAPI(title="Hearth sidecar", version="0.1.0", lifespan=lifespan)
    tokens = [(ADMIN, token.encode())]
    if plugin_token:
        tokens.append((PLUGIN, plugin_token.encode()))

    def require_token(authorization: str = Header(default="")) -> Caller:
        scheme, _, presented = authorization.partition(" ")
        found = None
        for who, secret in tokens:
            if hmac.compare_digest(presented.encode(), secret) and scheme.lower() == "bearer":
                found = who
        if found is None:
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")
        return found

    def need(right: str) -> Any:
        def check(caller: Caller = Depends(require_token)) -> Caller:
            if right not in caller.rights:
                has = ", ".join(caller.rights)
                raise HTTPException(status_code=403, detail=(
                    f"the {caller.role} token lacks the '{right}' right (it has: {has})"))
            return caller
        return Depends(check)

    def store() -> Store:
        return Store(store_path, readonly=True)

    async def call(method: str, *args: Any) -> Any:
        try:
            return await getattr(scheduler(), method).remote(*args)
        except Exception as exc:
            raise _translate(exc) from None

    def read_row(task_id: str) -> TaskRow:
        db = store()
        try:
            return db.task(task_id)
        except UnknownTask:
            raise HTTPException(status_code=404, detail=f"no task {task_id!r}") from None
        finally:
            db.close()

    def read_task(task_id: str) -> dict[str, Any]:
        return read_row(task_id).model_dump(mode="json")

    def asks(task_id: str, ask: str, reply: str) -> list[Pair]:
        db = store()
        try:
            return _asks(db, task_id, ask, reply)
        finally:
            db.close()

    auth = [need("read")]

    @app.get("/v1/health", dependencies=auth)
    async def health() -> dict[str, str]:
        return {"status": await call("ping")}

    @app.get("/v1/policy", dependencies=auth)
    async def policy() -> dict[str, Any]:
        """The cluster-wide scheduling policy in force (``[scheduler]`` in the head's head.toml)."""
        return dict(await call("policy_config"))

    @app.post("/v1/tasks", status_code=201, dependencies=[need("submit")])
    async def submit(body: SubmitRequest) -> dict[str, Any]:
        project_path = body.project_path
        if (project_path is None) == (body.project is None):
            raise HTTPException(status_code=422,
                                detail="give exactly one of project_path or project (a name)")
        if body.project is not None:
            db = store()
            try:
                known = db.projects()
            finally:
                db.close()
            if body.project not in known:
                names = ", ".join(sorted(known)) or "none yet; submit by path once"
                raise HTTPException(status_code=422,
                                    detail=f"unknown project {body.project!r} (known: {names})")
            project_path = known[body.project]["path"]
        return dict(await call("submit", project_path, body.prd_path, body.prd, body.priority, body.model))

    @app.get("/v1/tasks", dependencies=auth)
    async def list_tasks(state: str | None = None) -> list[dict[str, Any]]:
        db = store()
        try:
            wanted = {TaskState(state)} if state else None
            return [t.model_dump(mode="json", exclude={"spec"}) for t in db.tasks(wanted)]
        except ValueError:
            raise HTTPException(status_code=422, detail=f"unknown state {state!r}") from None
        finally:
            db.close()

    @app.get("/v1/tasks/{task_id}", dependencies=auth)
    async def get_task(task_id: str) -> dict[str, Any]:
        return read_task(task_id)

    @app.get("/v1/tasks/{task_id}/events", dependencies=auth)
    async def events(task_id: str, request: Request, follow: bool = True) -> EventSourceResponse:
        read_task(task_id)
        last = request.headers.get("last-event-id", "0")
        after = int(last) if last.isdigit() else 0

        async def stream() -> AsyncIterator[dict[str, Any]]:
            nonlocal after
            while True:
                db = store()
                try:
                    batch = db.events(task_id, after)
                    finished = db.task(task_id).state in TERMINAL
                finally:
                    db.close()
                for event in batch:
                    after = event.seq or after
                    yield {"id": str(event.seq), "event": event.kind, "data": event.model_dump_json()}
                if (finished and not batch) or not follow or await request.is_disconnected():
                    return
                await asyncio.sleep(0.1)

        return EventSourceResponse(stream(), ping=15)

    @app.post("/v1/tasks/{task_id}/cancel", dependencies=[need("cancel")])
    async def cancel(task_id: str) -> dict[str, Any]:
        return dict(await call("cancel", task_id))

    @app.post("/v1/tasks/{task_id}/restart", dependencies=[need("restart")])
    async def restart(task_id: str) -> dict[str, Any]:
        return dict(await call("restart", task_id))

    @app.post("/v1/tasks/{task_id}/priority", dependencies=[need("priority")])
    async def priority(task_id: str, body: PriorityRequest) -> dict[str, Any]:
        return dict(await call("set_priority", task_id, body.priority))

    def replayed(task_id: str, ask_seq: int | None, pairs: list[Pair],
                 same: Callable[[dict[str, Any]], bool], noun: str, verb: Callable[[dict[str, Any]], str]
                 ) -> dict[str, Any] | None:
        """For a request about ask ``ask_seq`` (or the latest): the earlier identical reply (→ 200
        duplicate), or a 409 naming who replied and the task's state; None when nothing replied yet."""
        chosen = [p for p in pairs if p[0]["seq"] == ask_seq] if ask_seq is not None else pairs[-1:]
        if not chosen:
            if ask_seq is not None:
                raise HTTPException(status_code=409, detail=f"{task_id} has no {noun} #{ask_seq}")
            return None
        reply = chosen[0][1]
        if reply is None:
            return None
        if same(reply):
            return {**read_task(task_id), "duplicate": True, "reply": reply}
        state = read_row(task_id).state.value
        raise HTTPException(status_code=409, detail=(
            f"{task_id}: that {noun} was already {verb(reply)} by {reply['who']}; the task is now {state}"))

    @app.post("/v1/tasks/{task_id}/answer")
    async def answer(task_id: str, body: AnswerRequest, caller: Caller = need("answer")) -> dict[str, Any]:
        task = read_row(task_id)
        pairs = asks(task_id, "clarification_requested", "answer_received")
        waiting = task.state == TaskState.waiting_input and bool(pairs) and pairs[-1][1] is None
        current = pairs[-1][0]["seq"] if waiting else None

        def same(r: dict[str, Any]) -> bool:
            return bool(r["answer"] == body.text and r["who"] == body.who)

        if body.question is not None and body.question != current:
            found = replayed(task_id, body.question, pairs, same, "question", lambda r: "answered")
            if found is not None:
                return found
            raise HTTPException(status_code=409, detail=(
                f"{task_id} is {task.state.value}; question #{body.question} no longer waits for an answer"))
        try:
            return {**dict(await call("answer", task_id, body.text, body.who)), "duplicate": False}
        except HTTPException as exc:
            if exc.status_code != 409 or current is None:
                raise
            pairs = asks(task_id, "clarification_requested", "answer_received")
            found = replayed(task_id, current, pairs, same, "question", lambda r: "answered")
            if found is not None:
                return found
            raise

    @app.post("/v1/tasks/{task_id}/decision")
    async def decision(task_id: str, body: DecisionRequest,
                       caller: Caller = need("decide")) -> dict[str, Any]:
        if body.decision not in {"approve", "reject"}:
            raise HTTPException(status_code=422, detail="decision must be 'approve' or 'reject'")
        approve = body.decision == "approve"
        task = read_row(task_id)
        approvers = list(task.spec.get("config", {}).get("approvers") or [])
        if caller.role != "admin" and approvers:
            ids = {body.who, f"{body.channel}:{body.who}"} if body.channel else {body.who}
            if not ids & set(approvers):
                raise HTTPException(status_code=403, detail=(
                    f"{body.who or 'someone unnamed'} may not approve or reject {task_id}: only the "
                    f"approvers listed in project {task.project}'s hearth.toml may"))
        pairs = asks(task_id, "checkpoint_ready", "decision_made")
        waiting = task.state == TaskState.awaiting_approval and bool(pairs) and pairs[-1][1] is None
        current = pairs[-1][0]["seq"] if waiting else None

        def verb(r: dict[str, Any]) -> str:
            return "approved" if r["approve"] else "rejected"

        if body.checkpoint is not None and body.checkpoint != current:
            found = replayed(task_id, body.checkpoint, pairs, lambda r: r["approve"] == approve,
                             "checkpoint", verb)
            if found is not None:
                return found
            raise HTTPException(status_code=409, detail=(
                f"{task_id} is {task.state.value}; checkpoint #{body.checkpoint} no longer awaits approval"))
        try:
            result = dict(await call("decide", task_id, approve, body.reason, body.who))
        except HTTPException as exc:
            if exc.status_code != 409 or current is None:
                raise
            pairs = asks(task_id, "checkpoint_ready", "decision_made")
            found = replayed(task_id, current, pairs, lambda r: r["approve"] == approve, "checkpoint", verb)
            if found is not None:
                return found
            raise
        return {**result, "duplicate": False}

    @app.get("/v1/nodes", dependencies=[need("nodes")])
    async def nodes() -> list[dict[str, Any]]:
        return list(await call("nodes"))

    @app.get("/v1/approvals", dependencies=auth)
    async def approvals() -> list[dict[str, Any]]:
        """Tasks that wait for a person, each with what it waits for (``pending``)."""
        db = store()
        try:
            waiting = db.tasks({TaskState.awaiting_approval, TaskState.waiting_input})
            return [{**t.model_dump(mode="json", exclude={"spec"}), "pending": _pending(db, t)}
                    for t in waiting]
        finally:
            db.close()

    @app.get("/v1/outbox", dependencies=auth)
    async def outbox(task_id: str | None = None, pending: bool = False) -> list[dict[str, Any]]:
        """Chat delivery entries (tries, last error, platform message id), oldest first."""
        db = store()
        try:
            return [e.model_dump(mode="json", exclude={"event"}) | {"kind": e.event.kind, "seq": e.event.seq}
                    for e in db.outbox(task_id, pending_only=pending)]
        finally:
            db.close()

    @app.exception_handler(UnknownTask)
    async def unknown(_: Request, exc: UnknownTask) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    return app


def scheduler_getter(state_dir: str, policy: dict[str, Any] | None = None) -> Callable[[], Any]:
    from cluster.scheduler import get_or_create_scheduler

    handle = get_or_create_scheduler(state_dir, policy)
    return lambda: handle


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Hearth sidecar")
    parser.add_argument("--address", required=True, help="Ray address of the head (host:port)")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--config", help="The head configuration (default <state-dir>/head.toml)")
    args = parser.parse_args(argv)
    from cluster.head_config import load_head_config
    from cluster.openclaw import notifier_from_state_dir

    state_dir = Path(args.state_dir)
    policy = load_head_config(Path(args.config) if args.config else None, state_dir).scheduler
    token = (state_dir / "token").read_text().strip()
    plugin_token = ensure_token_file(state_dir / PLUGIN_TOKEN_FILE)
    ray.init(address=args.address, namespace="hearth", logging_level=logging.WARNING, log_to_driver=False)
    app = create_app(scheduler_getter(args.state_dir, policy.model_dump()), state_dir / "hearth.db", token,
                     plugin_token=plugin_token, notifier=notifier_from_state_dir(state_dir))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
