"""People's replies (idempotent per ask: see ``cluster/api/services/replies.py``) and what waits for them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from cluster import people_tokens
from cluster.api.auth import Caller, need
from cluster.api.deps import ReadStore, Scheduler
from cluster.api.schemas import AUTHED, AnswerRequest, DecisionRequest, refusals
from cluster.api.services import replies
from cluster.api.services.tasks import summary
from cluster.scheduling.states import TaskState

router = APIRouter(prefix="/v1", responses=AUTHED)


@router.post("/tasks/{task_id}/answer", responses=refusals(400, 404, 409, 503))
async def answer(task_id: str, body: AnswerRequest, store: ReadStore, scheduler: Scheduler,
                 caller: Caller = need("answer")) -> dict[str, Any]:
    outcome = await replies.answer(store, scheduler, task_id, body.text, caller.person or body.who, body.question)
    return outcome.as_json()


@router.post("/tasks/{task_id}/decision", responses=refusals(400, 403, 404, 409, 503))
async def decision(task_id: str, body: DecisionRequest, store: ReadStore, scheduler: Scheduler,
                   caller: Caller = need("decide")) -> dict[str, Any]:
    who, channel = (caller.person, people_tokens.CHANNEL) if caller.person else (body.who, body.channel)
    outcome = await replies.decide(store, scheduler, task_id, body.decision, body.reason, who, channel,
                                   body.checkpoint, admin=caller.role == "admin", finish=body.finish,
                                   dry_run=body.dry_run)
    return outcome.as_json()


@router.get("/approvals", dependencies=[need("read")])
async def approvals(store: ReadStore) -> list[dict[str, Any]]:
    """Tasks that wait for a person, each with what it waits for (``pending``)."""
    waiting = store.tasks({TaskState.awaiting_approval, TaskState.waiting_input})
    return [{**summary(t), "pending": (p.model_dump(mode="json") if (p := replies.pending(store, t)) else None)}
            for t in waiting]
