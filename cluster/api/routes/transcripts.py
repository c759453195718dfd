"""Step transcripts and check output, as attempts sent them to the head (cluster/transcripts.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from cluster import transcripts
from cluster.api.auth import need
from cluster.api.deps import ReadStore
from cluster.api.schemas import AUTHED, refusals
from cluster.blobs import BlobStore

router = APIRouter(prefix="/v1/tasks", responses={**AUTHED, **refusals(404)})


def _blobs(request: Request) -> BlobStore:
    """The head's kept files sit beside its store: ``<state>/blobs``."""
    return BlobStore(Path(request.app.state.store_path).parent / "blobs")


@router.get("/{task_id}/transcripts", dependencies=[need("read")])
async def transcript_steps(task_id: str, request: Request, store: ReadStore) -> list[dict[str, Any]]:
    """The steps whose conversations are kept on the head, with the attempts that ran them."""
    store.task(task_id)  # 404 for an unknown task
    return transcripts.steps(_blobs(request), task_id)


@router.get("/{task_id}/transcripts/{step_id}", dependencies=[need("read")])
async def transcript(task_id: str, step_id: str, request: Request, store: ReadStore) -> dict[str, Any]:
    """One step's conversation per attempt and the whole output of each check run."""
    store.task(task_id)
    record = transcripts.step_record(_blobs(request), task_id, step_id)
    if record is None:
        raise HTTPException(status_code=404, detail=f"{task_id} has no transcript for step {step_id!r}")
    return record
