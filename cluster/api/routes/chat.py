"""Chat threads (cluster/slack.py): a message in a task's thread, and a decided card's new form."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from agent.events import DecisionMade
from cluster.api.auth import Caller, need
from cluster.api.deps import ReadStore, Scheduler
from cluster.api.schemas import AUTHED, ThreadReplyRequest, refusals
from cluster.api.services import replies
from cluster.api.services.chat import reply_in_thread
from cluster.chat_cards import render
from cluster.errors import Conflict
from cluster.slack import decided_blocks

router = APIRouter(prefix="/v1/chat", responses={**AUTHED, **refusals(400, 404)})


@router.post("/{channel}/threads/{thread_id}/reply")
async def thread_reply(channel: str, thread_id: str, body: ThreadReplyRequest, store: ReadStore,
                       scheduler: Scheduler, caller: Caller = need("answer")) -> dict[str, Any]:
    """A message in a task's thread: answers its question or decides its checkpoint, or says why not.
    ``task_id`` null: not a Hearth thread (the chat goes on as usual)."""
    task_id = store.task_of_thread(channel, thread_id)
    if task_id is None:
        return {"task_id": None, "text": ""}
    text = await reply_in_thread(store, scheduler, task_id, body.text, body.who, channel,
                                 may_decide="decide" in caller.rights, admin=caller.role == "admin")
    return {"task_id": task_id, "text": text}


@router.get("/{channel}/card/{task_id}/{seq}", dependencies=[need("read")])
async def decided_card(channel: str, task_id: str, seq: int, store: ReadStore) -> dict[str, Any]:
    """A decided checkpoint's card as the chat shows it after the decision: no buttons; who and when."""
    task = store.task(task_id)
    pair = next((p for p in replies.asks(store, task_id, replies.CHECKPOINT) if p[0].seq == seq), None)
    if pair is None or not isinstance(pair[1], DecisionMade):
        raise Conflict(f"{task_id} checkpoint #{seq} is not decided")
    text = render(pair[0], task).text
    return {"text": text, "blocks": decided_blocks(text, pair[1].approve, pair[1].who, pair[1].at)}
