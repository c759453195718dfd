"""People's replies inside the scheduler: answers to questions, approve/reject on checkpoints, the
runner waiting for a decision, and the project's default when nobody decides in time.

Only the scheduler actor runs this (it is the store's one writer). Idempotency towards chat (the same
click twice acts once) is the sidecar's: ``cluster/api/services/replies.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from agent.events import AnswerReceived, CheckpointReady, DecisionMade
from agent.finish import FINISH_ACTIONS
from agent.runner import Decision
from cluster.errors import Conflict, Invalid
from cluster.outbox import SYSTEM_WHO
from cluster.scheduling.states import TaskState
from cluster.store import Store, TaskRow

S = TaskState


class Replies:
    def __init__(self, store: Store, wake: asyncio.Event) -> None:
        self.store = store
        self.wake = wake
        self.decisions: dict[str, asyncio.Future[Decision]] = {}
        """Task id → the decision its runner waits for (``await_decision``)."""

    def answer(self, task_id: str, text: str, who: str) -> TaskRow:
        """Record a person's answer; the task is re-queued (at resume priority) to continue the step.

        If the attempt that asked has not finished parking yet, the answer waits in the store and
        ``Attempts.finish`` re-queues the task when it does, so two attempts never share a workspace.
        """
        task = self.store.task(task_id)
        if task.state != S.waiting_input or task.answer is not None:
            raise Conflict(f"{task_id} is {task.state.value}, not waiting for an answer")
        step_id = getattr(self.store.last_event(task_id, "clarification_requested"), "step_id", "")
        received = AnswerReceived(task_id=task_id, attempt_id=task.attempt_id, step_id=step_id, answer=text,
                                  who=who)
        answer = json.dumps({"text": text, "who": who})
        if task.attempt_id is None:
            self.store.set_state(task_id, S.queued, received, answer=answer, waiting_for=None)
        else:
            self.store.update_task(task_id, answer=answer)
            self.store.append_event(received)
        self.wake.set()
        return self.store.task(task_id)

    def approve_or_reject(self, task_id: str, approve: bool, reason: str, who: str, finish: str = "") -> TaskRow:
        """``finish`` (keep, merge, push) only on the final checkpoint: how the branch ends."""
        task = self.store.task(task_id)
        if task.state != S.awaiting_approval:
            raise Conflict(f"{task_id} is {task.state.value}, not awaiting approval")
        if finish:
            if finish not in FINISH_ACTIONS:
                raise Invalid(f"finish must be one of {', '.join(FINISH_ACTIONS)}, not {finish!r}")
            checkpoint = self.store.last_event(task_id, "checkpoint_ready")
            if not (isinstance(checkpoint, CheckpointReady) and checkpoint.final):
                raise Conflict(f"{task_id}: finish ({finish}) applies only to the final checkpoint's approval")
        self.store.set_state(task_id, S.running,
                             DecisionMade(task_id=task_id, attempt_id=task.attempt_id,
                                          step_id=task.waiting_for or "", approve=approve, reason=reason,
                                          who=who, finish=finish if approve else ""), waiting_for=None)
        future = self.decisions.pop(task_id, None)
        if future is not None and not future.done():
            future.set_result(Decision(approve=approve, reason=reason, who=who))
        return self.store.task(task_id)

    async def await_decision(self, task: TaskRow, attempt_id: str, step_id: str) -> Decision:
        if task.state != S.awaiting_approval:
            # Decided before this call arrived (a fast click, a timeout, or the runner re-asking
            # after a scheduler restart): hand over the decision that was journaled.
            made = self._decision_made(task.id, attempt_id, step_id)
            if made is not None:
                return made
        future = self.decisions.setdefault(task.id, asyncio.get_running_loop().create_future())
        return await future

    def _decision_made(self, task_id: str, attempt_id: str, step_id: str) -> Decision | None:
        """The decision on the attempt's latest checkpoint of ``step_id``, if one was journaled: the
        task's last checkpoint-or-decision event is then that decision."""
        event = self.store.last_event(task_id, "checkpoint_ready", "decision_made")
        if isinstance(event, DecisionMade) and event.attempt_id == attempt_id and event.step_id == step_id:
            return Decision(approve=event.approve, reason=event.reason, who=event.who)
        return None

    def forget(self, task_id: str) -> None:
        """The attempt that waited for a decision is gone: nobody will collect it."""
        future = self.decisions.pop(task_id, None)
        if future is not None:
            future.cancel()

    async def expire_approvals(self, cancel: Callable[[str, str], Awaitable[object]]) -> None:
        """Take the project's ``approval_timeout_action`` on checkpoints nobody decided in time."""
        now = time.time()
        for task in self.store.tasks({S.awaiting_approval}):
            timeout = task.spec.config.approval_timeout_s
            if not timeout:
                continue
            checkpoint = self.store.last_event(task.id, "checkpoint_ready")
            if now - (checkpoint.at if checkpoint else task.updated_at) < timeout:
                continue
            action = task.spec.config.approval_timeout_action
            who = f"{SYSTEM_WHO} (approval timeout)"
            if action == "cancel":
                await cancel(task.id, who)
            else:
                self.approve_or_reject(task.id, approve=action == "approve", who=who,
                                       reason=f"no decision within {timeout:g} s; the project's default is {action}")
