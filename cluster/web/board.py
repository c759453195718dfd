"""What the board and the inbox show, read from the store (no Ray): tasks by column, waits by age."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from agent.config import PRIORITY_NAMES
from agent.events import CheckpointReady, ClarificationRequested, StepStarted
from cluster.states import TaskState
from cluster.store import Store, TaskRow

S = TaskState
COLUMNS: list[tuple[str, str, frozenset[TaskState]]] = [
    ("queued", "Queued", frozenset({S.queued})),
    ("running", "Running", frozenset({S.placed, S.running, S.yielding})),
    ("waiting_input", "Waiting for input", frozenset({S.waiting_input})),
    ("awaiting_approval", "Awaiting approval", frozenset({S.awaiting_approval})),
    ("done", "Done", frozenset({S.completed})),
    ("failed", "Failed / cancelled", frozenset({S.failed, S.cancelled})),
]
FINISHED_SHOWN = 25
"""The done and failed columns show the most recent ones; the rest are counted."""


def priority_label(value: int) -> str:
    """75 → 'high'; a number between the names reads as the number."""
    names = {number: name for name, number in PRIORITY_NAMES.items()}
    return names.get(value, str(value))


def age(seconds: float) -> str:
    """A short, human age: '45s', '12m', '3h', '2d'."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


class Card(BaseModel):
    id: str
    name: str
    project: str
    state: str
    priority: int
    priority_label: str
    node: str
    step_index: int
    """1-based number of the step being worked on (or the last one, once done)."""
    step_total: int
    step_id: str
    age: str
    """Since the task was submitted."""
    in_state: str
    """Since the task last changed."""
    message: str


class Column(BaseModel):
    key: str
    title: str
    cards: list[Card]
    hidden: int = 0
    """Older finished tasks not shown."""


class Board(BaseModel):
    columns: list[Column]
    projects: list[str]
    project: str | None
    total: int


def card(db: Store, task: TaskRow, now: float) -> Card:
    steps = task.spec.get("plan", {}).get("steps", [])
    total = len(steps)
    index, step_id = 0, ""
    if task.state == S.completed:
        index = total
        step_id = steps[-1]["id"] if steps else ""
    elif task.state != S.queued or task.attempts:
        started = db.last_event(task.id, "step_started")
        if isinstance(started, StepStarted):
            index, total, step_id = started.index + 1, started.total, started.step_id
    node = (task.node_id or task.resume_node or "")[:12]
    return Card(id=task.id, name=task.name, project=task.project, state=task.state.value, priority=task.priority,
                priority_label=priority_label(task.priority), node=node, step_index=index, step_total=total,
                step_id=step_id, age=age(now - task.created_at), in_state=age(now - task.updated_at),
                message=task.message)


def board(db: Store, project: str | None = None, now: float | None = None) -> Board:
    now = time.time() if now is None else now
    tasks = db.tasks()
    projects = sorted({t.project for t in tasks} | set(db.projects()))
    shown = [t for t in tasks if project in (None, "", t.project)]
    columns = []
    for key, title, states in COLUMNS:
        members = [t for t in shown if t.state in states]
        hidden = 0
        if key in {"done", "failed"}:
            members.sort(key=lambda t: t.updated_at, reverse=True)
            hidden = max(0, len(members) - FINISHED_SHOWN)
            members = members[:FINISHED_SHOWN]
        else:  # what runs next first: highest priority, then oldest
            members.sort(key=lambda t: (-t.priority, t.created_at))
        columns.append(Column(key=key, title=title, cards=[card(db, t, now) for t in members], hidden=hidden))
    return Board(columns=columns, projects=projects, project=project or None, total=len(shown))


class Waiting(BaseModel):
    """One thing a person must do: answer a question or decide on a checkpoint."""

    task_id: str
    task_name: str
    project: str
    kind: str
    """'question' or 'approval'."""
    seq: int
    """The asking event's number (forms carry it, so a stale click is caught)."""
    step_id: str
    text: str
    """The question, or the checkpoint's diff stat."""
    commit: str = ""
    check_summary: str = ""
    asked_at: float
    waited: str


def pending(db: Store, task: TaskRow, now: float | None = None) -> Waiting | None:
    """What a waiting task waits for, from its latest asking event (None when it waits for nothing)."""
    now = time.time() if now is None else now
    if task.state == S.waiting_input and task.answer is None:
        ask = db.last_event(task.id, "clarification_requested", "answer_received")
        if isinstance(ask, ClarificationRequested) and ask.seq is not None:
            return Waiting(task_id=task.id, task_name=task.name, project=task.project, kind="question",
                           seq=ask.seq, step_id=ask.step_id, text=ask.question, asked_at=ask.at,
                           waited=age(now - ask.at))
    if task.state == S.awaiting_approval:
        ask = db.last_event(task.id, "checkpoint_ready", "decision_made")
        if isinstance(ask, CheckpointReady) and ask.seq is not None:
            return Waiting(task_id=task.id, task_name=task.name, project=task.project, kind="approval",
                           seq=ask.seq, step_id=ask.step_id, text=ask.diff_stat, commit=ask.commit,
                           check_summary=ask.check_summary, asked_at=ask.at, waited=age(now - ask.at))
    return None


def inbox(db: Store, now: float | None = None) -> list[Waiting]:
    """Every question and approval waiting for someone, oldest first."""
    now = time.time() if now is None else now
    found = [pending(db, t, now) for t in db.tasks({S.waiting_input, S.awaiting_approval})]
    return sorted((w for w in found if w is not None), key=lambda w: w.asked_at)


def summary(db: Store) -> dict[str, Any]:
    """Counts for the navigation bar: how many things wait for a person."""
    return {"inbox": len(inbox(db))}
