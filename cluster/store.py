"""Durable state on the head: SQLite in WAL mode.

The scheduler actor is the only writer of tasks, attempts and events; the sidecar and the CLI read
them read-only. The one exception is the ``outbox`` table: the scheduler inserts its rows (in the
event's transaction), and the sidecar's chat delivery loop (cluster/openclaw.py) updates their
delivery columns beside it, which WAL mode allows (one short write transaction at a time). A restarted
scheduler rebuilds its whole picture from here (queued and running tasks, attempts, events).
Every state change goes through ``set_state`` (which enforces the lifecycle table) in the same
transaction as the event that explains it.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.config import ProjectConfig
from agent.events import Event, EventAdapter
from agent.runner import TaskSpec
from cluster.errors import UnknownTask
from cluster.outbox import THREAD_ONLY_KINDS, OutboxQueries, notifiable
from cluster.private_files import create_private_file, private_dir
from cluster.scheduling.states import TaskState, transition

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
  name TEXT PRIMARY KEY, path TEXT NOT NULL, config TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
  id TEXT PRIMARY KEY, number INTEGER UNIQUE NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL,
  state TEXT NOT NULL, priority INTEGER NOT NULL, model TEXT NOT NULL, spec TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, next_step INTEGER NOT NULL DEFAULT 0, resume_commit TEXT,
  resume_node TEXT, node_id TEXT, attempt_id TEXT, waiting_for TEXT, answer TEXT,
  message TEXT NOT NULL DEFAULT '',
  created_at REAL NOT NULL, updated_at REAL NOT NULL, queued_since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
  id TEXT PRIMARY KEY, task_id TEXT NOT NULL, no INTEGER NOT NULL, node_id TEXT NOT NULL,
  started_at REAL NOT NULL, ended_at REAL, reason TEXT, host TEXT);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, seq INTEGER NOT NULL,
  kind TEXT NOT NULL, body TEXT NOT NULL, at REAL NOT NULL, UNIQUE (task_id, seq));
CREATE TABLE IF NOT EXISTS outbox (
  event_id INTEGER PRIMARY KEY, task_id TEXT NOT NULL, tries INTEGER NOT NULL DEFAULT 0,
  next_try_at REAL NOT NULL, acked_at REAL, last_error TEXT);
CREATE TABLE IF NOT EXISTS chat_threads (
  task_id TEXT PRIMARY KEY, channel TEXT NOT NULL, target TEXT NOT NULL, thread_id TEXT NOT NULL,
  created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS chat_threads_by_thread ON chat_threads(channel, thread_id);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(acked_at, next_try_at);
"""


class TaskRow(BaseModel):
    id: str
    number: int
    project: str
    name: str
    state: TaskState
    priority: int
    model: str
    spec: TaskSpec
    """What the task runs (its PRD's plan, the project's config at submission)."""
    attempts: int
    next_step: int
    resume_commit: str | None
    resume_node: str | None
    node_id: str | None
    attempt_id: str | None
    waiting_for: str | None
    answer: str | None
    """JSON {text, who}: an answer not yet handed to the attempt that resumes the step."""
    message: str
    created_at: float
    updated_at: float
    queued_since: float


class AttemptRow(BaseModel):
    id: str
    task_id: str
    no: int
    node_id: str
    started_at: float
    ended_at: float | None
    reason: str | None
    host: str | None = None
    """The task host (a named Ray actor, ``cluster/task_hosts.py``) that runs or ran the attempt."""


