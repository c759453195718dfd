"""Why an attempt ended decides what happens to its task: one table, read by ``Attempts.finish``

Each ``TerminationReason`` (agent/events.py) maps to the task's next state, whether a new attempt is
tried from step 0 (while the project's ``max_attempts`` allows; the task fails after), whether the
next attempt keeps the work done so far, and the sentence people see in chat.
"""

from __future__ import annotations

from typing import NamedTuple

from agent.events import TerminationReason
from cluster.scheduling.states import TaskState

R, S = TerminationReason, TaskState


class Ending(NamedTuple):
    next_state: TaskState
    """Where the task goes when its attempt ends this way (``retry``: while attempts are left)."""
    retry: bool
    """A new attempt starts from step 0 while ``max_attempts`` allows; after that the task fails."""
    keeps_work: bool
    """The next attempt resumes at the attempt's ``next_step`` from its ``resume_commit``, preferably
    on the same node (the workspace is there), else on any node from the commit on the head."""
    sentence: str
    """What people are told (chat cards)."""


ENDINGS: dict[TerminationReason, Ending] = {
    R.completed: Ending(S.completed, False, False, "All steps passed their checks."),
    R.node_lost: Ending(S.queued, True, False,
                        "The node running this task was lost; the task restarts from step 0."),
    R.error: Ending(S.queued, True, False, "The attempt crashed with an error."),
    R.preempted: Ending(S.queued, False, True, "Paused at a checkpoint to make room for a higher-priority task."),
    R.waiting_input: Ending(S.waiting_input, False, True,
                            "Waiting for an answer; the model slot is free until someone replies."),
    R.budget: Ending(S.failed, False, False, "A step ran out of its turn or time budget before its check passed."),
    R.stuck: Ending(S.failed, False, False,
                    "The model kept going round in circles without progress; the step was stopped."),
    R.cancelled: Ending(S.cancelled, False, False, "The task was cancelled."),
}

if missing := set(TerminationReason) - set(ENDINGS):  # a new reason must say how the task ends
    raise RuntimeError(f"cluster/scheduling/endings.py has no ending for {sorted(missing)}")
