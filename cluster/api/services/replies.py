"""People's replies, as the sidecar takes them: answers to questions and decisions on checkpoints,
one idempotent algorithm for both.

Each reply may name the ask it replies to (``question``/``checkpoint`` = the ask event's seq, as chat
buttons and tags carry it). The same reply to an ask already replied that way is a duplicate: the
answer is the task with ``duplicate: true`` and nothing acts again. A different reply, or one to an
ask that no longer waits, is a ``Conflict`` naming who replied and the task's state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from agent.artifacts import ArtifactRef
from agent.events import AnswerReceived, CheckpointReady, ClarificationRequested, DecisionMade, Event
from agent.finish import FINISH_ACTIONS
from cluster.errors import Conflict, Invalid, NotAllowed
from cluster.scheduler_client import SchedulerClient
from cluster.scheduling.states import TaskState
from cluster.store import Store, TaskRow

Pair = tuple[Event, Event | None]
"""An ask and the first reply after it (None: it still waits)."""


@dataclass(frozen=True)
class ReplyKind:
    noun: str
    ask: str
    reply: str
    waits_in: TaskState
    still: str
    """How the ask is described while it waits (for the 409 sentence)."""


QUESTION = ReplyKind("question", "clarification_requested", "answer_received", TaskState.waiting_input,
                     "waits for an answer")
CHECKPOINT = ReplyKind("checkpoint", "checkpoint_ready", "decision_made", TaskState.awaiting_approval,
                       "awaits approval")


def asks(store: Store, task_id: str, kind: ReplyKind) -> list[Pair]:
    """Each ask of ``kind`` (questions, or checkpoints that want approval), paired with its reply."""
    pairs: list[Pair] = []
    for event in store.events_of(task_id, kind.ask, kind.reply):
        if event.kind == kind.ask:
            if isinstance(event, CheckpointReady) and not event.needs_approval:
                continue
            pairs.append((event, None))
        elif pairs and pairs[-1][1] is None:
            pairs[-1] = (pairs[-1][0], event)
    return pairs


class ReplyOutcome(BaseModel):
    task: TaskRow
    duplicate: bool
    reply: Event | None = None
    """The earlier identical reply (duplicates only)."""

    def as_json(self) -> dict[str, Any]:
        extra = {"reply": self.reply.model_dump(mode="json")} if self.reply is not None else {}
        return {**self.task.model_dump(mode="json"), "duplicate": self.duplicate, **extra}


async def reply_once(store: Store, kind: ReplyKind, task_id: str, ask_seq: int | None,
                     same: Callable[[Any], bool], verb: Callable[[Any], str],
                     act: Callable[[], Awaitable[TaskRow]]) -> ReplyOutcome:
    """Act on a reply once: replay an identical earlier reply, refuse a conflicting or stale one."""
    task = store.task(task_id)
    pairs = asks(store, task_id, kind)
    waiting = task.state == kind.waits_in and bool(pairs) and pairs[-1][1] is None
    current = pairs[-1][0].seq if waiting else None
    if ask_seq is not None and ask_seq != current:
        found = _replayed(store, kind, task_id, ask_seq, pairs, same, verb)
        if found is not None:
            return found
        raise Conflict(f"{task_id} is {task.state.value}; {kind.noun} #{ask_seq} no longer {kind.still}")
    try:
        return ReplyOutcome(task=await act(), duplicate=False)
    except Conflict:  # someone replied between our read and the scheduler's: was it this same reply?
        if current is None:
            raise
        found = _replayed(store, kind, task_id, current, asks(store, task_id, kind), same, verb)
        if found is not None:
            return found
        raise


def _replayed(store: Store, kind: ReplyKind, task_id: str, ask_seq: int, pairs: list[Pair],
              same: Callable[[Any], bool], verb: Callable[[Any], str]) -> ReplyOutcome | None:
    """The earlier identical reply to ask ``ask_seq``, or a Conflict naming who replied; None when
    nothing replied yet."""
    chosen = [p for p in pairs if p[0].seq == ask_seq]
    if not chosen:
        raise Conflict(f"{task_id} has no {kind.noun} #{ask_seq}")
    reply = chosen[0][1]
    if reply is None:
        return None
    if same(reply):
        return ReplyOutcome(task=store.task(task_id), duplicate=True, reply=reply)
    state = store.task(task_id).state.value
    who = getattr(reply, "who", "")
    raise Conflict(f"{task_id}: that {kind.noun} was already {verb(reply)} by {who}; the task is now {state}")


async def answer(store: Store, scheduler: SchedulerClient, task_id: str, text: str, who: str,
                 question: int | None) -> ReplyOutcome:
    def same(reply: AnswerReceived) -> bool:
        return reply.answer == text and reply.who == who

    return await reply_once(store, QUESTION, task_id, question, same, lambda _: "answered",
                            lambda: scheduler.answer(task_id, text, who))


async def decide(store: Store, scheduler: SchedulerClient, task_id: str, decision: str, reason: str, who: str,
                 channel: str, checkpoint: int | None, *, admin: bool, finish: str = "",
                 dry_run: bool = False) -> ReplyOutcome:
    """Decide a checkpoint once; ``dry_run`` only checks that ``who`` may, and that it still waits."""
    if decision not in {"approve", "reject"}:
        raise Invalid("decision must be 'approve' or 'reject'")
    if finish and finish not in FINISH_ACTIONS:
        raise Invalid(f"finish must be one of {', '.join(FINISH_ACTIONS)}, not {finish!r}")
    approve = decision == "approve"
    task = store.task(task_id)
    approvers = task.spec.config.approvers
    if not admin and approvers:
        ids = {who, f"{channel}:{who}"} if channel else {who}
        if not ids & set(approvers):
            raise NotAllowed(f"{who or 'someone unnamed'} may not approve or reject {task_id}: only the "
                             f"approvers listed in project {task.project}'s hearth.toml may")

    def verb(reply: DecisionMade) -> str:
        return "approved" if reply.approve else "rejected"

    async def act() -> TaskRow:
        if dry_run:  # reply_once has refused a stale or decided checkpoint by now
            if task.state != CHECKPOINT.waits_in:
                raise Conflict(f"{task_id} is {task.state.value}; nothing {CHECKPOINT.still}")
            return task
        return await scheduler.approve_or_reject(task_id, approve, reason, who, finish)

    return await reply_once(store, CHECKPOINT, task_id, checkpoint, lambda r: r.approve == approve, verb, act)


class QuestionPending(BaseModel):
    kind: Literal["question"] = "question"
    seq: int
    step_id: str
    question: str


class ApprovalPending(BaseModel):
    kind: Literal["approval"] = "approval"
    seq: int
    step_id: str
    commit: str
    diff_stat: str
    files_changed: list[str]
    check_summary: str
    build_summary: str = ""
    diff: str = ""
    """Cut at ``agent.card.DIFF_LIMIT``; the whole diff: ``GET /v1/tasks/{id}/diff?step=``."""
    diff_truncated: bool = False
    artifacts: list[ArtifactRef] = []
    final: bool = False
    """The last step's checkpoint: approving it finishes the branch (``finish``: keep, merge, push)."""


def pending(store: Store, task: TaskRow) -> QuestionPending | ApprovalPending | None:
    """What a waiting task waits for: the question or the checkpoint, with the seq chat replies carry."""
    for kind in (QUESTION, CHECKPOINT):
        if task.state != kind.waits_in:
            continue
        pairs = asks(store, task.id, kind)
        if not pairs or pairs[-1][1] is not None:
            return None
        ask = pairs[-1][0]
        if isinstance(ask, ClarificationRequested):
            return QuestionPending(seq=ask.seq or 0, step_id=ask.step_id, question=ask.question)
        if isinstance(ask, CheckpointReady):
            return ApprovalPending(seq=ask.seq or 0, step_id=ask.step_id, commit=ask.commit,
                                   diff_stat=ask.diff_stat, files_changed=ask.files_changed,
                                   check_summary=ask.check_summary, build_summary=ask.build_summary,
                                   diff=ask.diff, diff_truncated=ask.diff_truncated, artifacts=ask.artifacts,
                                   final=ask.final)
    return None
