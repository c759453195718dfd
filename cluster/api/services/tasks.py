"""Tasks as the sidecar reads them, and submissions by project name."""

from __future__ import annotations

from typing import Any

from agent.acceptance import submit_warnings
from agent.accounting import TaskUsage, usage_from_events
from agent.events import Event
from cluster.api.schemas import SubmitRequest
from cluster.errors import SubmitError
from cluster.scheduler_client import SchedulerClient
from cluster.scheduling.states import TaskState
from cluster.store import Store, TaskRow


class TaskDetail(TaskRow):
    """One task as ``GET /v1/tasks/{id}`` and ``POST /v1/tasks`` show it."""

    usage: TaskUsage = TaskUsage()
    """Model turns and tokens, in all and per step (from its ``model_turn`` events)."""
    warnings: list[str] = []
    """At submit: what the person submitting should know (e.g. nothing will check the work)."""


def _all_events(store: Store, task_id: str) -> list[Event]:
    found: list[Event] = []
    after = 0
    while batch := store.events(task_id, after):  # the store pages its answer
        found += batch
        after = batch[-1].seq or after + len(batch)
    return found


def detail(store: Store, task_id: str) -> TaskDetail:
    task = store.task(task_id)
    return TaskDetail(**dict(task), usage=usage_from_events(_all_events(store, task_id)))


def summary(task: TaskRow) -> dict[str, Any]:
    """A task without its spec (lists stay small)."""
    return task.model_dump(mode="json", exclude={"spec"})


def listed(store: Store, state: TaskState | None) -> list[dict[str, Any]]:
    return store.summaries({state} if state else None)


async def submit(store: Store, scheduler: SchedulerClient, body: SubmitRequest) -> TaskDetail:
    """Submit by project path, or by the name of a project this cluster has run before."""
    project_path = body.project_path
    if (project_path is None) == (body.project is None):
        raise SubmitError("give exactly one of project_path or project (a name)")
    if body.project is not None:
        known = store.project_paths()
        if body.project not in known:
            names = ", ".join(sorted(known)) or "none yet; submit by path once"
            raise SubmitError(f"unknown project {body.project!r} (known: {names})")
        project_path = known[body.project]
    assert project_path is not None
    task = await scheduler.submit(project_path, body.prd_path, body.prd, body.priority, body.model)
    return TaskDetail(**dict(task), warnings=submit_warnings(task.spec.plan, task.spec.config.check))
