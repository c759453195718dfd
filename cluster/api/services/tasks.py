"""Tasks as the sidecar reads them, and submissions by project name."""

from __future__ import annotations

from typing import Any

from cluster.api.schemas import SubmitRequest
from cluster.errors import SubmitError
from cluster.scheduler_client import SchedulerClient
from cluster.scheduling.states import TaskState
from cluster.store import Store, TaskRow


def summary(task: TaskRow) -> dict[str, Any]:
    """A task without its spec (lists stay small)."""
    return task.model_dump(mode="json", exclude={"spec"})


def listed(store: Store, state: TaskState | None) -> list[dict[str, Any]]:
    return store.summaries({state} if state else None)


async def submit(store: Store, scheduler: SchedulerClient, body: SubmitRequest) -> TaskRow:
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
    return await scheduler.submit(project_path, body.prd_path, body.prd, body.priority, body.model)