class Store(OutboxQueries):
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            create_private_file(private_dir(path.parent) / path.name)
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self._migrate_outbox()
            self._migrate_attempts()
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout=5000")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # projects -----------------------------------------------------------------------------------
    def put_project(self, path: str, config: ProjectConfig) -> None:
        self.db.execute(
            "INSERT INTO projects VALUES (?,?,?,?) ON CONFLICT(name) DO UPDATE SET path=excluded.path,"
            " config=excluded.config, updated_at=excluded.updated_at",
            (config.name, path, config.model_dump_json(), time.time()),
        )

    def project_paths(self) -> dict[str, str]:
        """Each project this cluster has run, by name → where it lives."""
        return {r["name"]: r["path"] for r in self.db.execute("SELECT name, path FROM projects").fetchall()}

    # tasks --------------------------------------------------------------------------------------
    def create_task(self, *, project: str, name: str, priority: int, model: str, spec: TaskSpec,
                    submitted: Event) -> TaskRow:
        now = time.time()
        with self.tx() as db:
            number = db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM tasks").fetchone()[0]
            task_id = f"T-{number}"
            spec = spec.model_copy(update={"task_id": task_id})
            db.execute(
                "INSERT INTO tasks (id, number, project, name, state, priority, model, spec, created_at,"
                " updated_at, queued_since) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (task_id, number, project, name, TaskState.queued, priority, model, spec.model_dump_json(),
                 now, now, now),
            )
            self._append(db, submitted.model_copy(update={"task_id": task_id}))
        return self.task(task_id)

    def task(self, task_id: str) -> TaskRow:
        row = self.db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise UnknownTask(task_id)
        return _task_row(row)

    def tasks(self, states: set[TaskState] | None = None) -> list[TaskRow]:
        # Filtered in SQL: each row's spec (the whole PRD) is parsed, so a scheduler cycle that
        # asks for active tasks must not parse every finished one too.
        if states is None:
            rows = self.db.execute("SELECT * FROM tasks ORDER BY number").fetchall()
        else:
            marks = ", ".join("?" * len(states))
            rows = self.db.execute(f"SELECT * FROM tasks WHERE state IN ({marks}) ORDER BY number",
                                   [s.value for s in states]).fetchall()
        return [_task_row(r) for r in rows]

    def summaries(self, states: set[TaskState] | None = None) -> list[dict[str, Any]]:
        """Tasks as JSON-ready dicts without their spec, which is never parsed (``GET /v1/tasks`` of
        1,000 tasks: the spec parse was most of its time)."""
        columns = ", ".join(c for c in TaskRow.model_fields if c != "spec")
        where, args = "", []
        if states is not None:
            where = f" WHERE state IN ({', '.join('?' * len(states))})"
            args = [s.value for s in states]
        rows = self.db.execute(f"SELECT {columns} FROM tasks{where} ORDER BY number", args).fetchall()
        return [dict(r) for r in rows]

    def update_task(self, task_id: str, **fields: Any) -> None:
        if not fields:
            return
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{key} = ?" for key in fields)
        values = [json.dumps(v) if key == "spec" else v for key, v in fields.items()]
        self.db.execute(f"UPDATE tasks SET {assignments} WHERE id = ?", (*values, task_id))

    def set_state(self, task_id: str, new: TaskState, event: Event | None = None, **fields: Any) -> TaskRow:
        """Move a task to ``new`` (checked against the lifecycle), with an event, atomically."""
        with self.tx() as db:
            row = db.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                raise UnknownTask(task_id)
            current = TaskState(row["state"])
            if current != new:
                transition(current, new)
            if current != new:  # the message explains the state it was written for ("at its limit"…)
                fields.setdefault("message", "")
            fields = {"state": new.value, "updated_at": time.time(), **fields}
            if new == TaskState.queued and current != TaskState.queued:
                fields.setdefault("queued_since", time.time())
            assignments = ", ".join(f"{key} = ?" for key in fields)
            db.execute(f"UPDATE tasks SET {assignments} WHERE id = ?", (*fields.values(), task_id))
            if event is not None:
                self._append(db, event)
        return self.task(task_id)

    # attempts -----------------------------------------------------------------------------------
    def start_attempt(self, task_id: str, attempt_id: str, no: int, node_id: str, host: str | None = None) -> None:
        self.db.execute("INSERT INTO attempts (id, task_id, no, node_id, started_at, host) VALUES (?,?,?,?,?,?)",
                        (attempt_id, task_id, no, node_id, time.time(), host))

    def attempt_host(self, attempt_id: str) -> str | None:
        """The name of the task host that runs ``attempt_id`` (None: unknown attempt, or none recorded)."""
        row = self.db.execute("SELECT host FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
        return None if row is None else row[0]

    def end_attempt(self, attempt_id: str, reason: str) -> None:
        self.db.execute("UPDATE attempts SET ended_at = ?, reason = ? WHERE id = ? AND ended_at IS NULL",
                        (time.time(), reason, attempt_id))

    def attempts(self, task_id: str) -> list[AttemptRow]:
        rows = self.db.execute("SELECT * FROM attempts WHERE task_id = ? ORDER BY no", (task_id,))
        return [AttemptRow(**dict(r)) for r in rows.fetchall()]

    # events -------------------------------------------------------------------------------------
    def append_event(self, event: Event) -> Event:
        with self.tx() as db:
            return self._append(db, event)

    def _append(self, db: sqlite3.Connection, event: Event) -> Event:
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE task_id = ?",
                         (event.task_id,)).fetchone()[0]
        stored = event.model_copy(update={"seq": seq})
        cursor = db.execute("INSERT INTO events (task_id, seq, kind, body, at) VALUES (?,?,?,?,?)",
                            (event.task_id, seq, event.kind, stored.model_dump_json(), event.at))
        if notifiable(stored) or stored.kind in THREAD_ONLY_KINDS:
            # Only when the task's project routes to a chat ([notify] channel in hearth.toml); the
            # placement only where each task has a thread of its own (it opens the thread).
            channel = "IN ('slack')" if stored.kind in THREAD_ONLY_KINDS else "!= ''"
            db.execute(
                "INSERT INTO outbox (event_id, task_id, next_try_at) SELECT ?, ?, ? FROM tasks"
                f" WHERE id = ? AND COALESCE(json_extract(spec, '$.config.notify.channel'), '') {channel}",
                (cursor.lastrowid, event.task_id, event.at, event.task_id),
            )
        return stored

    # chat threads (one per task where the channel has threads: Slack) ---------------------------
    def chat_thread(self, task_id: str) -> str | None:
        """The id of the task's thread (Slack: the ``ts`` of its first message), if it has one."""
        row = self.db.execute("SELECT thread_id FROM chat_threads WHERE task_id = ?", (task_id,)).fetchone()
        return str(row[0]) if row else None

    def set_chat_thread(self, task_id: str, channel: str, target: str, thread_id: str) -> None:
        """Remember the task's thread; the first one stays (a later call changes nothing)."""
        self.db.execute("INSERT OR IGNORE INTO chat_threads (task_id, channel, target, thread_id, created_at)"
                        " VALUES (?,?,?,?,?)", (task_id, channel, target, thread_id, time.time()))

    def task_of_thread(self, channel: str, thread_id: str) -> str | None:
        """The task whose thread this is (a reply in it concerns that task), or None."""
        row = self.db.execute("SELECT task_id FROM chat_threads WHERE channel = ? AND thread_id = ?",
                              (channel, thread_id)).fetchone()
        return str(row[0]) if row else None

    def last_event(self, task_id: str, *kinds: str) -> Event | None:
        """The task's most recent event of one of ``kinds`` (one indexed row, not the whole log)."""
        marks = ", ".join("?" for _ in kinds)
        row = self.db.execute(
            f"SELECT body FROM events WHERE task_id = ? AND kind IN ({marks}) ORDER BY seq DESC LIMIT 1",
            (task_id, *kinds),
        ).fetchone()
        return EventAdapter.validate_json(row["body"]) if row else None

    def events_of(self, task_id: str, *kinds: str) -> list[Event]:
        """The task's events of ``kinds``, in order."""
        marks = ", ".join("?" for _ in kinds)
        rows = self.db.execute(f"SELECT body FROM events WHERE task_id = ? AND kind IN ({marks}) ORDER BY seq",
                               (task_id, *kinds)).fetchall()
        return [EventAdapter.validate_json(r["body"]) for r in rows]

    def events(self, task_id: str, after_seq: int = 0, limit: int = 1000) -> list[Event]:
        rows = self.db.execute(
            "SELECT body FROM events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (task_id, after_seq, limit),
        ).fetchall()
        return [EventAdapter.validate_json(r["body"]) for r in rows]


    def _migrate_attempts(self) -> None:
        """Columns added to ``attempts`` since it was first created (a store from an older Hearth)."""
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(attempts)").fetchall()}
        if "host" not in columns:
            self.db.execute("ALTER TABLE attempts ADD COLUMN host TEXT")

    def data_version(self) -> int:
        """Changes whenever another connection commits (cheap change detection for pollers)."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])


@functools.lru_cache(maxsize=4096)
def _spec(text: str) -> TaskSpec:
    """A stored spec, parsed once: a spec never changes after submission, and the scheduler reads
    every queued task each cycle (1,000 queued PRDs were re-parsed several times a second)."""
    return TaskSpec.model_validate_json(text)


def _task_row(row: sqlite3.Row) -> TaskRow:
    data = dict(row)
    data["spec"] = _spec(data["spec"])
    return TaskRow.model_validate(data)
