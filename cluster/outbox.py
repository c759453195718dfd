"""The outbox: which events people must see in chat, and the queries of its delivery queue.

Rows are inserted by ``Store._append`` in the event's own transaction (so an event that people must
see can never be stored without its delivery entry). The delivery loop in the sidecar
(cluster/openclaw.py) is the only other writer, and it only ever updates these rows: never tasks,
attempts or events. ``OutboxQueries`` is mixed into ``Store``: one connection, one transaction.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import AbstractContextManager

from pydantic import BaseModel

from agent.events import Event, EventAdapter

NOTIFY_KINDS = {"clarification_requested", "checkpoint_ready", "task_completed", "task_failed",
                "attempt_ended", "task_requeued", "decision_made", "task_cancelled", "model_outage"}
THREAD_ONLY_KINDS = frozenset({"task_placed"})
"""Events sent only to channels with a thread per task (Slack), where they open or extend it."""
SYSTEM_WHO = "hearth"
"""``who`` of decisions Hearth takes itself (an approval timeout); people are told of those."""


def notifiable(event: Event) -> bool:
    """The events people must see in chat (everything else stays in the event log and SSE)."""
    if event.kind not in NOTIFY_KINDS:
        return False
    if event.kind == "checkpoint_ready":
        return bool(getattr(event, "needs_approval", False))
    if event.kind == "attempt_ended":
        return str(getattr(event, "reason", "")) == "node_lost"
    if event.kind in {"decision_made", "task_cancelled"}:  # people see their own; Hearth's are news
        return str(getattr(event, "who", "")).startswith(SYSTEM_WHO)
    return True


class OutboxEntry(BaseModel):
    event_id: int
    task_id: str
    tries: int
    next_try_at: float
    acked_at: float | None
    last_error: str | None
    last_try_at: float | None
    message_id: str | None
    outcome: str | None
    event: Event


def _outbox_row(row: sqlite3.Row) -> OutboxEntry:
    data = dict(row)
    data["event"] = EventAdapter.validate_json(data.pop("body"))
    return OutboxEntry.model_validate(data)


class OutboxQueries:
    """The outbox's queries on ``Store``'s connection (``db``) and transactions (``tx``)."""

    db: sqlite3.Connection

    def tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction (``Store.tx``)."""
        raise NotImplementedError

    def _migrate_outbox(self) -> None:
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(outbox)").fetchall()}
        for name, ddl in (("last_try_at", "REAL"), ("message_id", "TEXT"), ("outcome", "TEXT")):
            if name not in columns:
                self.db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {ddl}")

    def outbox_due(self, now: float, limit: int = 64, exclude: set[str] | frozenset[str] = frozenset()
                   ) -> list[OutboxEntry]:
        """The head (oldest unacknowledged entry) of each task's queue, if it is due, oldest first.

        Only heads: a task's entry n+1 is never offered before entry n is acknowledged.
        """
        rows = self.db.execute(
            "SELECT o.*, e.body FROM outbox o JOIN events e ON e.id = o.event_id"
            " WHERE o.event_id IN (SELECT MIN(event_id) FROM outbox WHERE acked_at IS NULL GROUP BY task_id)"
            " AND o.next_try_at <= ? ORDER BY o.event_id LIMIT ?",
            (now, limit + len(exclude)),
        ).fetchall()
        entries = [_outbox_row(r) for r in rows if r["task_id"] not in exclude]
        return entries[:limit]

    def outbox_next_due_at(self) -> float | None:
        row = self.db.execute(
            "SELECT MIN(next_try_at) FROM outbox WHERE event_id IN"
            " (SELECT MIN(event_id) FROM outbox WHERE acked_at IS NULL GROUP BY task_id)"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def outbox_mark_sending(self, event_id: int, now: float, lease_s: float) -> int:
        """Record, before the request leaves, that it may reach the gateway; returns the try number.

        ``next_try_at`` moves past the lease, so a sender that dies mid-request retries (with the same
        idempotency key) only after the lease.
        """
        with self.tx() as db:
            db.execute("UPDATE outbox SET tries = tries + 1, last_try_at = ?, next_try_at = ?,"
                       " outcome = CASE WHEN outcome = 'in-doubt' THEN outcome ELSE 'sending' END"
                       " WHERE event_id = ? AND acked_at IS NULL", (now, now + lease_s, event_id))
            row = db.execute("SELECT tries FROM outbox WHERE event_id = ?", (event_id,)).fetchone()
        return int(row[0]) if row else 0

    def outbox_ack(self, event_id: int, *, message_id: str | None, outcome: str = "sent") -> None:
        self.db.execute("UPDATE outbox SET acked_at = ?, message_id = ?, outcome = ?, last_error = NULL"
                        " WHERE event_id = ? AND acked_at IS NULL",
                        (time.time(), message_id, outcome, event_id))

    def outbox_retry_later(self, event_id: int, error: str, next_try_at: float, *, in_doubt: bool = False
                           ) -> None:
        """A try that failed; ``in_doubt``: the message may have been delivered all the same."""
        self.db.execute("UPDATE outbox SET last_error = ?, next_try_at = ?, outcome = ?"
                        " WHERE event_id = ? AND acked_at IS NULL",
                        (error[:500], next_try_at, "in-doubt" if in_doubt else None, event_id))

    def outbox_recover_in_flight(self, now: float) -> int:
        """At a sender's start: entries a previous sender left ``sending`` are in doubt, due now."""
        cursor = self.db.execute("UPDATE outbox SET outcome = 'in-doubt', next_try_at = ?"
                                 " WHERE acked_at IS NULL AND outcome IN ('sending', 'in-doubt')", (now,))
        return int(cursor.rowcount)

    def outbox(self, task_id: str | None = None, *, pending_only: bool = False) -> list[OutboxEntry]:
        where, args = [], []
        if task_id is not None:
            where.append("o.task_id = ?")
            args.append(task_id)
        if pending_only:
            where.append("o.acked_at IS NULL")
        sql = "SELECT o.*, e.body FROM outbox o JOIN events e ON e.id = o.event_id"
        sql += (" WHERE " + " AND ".join(where)) if where else ""
        return [_outbox_row(r) for r in self.db.execute(sql + " ORDER BY o.event_id", args).fetchall()]
