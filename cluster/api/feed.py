"""``EventFeed``: one watcher of the store for every open event stream of a sidecar.

An event stream used to poll SQLite itself every 100 ms (a fresh connection, two queries), so 100
idle streams cost the sidecar 12 CPU-seconds per 20 s. Now one task per sidecar asks SQLite's
``data_version`` (a counter that moves when another connection commits; no table read) every
``POLL_S``, and only when it moved reads which tasks got new events (``events.id`` is
monotonic). Streams sleep on ``wait`` until their task has news: an idle stream costs nothing.
The web page's live streams (cluster/web/live.py) sleep on ``wait_commit`` instead: any commit
(a state change has no event) wakes them, and they re-render only then.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from cluster.store import Store

POLL_S = 0.05
"""How often the one watcher asks SQLite whether anything was committed."""


class EventFeed:
    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self.store: Store | None = None
        """The feed's own read-only view; streams read their events through it (one connection)."""
        self.news: dict[str, int] = {}
        """task id → how many times new events for it were seen (streams wait for it to move)."""
        self._changed = asyncio.Event()
        self._job: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_id = 0
        self._version = -1
        self.commits = 0
        """How many times the store was seen to change (``wait_commit`` waits for it to move)."""

    def view(self) -> Store:
        """The shared read-only store (opened on first use, in the sidecar's event loop)."""
        self._ensure_running()
        assert self.store is not None
        return self.store

    def mark(self, task_id: str) -> int:
        """The task's news counter now: pass it to ``wait`` after reading, so nothing slips between."""
        self._ensure_running()
        return self.news.get(task_id, 0)

    async def wait(self, task_id: str, seen: int, timeout_s: float) -> None:
        """Until the task has events newer than ``seen`` (a ``mark``), or ``timeout_s`` passes."""
        self._ensure_running()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.news.get(task_id, 0) == seen:
                    await self._changed.wait()

    async def wait_commit(self, seen: int, timeout_s: float) -> None:
        """Until ``commits`` moves past ``seen`` (read it before reading the store), or ``timeout_s``."""
        self._ensure_running()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.commits == seen:
                    await self._changed.wait()

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._job is not None and not self._job.done():
            return
        # A new event loop (a test client opens one per request): start over in it.
        self._loop, self._changed = loop, asyncio.Event()
        if self.store is None:
            self.store = Store(self.store_path, readonly=True)
            self._last_id = self._max_id(self.store)
        self._job = loop.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            self._poll()
            await asyncio.sleep(POLL_S)

    def _poll(self) -> None:
        assert self.store is not None
        version = self.store.data_version()
        if version == self._version:
            return
        self._version = version
        self.commits += 1
        rows = self.store.db.execute("SELECT id, task_id FROM events WHERE id > ?", (self._last_id,)).fetchall()
        if rows:
            self._last_id = max(r[0] for r in rows)
            for task_id in {r[1] for r in rows}:
                self.news[task_id] = self.news.get(task_id, 0) + 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    @staticmethod
    def _max_id(store: Store) -> int:
        return int(store.db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    async def aclose(self) -> None:
        if self._job is not None and self._loop is asyncio.get_running_loop():
            self._job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._job
        if self.store is not None:
            self.store.close()
            self.store = None
