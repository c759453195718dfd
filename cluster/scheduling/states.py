"""The task lifecycle: one table of allowed transitions, one ``transition()`` that enforces it.

Diagram: docs/task-states.md.
"""

from __future__ import annotations

from enum import StrEnum

from cluster.errors import TransitionError


class TaskState(StrEnum):
    queued = "queued"
    placed = "placed"
    running = "running"
    waiting_input = "waiting_input"
    awaiting_approval = "awaiting_approval"
    yielding = "yielding"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


S = TaskState
TERMINAL = frozenset({S.completed, S.failed, S.cancelled})

ALLOWED: dict[tuple[TaskState, TaskState], str] = {
    (S.queued, S.placed): "the scheduler chose a node and created the attempt's actor",
    (S.placed, S.running): "the attempt's runner started its first step",
    (S.placed, S.queued): "the node was lost (or the actor died) before the task started",
    (S.running, S.waiting_input): "the model called ask_user; the task waits for a person",
    (S.waiting_input, S.running): "the answer arrived and the runner resumed the step",
    (S.running, S.awaiting_approval): "a checkpoint needs a person's Approve/Reject",
    (S.awaiting_approval, S.running): "approved (continue) or rejected (redo the step)",
    (S.running, S.yielding): "pre-empted: the runner will stop at its next checkpoint",
    (S.yielding, S.queued): "the runner reached its checkpoint and released the node",
    (S.yielding, S.running): "the pre-emption was withdrawn before the checkpoint",
    (S.yielding, S.waiting_input): "asked to yield, the step asked a question first: waiting holds no node",
    (S.yielding, S.awaiting_approval): "asked to yield, the step reached an approval checkpoint first",
    (S.running, S.queued): "node lost or attempt crashed: a new attempt starts from step 0",
    (S.waiting_input, S.queued): "answered (resume the step, preferably on the same node) or node lost",
    (S.awaiting_approval, S.queued): "node lost while awaiting approval: restart from step 0",
    (S.yielding, S.completed): "the last step finished before the runner reached a yield point",
    (S.running, S.completed): "every step passed its check (and was approved where required)",
    (S.failed, S.queued): "`hearth restart` re-queued a failed task",
    (S.cancelled, S.queued): "`hearth restart` re-queued a cancelled task",
}
# Any non-terminal state may end in failed or cancelled.
for _state in TaskState:
    if _state not in TERMINAL:
        ALLOWED[(_state, S.failed)] = "attempts exhausted, budget spent, or an unrecoverable error"
        ALLOWED[(_state, S.cancelled)] = "a user cancelled the task"


def transition(current: TaskState, new: TaskState) -> TaskState:
    """Return ``new`` if the lifecycle allows ``current → new``; raise TransitionError otherwise."""
    if (current, new) not in ALLOWED:
        raise TransitionError(f"a task cannot go from {current.value} to {new.value}")
    return new
