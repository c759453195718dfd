"""The FastAPI sidecar: thin routes over the scheduler actor and a read-only view of the store.

Every route needs a bearer token. Writes go to the scheduler (the store's only writer); reads
(task lists, event streams) go straight to SQLite, read-only. The event stream is server-sent
events, resumable with ``Last-Event-ID`` (the per-task event number).

Run it with ``python -m cluster.api`` (``hearth up`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import ray
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sse_starlette.sse import EventSourceResponse

from cluster.states import TERMINAL, TaskState
from cluster.store import Store, UnknownTask


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_path: str
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


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: str
    reason: str = ""
    who: str = "api"


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


def create_app(scheduler: Callable[[], Any], store_path: Path, token: str) -> FastAPI:
    app = FastAPI(title="Hearth sidecar", version="0.1.0")

    def require_token(authorization: str = Header(default="")) -> None:
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), token.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    def store() -> Store:
        return Store(store_path, readonly=True)

    async def call(method: str, *args: Any) -> Any:
        try:
            return await getattr(scheduler(), method).remote(*args)
        except Exception as exc:
            raise _translate(exc) from None

    def read_task(task_id: str) -> dict[str, Any]:
        db = store()
        try:
            return db.task(task_id).model_dump(mode="json")
        except UnknownTask:
            raise HTTPException(status_code=404, detail=f"no task {task_id!r}") from None
        finally:
            db.close()

    auth = [Depends(require_token)]

    @app.get("/v1/health", dependencies=auth)
    async def health() -> dict[str, str]:
        return {"status": await call("ping")}

    @app.post("/v1/tasks", status_code=201, dependencies=auth)
    async def submit(body: SubmitRequest) -> dict[str, Any]:
        return dict(await call("submit", body.project_path, body.prd_path, body.prd, body.priority, body.model))

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

    @app.post("/v1/tasks/{task_id}/cancel", dependencies=auth)
    async def cancel(task_id: str) -> dict[str, Any]:
        return dict(await call("cancel", task_id))

    @app.post("/v1/tasks/{task_id}/restart", dependencies=auth)
    async def restart(task_id: str) -> dict[str, Any]:
        return dict(await call("restart", task_id))

    @app.post("/v1/tasks/{task_id}/priority", dependencies=auth)
    async def priority(task_id: str, body: PriorityRequest) -> dict[str, Any]:
        return dict(await call("set_priority", task_id, body.priority))

    @app.post("/v1/tasks/{task_id}/answer", dependencies=auth)
    async def answer(task_id: str, body: AnswerRequest) -> dict[str, Any]:
        read_task(task_id)
        return dict(await call("answer", task_id, body.text, body.who))

    @app.post("/v1/tasks/{task_id}/decision", dependencies=auth)
    async def decision(task_id: str, body: DecisionRequest) -> dict[str, Any]:
        if body.decision not in {"approve", "reject"}:
            raise HTTPException(status_code=422, detail="decision must be 'approve' or 'reject'")
        read_task(task_id)
        return dict(await call("decide", task_id, body.decision == "approve", body.reason, body.who))

    @app.get("/v1/nodes", dependencies=auth)
    async def nodes() -> list[dict[str, Any]]:
        return list(await call("nodes"))

    @app.get("/v1/approvals", dependencies=auth)
    async def approvals() -> list[dict[str, Any]]:
        db = store()
        try:
            waiting = db.tasks({TaskState.awaiting_approval, TaskState.waiting_input})
            return [t.model_dump(mode="json", exclude={"spec"}) for t in waiting]
        finally:
            db.close()

    @app.exception_handler(UnknownTask)
    async def unknown(_: Request, exc: UnknownTask) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    return app


def scheduler_getter(state_dir: str) -> Callable[[], Any]:
    from cluster.scheduler import get_or_create_scheduler

    handle = get_or_create_scheduler(state_dir)
    return lambda: handle


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Hearth sidecar")
    parser.add_argument("--address", required=True, help="Ray address of the head (host:port)")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    token = (Path(args.state_dir) / "token").read_text().strip()
    ray.init(address=args.address, namespace="hearth", logging_level="WARNING", log_to_driver=False)
    app = create_app(scheduler_getter(args.state_dir), Path(args.state_dir) / "hearth.db", token)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
