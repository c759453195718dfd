"""What the board and the inbox show, read from the store (no Ray): tasks by column, waits by age."""

from __future__ import annotations

import json
import sqlite3
import time

from pydantic import BaseModel

from agent.config import PRIORITY_NAMES
from agent.events import CheckpointReady, ClarificationRequested
from cluster.scheduling.states import TaskState
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


# The board is read with one query (no pydantic parsing of specs and events per task): it is the
# first page people open, and it must stay fast with hundreds of tasks.
CARDS_SQL = """
SELECT t.id, t.project, t.name, t.state, t.priority, t.node_id, t.resume_node, t.attempts, t.created_at,
       t.updated_at, t.message, json_array_length(t.spec, '$.plan.steps') AS total,
       json_extract(t.spec, '$.plan.steps[#-1].id') AS last_step,
       (SELECT e.body FROM events e WHERE e.task_id = t.id AND e.kind = 'step_started'
        ORDER BY e.seq DESC LIMIT 1) AS started
FROM tasks t
"""


def _card(row: sqlite3.Row, now: float) -> Card:
    total, index, step_id = int(row["total"] or 0), 0, ""
    if row["state"] == S.completed:
        index, step_id = total, row["last_step"] or ""
    elif row["started"] and (row["state"] != S.queued or row["attempts"]):
        started = json.loads(row["started"])
        index, total, step_id = int(started["index"]) + 1, int(started["total"]), str(started["step_id"])
    return Card(id=row["id"], name=row["name"], project=row["project"], state=row["state"],
                priority=row["priority"], priority_label=priority_label(row["priority"]),
                node=(row["node_id"] or row["resume_node"] or "")[:12], step_index=index, step_total=total,
                step_id=step_id, age=age(now - row["created_at"]), in_state=age(now - row["updated_at"]),
                message=row["message"])


def board(db: Store, project: str | None = None, now: float | None = None) -> Board:
    now = time.time() if now is None else now
    rows = db.db.execute(CARDS_SQL + (" WHERE t.project = ?" if project else ""),
                         (project,) if project else ()).fetchall()
    names = {r[0] for r in db.db.execute("SELECT DISTINCT project FROM tasks UNION SELECT name FROM projects")}
    columns = []
    for key, title, states in COLUMNS:
        members = [r for r in rows if r["state"] in states]
        hidden = 0
        if key in {"done", "failed"}:
            members.sort(key=lambda r: r["updated_at"], reverse=True)
            hidden = max(0, len(members) - FINISHED_SHOWN)
            members = members[:FINISHED_SHOWN]
        else:  # what runs next first: highest priority, then oldest
            members.sort(key=lambda r: (-r["priority"], r["created_at"]))
        columns.append(Column(key=key, title=title, cards=[_card(r, now) for r in members], hidden=hidden))
    return Board(columns=columns, projects=sorted(names), project=project or None, total=len(rows))


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
    final: bool = False
    """The last step's checkpoint: approving it also finishes the branch (keep, merge or push)."""
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
                           check_summary=ask.check_summary, final=ask.final, asked_at=ask.at,
                           waited=age(now - ask.at))
    return None


INBOX_SQL = """
SELECT t.id, t.name, t.project, t.state, t.answer,
       (SELECT e.body FROM events e WHERE e.task_id = t.id AND e.kind IN
         ('clarification_requested', 'answer_received', 'checkpoint_ready', 'decision_made')
        ORDER BY e.seq DESC LIMIT 1) AS ask
FROM tasks t WHERE t.state IN ('waiting_input', 'awaiting_approval')
"""
ASKS = {"waiting_input": "clarification_requested", "awaiting_approval": "checkpoint_ready"}


def inbox(db: Store, now: float | None = None) -> list[Waiting]:
    """Every question and approval waiting for someone, oldest first (one query)."""
    now = time.time() if now is None else now
    found = []
    for row in db.db.execute(INBOX_SQL).fetchall():
        ask = json.loads(row["ask"]) if row["ask"] else {}
        if ask.get("kind") != ASKS[row["state"]] or (row["state"] == S.waiting_input and row["answer"]):
            continue
        question = ask["kind"] == "clarification_requested"
        found.append(Waiting(
            task_id=row["id"], task_name=row["name"], project=row["project"],
            kind="question" if question else "approval", seq=ask["seq"], step_id=ask["step_id"],
            text=ask["question"] if question else ask["diff_stat"], commit=ask.get("commit", ""),
            check_summary=ask.get("check_summary", ""), asked_at=ask["at"], waited=age(now - ask["at"])))
    return sorted(found, key=lambda w: w.asked_at)


def inbox_count(db: Store) -> int:
    """How many tasks wait for a person (the navigation bar's number)."""
    return int(db.db.execute("SELECT COUNT(*) FROM tasks WHERE state = 'awaiting_approval' OR"
                             " (state = 'waiting_input' AND answer IS NULL)").fetchone()[0])
