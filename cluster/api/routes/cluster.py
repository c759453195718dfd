"""The cluster itself: health, the scheduling policy, nodes, and the chat outbox."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from cluster.api.auth import need
from cluster.api.deps import ReadStore, Scheduler
from cluster.api.schemas import AUTHED, refusals
from cluster.nodes import NodeView

router = APIRouter(prefix="/v1", responses=AUTHED)


@router.get("/health", dependencies=[need("read")], responses=refusals(503))
async def health(scheduler: Scheduler) -> dict[str, str]:
    return {"status": await scheduler.ping()}


@router.get("/policy", dependencies=[need("read")], responses=refusals(503))
async def policy(scheduler: Scheduler) -> dict[str, Any]:
    """The cluster-wide scheduling policy in force (``[scheduler]`` in the head's head.toml)."""
    return await scheduler.policy()


@router.get("/nodes", dependencies=[need("nodes")], responses=refusals(503))
async def nodes(scheduler: Scheduler) -> list[NodeView]:
    return await scheduler.nodes()


@router.get("/outbox", dependencies=[need("read")])
async def outbox(store: ReadStore, task_id: str | None = None, pending: bool = False) -> list[dict[str, Any]]:
    """Chat delivery entries (tries, last error, platform message id), oldest first."""
    return [e.model_dump(mode="json", exclude={"event"}) | {"kind": e.event.kind, "seq": e.event.seq}
            for e in store.outbox(task_id, pending_only=pending)]
