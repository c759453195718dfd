"""What a task leaves: its artifacts and its diff (read right; docs/deliverables.md).

* ``GET /v1/tasks/{id}/artifacts`` — every artifact (name, kind, size, sha256, step, commit, image).
* ``GET /v1/tasks/{id}/artifacts/{name}?step=`` — the bytes (``X-Hearth-Sha256`` carries the hash).
* ``GET /v1/tasks/{id}/diff?step=`` — the whole diff of a step's checkpoint (or of the task so far),
  which the approval card cuts; read from the project's repository on the head.
"""

from __future__ import annotations

from typing import Any

import git
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, PlainTextResponse

from cluster.api.auth import need
from cluster.api.deps import ReadStore
from cluster.api.schemas import AUTHED, refusals
from cluster.artifact_store import ArtifactUnavailable, artifact_file, checkpoints, task_artifacts
from cluster.errors import Conflict

router = APIRouter(prefix="/v1/tasks", dependencies=[need("read")], responses={**AUTHED, **refusals(400, 404)})


class BlobResponse(FileResponse):
    chunk_size = 1 << 20  # starlette's 64 KiB makes large artifacts crawl over loopback


@router.get("/{task_id}/artifacts")
async def list_artifacts(task_id: str, store: ReadStore) -> list[dict[str, Any]]:
    store.task(task_id)
    return task_artifacts(store, task_id)


@router.get("/{task_id}/artifacts/{name:path}", responses=refusals(409, 410))
async def get_artifact(task_id: str, name: str, request: Request, store: ReadStore,
                       step: str | None = None) -> BlobResponse:
    store.task(task_id)
    try:
        found = artifact_file(store, request.app.state.store_path.parent, task_id, name, step)
    except ArtifactUnavailable as exc:
        raise HTTPException(status_code=exc.status, detail=str(exc)) from None
    return BlobResponse(found.path, filename=found.filename, media_type="application/octet-stream",
                        headers={"X-Hearth-Sha256": found.sha256})


# The diff is text/plain; refusals stay JSON like every other route's (so no response_class here).
@router.get("/{task_id}/diff", response_model=None, responses={
    **refusals(409, 410), 200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "The diff"}})
async def diff(task_id: str, store: ReadStore, request: Request, step: str | None = None) -> PlainTextResponse:
    spec = store.task(task_id).spec
    done = checkpoints(store, task_id)
    if not done:
        raise Conflict(f"{task_id} has no checkpoint yet")
    old, new = spec.base_commit, done[-1].commit
    if step is not None:
        ids = [cp.step_id for cp in done]
        if step not in ids:
            raise HTTPException(status_code=404,
                                detail=f"{task_id} has no checkpoint of step {step!r} (it has: {', '.join(ids)})")
        at = ids.index(step)
        old, new = (done[at - 1].commit if at else old), done[at].commit
    try:
        # The head's mirror holds every checkpoint (boxes send them there), whatever the project's source.
        mirror = request.app.state.store_path.parent / "repos" / f"{spec.config.name}.git"
        text = git.Repo(mirror if mirror.is_dir() else spec.project_path).git.diff("--no-color", old, new)
        return PlainTextResponse(str(text))
    except (git.GitCommandError, git.NoSuchPathError, git.InvalidGitRepositoryError) as exc:
        raise HTTPException(status_code=410, detail=f"cannot read the diff of {task_id}: {exc}") from None
