"""Sidecar routes for what a task leaves: its artifacts and its diff (read right; read-only).

* ``GET /v1/tasks/{id}/artifacts`` — every artifact (name, kind, size, sha256, step, commit, image).
* ``GET /v1/tasks/{id}/artifacts/{name}?step=`` — the bytes (``X-Hearth-Sha256`` carries the hash).
* ``GET /v1/tasks/{id}/diff?step=`` — the whole diff of a step's checkpoint (or of the task so far),
  read from the project's repository on the head, where every checkpoint is pushed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import git
from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, PlainTextResponse

from agent.artifacts import ContentStore
from cluster.artifact_store import ARTIFACTS_DIR, checkpoints, find_artifact, task_artifacts
from cluster.store import Store, UnknownTask


class BlobResponse(FileResponse):
    chunk_size = 1 << 20  # starlette's 64 KiB makes large artifacts crawl over loopback


def deliverables_router(open_store: Callable[[], Store], state_dir: Path, read: Any) -> APIRouter:
    router = APIRouter(dependencies=[read])
    content = ContentStore(state_dir / ARTIFACTS_DIR)

    def with_store(task_id: str, work: Callable[[Store], Any]) -> Any:
        db = open_store()
        try:
            db.task(task_id)
            return work(db)
        except UnknownTask:
            raise HTTPException(status_code=404, detail=f"no task {task_id!r}") from None
        finally:
            db.close()

    @router.get("/v1/tasks/{task_id}/artifacts")
    async def list_artifacts(task_id: str) -> list[dict[str, Any]]:
        return list(with_store(task_id, lambda db: task_artifacts(db, task_id)))

    @router.get("/v1/tasks/{task_id}/artifacts/{name:path}")
    async def get_artifact(task_id: str, name: str, step: str | None = None) -> BlobResponse:
        found = with_store(task_id, lambda db: find_artifact(db, task_id, name, step))
        if found is None:
            where = f" from step {step}" if step else ""
            raise HTTPException(status_code=404, detail=f"{task_id} has no artifact {name!r}{where}")
        if not found["stored"]:
            raise HTTPException(status_code=409, detail=(
                f"artifact {name} ({found['image_tag']}) lives only in its node's Docker engine; set "
                "[artifacts.image] export = 'save' (or 'push') to get images off the node"))
        path = content.path_of(found["sha256"])
        if not path.exists():
            raise HTTPException(status_code=410, detail=f"artifact {name}: its blob {found['sha256'][:12]}… is gone "
                                                         "from the head's store")
        filename = found["name"].replace("/", "_") + (".tar" if found["kind"] != "file" else "")
        return BlobResponse(path, filename=filename, media_type="application/octet-stream",
                            headers={"X-Hearth-Sha256": found["sha256"]})

    @router.get("/v1/tasks/{task_id}/diff", response_class=PlainTextResponse)
    async def diff(task_id: str, step: str | None = None) -> str:
        def work(db: Store) -> str:
            task = db.task(task_id)
            spec = task.spec if isinstance(task.spec, dict) else task.spec.model_dump(mode="json")
            done = checkpoints(db, task_id)
            if not done:
                raise HTTPException(status_code=409, detail=f"{task_id} has no checkpoint yet")
            old, new = str(spec["base_commit"]), done[-1].commit
            if step is not None:
                ids = [cp.step_id for cp in done]
                if step not in ids:
                    raise HTTPException(status_code=404, detail=(
                        f"{task_id} has no checkpoint of step {step!r} (it has: {', '.join(ids)})"))
                at = ids.index(step)
                old, new = (done[at - 1].commit if at else old), done[at].commit
            try:
                return str(git.Repo(spec["project_path"]).git.diff("--no-color", old, new))
            except (git.GitCommandError, git.NoSuchPathError, git.InvalidGitRepositoryError) as exc:
                raise HTTPException(status_code=410, detail=f"cannot read the diff of {task_id}: {exc}") from None
        return str(with_store(task_id, work))

    return router
