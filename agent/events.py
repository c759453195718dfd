"""The closed set of events a task emits.

Events are append-only and numbered per task by the store (``seq``). They are stored before they are
sent anywhere (SSE readers, the OpenClaw outbox), so a reader that reconnects with ``Last-Event-ID``
misses nothing. Every event is a pydantic model; ``Event`` is their discriminated union, so
``EventAdapter.validate_json(raw)`` parses any of them.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from agent.artifacts import ArtifactRef


class TerminationReason(StrEnum):
    """Why an attempt (or a task) ended. ``cluster/scheduling/endings.py: ENDINGS`` maps each to the
    task's next state, whether to retry, and the sentence people see."""

    completed = "completed"
    node_lost = "node_lost"
    preempted = "preempted"
    budget = "budget"
    stuck = "stuck"
    """The model made the same call ``budget.stuck_after`` times in a row; the step ends (a failure, not retried)."""
    error = "error"
    cancelled = "cancelled"
    waiting_input = "waiting_input"
    """Not an ending of the task: the attempt parked itself to wait for a person's answer."""


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str
    attempt_id: str | None = None
    at: float = Field(default_factory=time.time)
    seq: int | None = None
    """Assigned by the store when the event is journaled; None before."""


class TaskSubmitted(_Event):
    kind: Literal["task_submitted"] = "task_submitted"
    name: str
    steps: list[str]
    priority: int


class TaskPlaced(_Event):
    kind: Literal["task_placed"] = "task_placed"
    node_id: str
    attempt_no: int


class StepStarted(_Event):
    kind: Literal["step_started"] = "step_started"
    step_id: str
    title: str
    index: int
    total: int


class AgentAction(_Event):
    """One tool call the model made (for progress display; the full transcript is saved on disk)."""

    kind: Literal["agent_action"] = "agent_action"
    step_id: str
    turn: int
    tool: str
    summary: str


class ModelTurn(_Event):
    """One request to the model: what it cost and how it ended (token accounting per turn)."""

    kind: Literal["model_turn"] = "model_turn"
    step_id: str
    turn: int
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = ""
    elided: int = 0
    """Messages of the conversation elided or dropped to fit this request into the context window."""


class CheckRan(_Event):
    kind: Literal["check_ran"] = "check_ran"
    step_id: str
    passed: bool
    output_tail: str


class CheckpointReady(_Event):
    kind: Literal["checkpoint_ready"] = "checkpoint_ready"
    step_id: str
    commit: str
    snapshot_id: str
    diff_stat: str
    files_changed: list[str]
    check_summary: str
    needs_approval: bool = False
    checked: bool = True
    """False when no check ran: the step was accepted on the model's word (the card says so)."""
    diff: str = ""
    """The checkpoint's diff, cut at ``DIFF_LIMIT`` characters (the whole one: ``hearth diff``)."""
    diff_truncated: bool = False
    build_summary: str = ""
    """The tail of the build's output (``[artifacts] build``), empty without a build."""
    artifacts: list[ArtifactRef] = []
    """What the step's build left, stored on the head (``hearth artifacts``)."""
    final: bool = False
    """The task's last checkpoint: its approval also finishes the branch (keep, merge or push)."""


class BuildRan(_Event):
    """The step's build (after a passing check): its output tail, or the problem naming the artifact."""

    kind: Literal["build_ran"] = "build_ran"
    step_id: str
    passed: bool
    output_tail: str
    duration_s: float = 0.0


class ClarificationRequested(_Event):
    kind: Literal["clarification_requested"] = "clarification_requested"
    step_id: str
    question: str


class AnswerReceived(_Event):
    kind: Literal["answer_received"] = "answer_received"
    step_id: str
    answer: str
    who: str


class ModelOutage(_Event):
    """The step's model stopped answering (its server crashed or was evicted); the runner restarts
    or re-finds it and the step goes on, or the attempt fails after ``budget.model_wait_s``."""

    kind: Literal["model_outage"] = "model_outage"
    step_id: str
    model: str
    message: str
    recovered: bool


class DecisionMade(_Event):
    kind: Literal["decision_made"] = "decision_made"
    step_id: str
    approve: bool
    reason: str = ""
    who: str
    finish: str = ""
    """On the final checkpoint: keep, merge or push, overriding hearth.toml's ``[finish] action``."""


class StepCompleted(_Event):
    kind: Literal["step_completed"] = "step_completed"
    step_id: str
    commit: str
    turns: int
    duration_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0


class AttemptEnded(_Event):
    kind: Literal["attempt_ended"] = "attempt_ended"
    reason: TerminationReason
    message: str = ""


class TaskRequeued(_Event):
    kind: Literal["task_requeued"] = "task_requeued"
    reason: TerminationReason
    from_step: int
    kept_ref: str = ""
    """A restart from step 0: the ref that keeps the earlier attempt's commits ('' if it made none)."""


class TaskCompleted(_Event):
    kind: Literal["task_completed"] = "task_completed"
    branch: str
    commits: list[str]


class BranchFinished(_Event):
    """What happened to a completed task's branch: kept, merged into the base, or pushed."""

    kind: Literal["branch_finished"] = "branch_finished"
    branch: str
    action: str
    ok: bool
    message: str
    base: str = ""
    commit: str = ""
    """The base branch's new head after a merge (or the pushed commit)."""


class TaskFailed(_Event):
    kind: Literal["task_failed"] = "task_failed"
    reason: TerminationReason
    message: str


class TaskCancelled(_Event):
    kind: Literal["task_cancelled"] = "task_cancelled"
    who: str = "user"


class PriorityChanged(_Event):
    kind: Literal["priority_changed"] = "priority_changed"
    priority: int


Event = Annotated[
    TaskSubmitted
    | TaskPlaced
    | StepStarted
    | AgentAction
    | ModelTurn
    | CheckRan
    | BuildRan
    | CheckpointReady
    | ClarificationRequested
    | AnswerReceived
    | ModelOutage
    | DecisionMade
    | StepCompleted
    | AttemptEnded
    | TaskRequeued
    | TaskCompleted
    | BranchFinished
    | TaskFailed
    | TaskCancelled
    | PriorityChanged,
    Field(discriminator="kind"),
]
EventAdapter: TypeAdapter[Event] = TypeAdapter(Event)
