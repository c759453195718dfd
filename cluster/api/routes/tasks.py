"""Tasks: submit, list, show, cancel, restart, change priority."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from cluster.api.auth import Caller, need, require_endpoint_right
from cluster.api.deps import ReadStore, Scheduler
from cluster.api.schemas import AUTHED, PriorityRequest, SubmitRequest, refusals
from cluster.api.services import tasks
from cluster.scheduling.states import TaskState
from cluster.store import TaskRow

router = APIRouter(prefix="/v1/tasks", responses=AUTHED)


@router.post("", status_code=201, responses=refusals(400, 503))
async def submit(body: SubmitRequest, store: ReadStore, scheduler: Scheduler,
                 who: Caller = need("submit")) -> tasks.TaskDetail:
    require_endpoint_right(who, body.model)
    return await tasks.submit(store, scheduler, body)


@router.get("", dependencies=[need("read")])
async def list_tasks(store: ReadStore, state: TaskState | None = None) -> list[dict[str, Any]]:
    return tasks.listed(store, state)


@router.get("/{task_id}", dependencies=[need("read")], responses=refusals(404))
async def get_task(task_id: str, store: ReadStore) -> tasks.TaskDetail:
    return tasks.detail(store, task_id)


@router.post("/{task_id}/cancel", dependencies=[need("cancel")], responses=refusals(404, 409, 503))
async def cancel(task_id: str, scheduler: Scheduler) -> TaskRow:
    return await scheduler.cancel(task_id)


@router.post("/{task_id}/restart", dependencies=[need("restart")], responses=refusals(404, 409, 503))
async def restart(task_id: str, scheduler: Scheduler) -> TaskRow:
    return await scheduler.restart(task_id)


@router.post("/{task_id}/priority", dependencies=[need("priority")], responses=refusals(400, 404, 503))
async def priority(task_id: str, body: PriorityRequest, scheduler: Scheduler) -> TaskRow:
    return await scheduler.set_priority(task_id, body.priority)
