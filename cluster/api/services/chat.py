"""What a message in a task's chat thread does (Slack: cluster/slack.py keeps one thread per task).

A question waits: the message is the answer, verbatim, from its author. A checkpoint waits:
``approve`` or ``reject <reason>`` decides it (the approvers rule applies). The task ended, its
question was already answered, or it waits for nothing: the sentence says so and nothing changes.
The result is always the sentence the thread shows back; refusals are sentences, not errors.
"""

from __future__ import annotations

from agent.events import AnswerReceived
from cluster.api.services import replies
from cluster.errors import HearthError
from cluster.scheduler_client import SchedulerClient
from cluster.scheduling.states import TERMINAL
from cluster.slack import mention, thread_reply
from cluster.store import Store


async def reply_in_thread(store: Store, scheduler: SchedulerClient, task_id: str, text: str, who: str,
                          channel: str, *, may_decide: bool, admin: bool) -> str:
    task = store.task(task_id)
    if task.state in TERMINAL:
        return (f"{task_id} has ended ({task.state.value}); this thread no longer takes answers or "
                "decisions. Nothing was changed.")
    pending = replies.pending(store, task)
    kind, value = thread_reply(text, pending.kind if pending else None)
    try:
        if kind == "answer" and pending is not None:
            outcome = await replies.answer(store, scheduler, task_id, value, who, pending.seq)
            if outcome.duplicate:
                return f"That answer for {task_id} was already recorded."
            return f"Answer for {task_id} recorded from {mention(who)}; the task resumes."
        if kind in ("approve", "reject") and pending is not None:
            if not may_decide:
                return "This token may not decide; nothing was changed."
            outcome = await replies.decide(store, scheduler, task_id, kind, value, who, channel, pending.seq,
                                           admin=admin)
            verb = "approved" if kind == "approve" else "rejected"
            if outcome.duplicate:
                return f"{task_id} was already {verb}."
            redo = "" if kind == "approve" else " The step is rolled back and redone" + (
                f" with: {value}" if value else ".")
            return f"{task_id} {verb} by {mention(who)}.{redo}"
    except HearthError as exc:
        return str(exc)
    if pending is not None and pending.kind == "approval":
        return f'Reply "approve" or "reject <reason>" in this thread to decide {task_id}, or use the buttons.'
    last = store.last_event(task_id, "clarification_requested", "answer_received")
    if isinstance(last, AnswerReceived):
        return f"{task_id}'s question was already answered by {mention(last.who)}; your reply was not passed on."
    return f"{task_id} is {task.state.value} and asks nothing now; your reply was not passed on."
