"""Attempts: one run of a task on one node, hosted by a warm task host (``cluster/task_hosts.py``).

The scheduler launches an attempt where the policy placed its task, on an idle host there (or a new
one), keeps a handle on it until its result arrives (re-attaching by the host's name after a scheduler
restart), gives the host back for the next attempt, and ends the attempt by its reason
(``cluster/scheduling/endings.py``). A report from an attempt that is not its task's current one is
a late reply from a dead attempt: ``current()`` says so, and it is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import ray

from agent.events import AttemptEnded, TaskFailed, TaskPlaced, TaskRequeued, TerminationReason
from agent.runner import RunResult
from cluster.errors import UnknownTask
from cluster.finishing import finish_task
from cluster.inventories import Inventories
from cluster.project_code import ProjectCode
from cluster.replies import Replies
from cluster.scheduling.endings import ENDINGS
from cluster.scheduling.states import TERMINAL, TaskState
from cluster.store import Store, TaskRow
from cluster.task_hosts import Host, TaskHosts

S = TaskState
SUSPECT_S = 60.0
"""How long an attempt whose actor died waits for Ray to judge its node (default health checks declare
a killed box dead in about 15 s, a hung one in about 65 s) before it counts as the actor's own crash."""
ACTIVE = frozenset({S.placed, S.running, S.waiting_input, S.awaiting_approval, S.yielding})
"""States in which a task holds (or is about to hold) a slot on a node."""


class Attempts:
    def __init__(self, store: Store, wake: asyncio.Event, inventories: Inventories, replies: Replies,
                 code: ProjectCode) -> None:
        self.store = store
        self.code = code
        self.wake = wake
        self.inventories = inventories
        self.replies = replies
        self.hosts = TaskHosts()
        self.running: dict[str, tuple[str, Host, Any]] = {}
        """attempt id → (task id, its host, ref of the host's result for it)."""
        self._watchers: set[asyncio.Task[None]] = set()
        self.suspect: dict[str, tuple[str, str, float]] = {}
        """attempt id → (task id, error, since): its actor died while Ray still called its node alive."""

    def reattach(self) -> None:
        """Track every active attempt: re-attach to its actor by name, or treat it as lost.

        Runs at start (a restarted scheduler) and each cycle, so an attempt that somehow went
        untracked (a crash between creating its actor and recording it) can never strand a task.
        """
        tracked = {entry[0] for entry in self.running.values()} | {entry[0] for entry in self.suspect.values()}
        for task in self.store.tasks(set(ACTIVE)):
            if task.attempt_id is None or task.id in tracked:
                continue
            name = self.store.attempt_host(task.attempt_id)
            host = self.hosts.attach(name, task.node_id or "") if name else None
            if host is None:
                self.lost(task, "the attempt's task host is gone (found on scheduler restart)")
            else:
                self._track(task.attempt_id, task.id, host, host.handle.result.remote(task.attempt_id))

    def start(self) -> None:
        """Start-up: re-attach to the attempts still running, and kill every other task host left
        (idle, or running an attempt that is over): the pool starts empty."""
        self.reattach()
        self.hosts.forget_others({host.name for _, host, _ in self.running.values()})

    def launch(self, task: TaskRow, node: str, gpu_index: int | None = None) -> None:
        attempt_no = task.attempts + 1
        attempt_id = f"{task.id}.{attempt_no}-{uuid.uuid4().hex[:6]}"
        # A resume continues from the last checkpoint on any node: the commit is on the head.
        resume = task.resume_commit is not None
        start_step = task.next_step if resume else 0
        answer = json.loads(task.answer) if task.answer and resume else None
        host = self.hosts.take(node)
        self.store.start_attempt(task.id, attempt_id, attempt_no, node, host.name)
        self.store.set_state(task.id, S.placed,
                             TaskPlaced(task_id=task.id, attempt_id=attempt_id, node_id=node,
                                        attempt_no=attempt_no),
                             attempts=attempt_no, attempt_id=attempt_id, node_id=node,
                             next_step=start_step)  # the answer stays until the attempt starts its step
        result = host.handle.run.remote(task.spec, attempt_id, attempt_no, start_step,
                                        task.resume_commit if resume else None, answer, gpu_index)
        self._track(attempt_id, task.id, host, result)

    def _track(self, attempt_id: str, task_id: str, host: Host, result: Any) -> None:
        """Wait for the attempt's result; its arrival wakes the cycle (reaped, and its slot refilled, at
        once rather than at the next tick: with short tasks the tick was a tenth of each slot's time)."""
        self.running[attempt_id] = (task_id, host, result)
        with contextlib.suppress(RuntimeError):  # outside an event loop (not under Ray): the tick reaps
            watcher = asyncio.get_running_loop().create_task(self._wake_on(result))
            self._watchers.add(watcher)  # the loop keeps only a weak reference to a task
            watcher.add_done_callback(self._watchers.discard)

    async def _wake_on(self, result: Any) -> None:
        with contextlib.suppress(Exception):  # a dead host's error is reaped, not raised here
            await result
        self.wake.set()

    def reap(self) -> None:
        """End every attempt whose result is in (or whose actor died)."""
        self._judge_suspects()
        if not self.running:
            return
        refs = {entry[2]: attempt for attempt, entry in self.running.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in ready:
            attempt_id = refs[ref]
            task_id, host, _ = self.running.pop(attempt_id)
            try:
                result: RunResult = ray.get(ref)
            except ray.exceptions.RayError as exc:
                self.hosts.kill(host)  # dead, or at least not to be trusted with another attempt
                task = self.store.task(task_id)
                if task.node_id in self._ray_alive():
                    # A box that just died still looks alive to Ray for a health-check period (about
                    # 15 s by default): judged now, its task would be re-placed on that dead box.
                    self.suspect[attempt_id] = (task_id, type(exc).__name__, time.monotonic())
                else:
                    self.lost(task, type(exc).__name__, attempt_id)
                continue
            self.hosts.give_back(host)
            self.finish(task_id, attempt_id, result)

    def _judge_suspects(self) -> None:
        """An attempt whose actor died: ``node_lost`` once Ray declares its node dead; ``error`` as soon
        as the node answers an inventory request sent after the death (the actor itself crashed), or
        if it is still alive after ``SUSPECT_S``."""
        if not self.suspect:
            return
        alive = self._ray_alive()
        for attempt_id, (task_id, detail, since) in list(self.suspect.items()):
            task = self.store.task(task_id)
            if (task.node_id not in alive or self.inventories.alive_since(task.node_id or "", since)
                    or time.monotonic() - since > SUSPECT_S):
                del self.suspect[attempt_id]
                self.lost(task, detail, attempt_id)

    @staticmethod
    def _ray_alive() -> set[str]:
        return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}

    def finish(self, task_id: str, attempt_id: str, result: RunResult) -> None:
        """Apply an attempt's result: ``ENDINGS`` says where its reason takes the task."""
        task = self.store.task(task_id)
        if task.attempt_id != attempt_id or task.state in TERMINAL:
            return
        reason, message, ending = result.reason, result.message, ENDINGS[result.reason]
        self.store.end_attempt(attempt_id, reason.value)
        ended = AttemptEnded(task_id=task_id, attempt_id=attempt_id, reason=reason, message=message)
        if ending.retry and task.attempts < task.spec.config.max_attempts:
            self._requeue_from_zero(task, ended, reason)
        elif ending.retry or ending.next_state == S.failed:
            self._fail(task, ended, message)
        elif ending.keeps_work:
            # Parked (or re-queued) with its work: it holds no node while it waits, so the box's
            # slot is free for others; resume_node only says where its sandbox snapshot is.
            parked = {"attempt_id": None, "node_id": None, "resume_node": task.node_id,
                      "next_step": result.next_step, "resume_commit": result.resume_commit}
            if ending.next_state == S.waiting_input and task.answer is not None:  # answered meanwhile
                self.store.set_state(task_id, S.queued, ended, waiting_for=None, **parked)
            else:
                self.store.set_state(task_id, ending.next_state, ended, **parked)
            if ending.next_state == S.queued:
                self.store.append_event(TaskRequeued(task_id=task_id, reason=reason, from_step=result.next_step))
        else:
            if ending.next_state == S.completed:  # finish the branch first: the task ends with its outcome
                self.store.append_event(finish_task(self.store, task_id, task.spec))
            self.store.set_state(task_id, ending.next_state, ended, attempt_id=None, next_step=result.next_step)
        self.wake.set()

    def lost(self, task: TaskRow, detail: str, attempt_id: str | None = None) -> None:
        """The attempt's actor died (or vanished): ``node_lost`` if its node went too, else ``error``."""
        attempt_id = attempt_id or task.attempt_id
        if attempt_id is None or task.attempt_id != attempt_id or task.state in TERMINAL:
            return
        alive = self.inventories.alive_nodes()
        reason = TerminationReason.node_lost if task.node_id not in alive else TerminationReason.error
        self.store.end_attempt(attempt_id, reason.value)
        ended = AttemptEnded(task_id=task.id, attempt_id=attempt_id, reason=reason, message=detail)
        retry = ENDINGS[reason].retry and task.attempts < task.spec.config.max_attempts
        if retry and task.state == S.placed and task.resume_commit:
            # Lost before it started its step (its box died as it was placed): nothing ran, so the
            # task goes on from where it was, with its last checkpoint and any answer, elsewhere.
            self.store.set_state(task.id, S.queued, ended, attempt_id=None, resume_node=None)
            self.store.append_event(TaskRequeued(task_id=task.id, reason=reason, from_step=task.next_step))
        elif retry:
            self._requeue_from_zero(task, ended, reason)
        else:
            self._fail(task, ended, f"gave up after {task.attempts} attempts: {detail}")

    def stop(self, task: TaskRow) -> None:
        """Kill the task's attempt now (the task is being cancelled)."""
        if task.attempt_id and task.attempt_id in self.running:
            _, host, _ = self.running.pop(task.attempt_id)
            self.hosts.kill(host)  # the attempt ends now, mid-step; a fresh host replaces this one
            self.store.end_attempt(task.attempt_id, TerminationReason.cancelled.value)

    def current(self, attempt_id: str) -> TaskRow | None:
        """The task ``attempt_id`` runs, if that attempt is still the task's current one."""
        task_id = attempt_id.split(".", 1)[0]
        try:
            task = self.store.task(task_id)
        except UnknownTask:
            return None
        return task if task.attempt_id == attempt_id and task.state not in TERMINAL else None

    def _fail(self, task: TaskRow, ended: AttemptEnded, message: str) -> None:
        self.store.set_state(task.id, S.failed, ended, attempt_id=None, message=message)
        self.store.append_event(TaskFailed(task_id=task.id, reason=ended.reason, message=message))

    def _requeue_from_zero(self, task: TaskRow, ended: AttemptEnded, reason: TerminationReason) -> None:
        kept = self.code.kept_ref(task.spec.config.name, ended.attempt_id or "")
        self.store.set_state(task.id, S.queued, ended, attempt_id=None, next_step=0, resume_commit=None,
                             resume_node=None, answer=None, waiting_for=None)
        self.store.append_event(TaskRequeued(task_id=task.id, reason=reason, from_step=0, kept_ref=kept))
        self.replies.forget(task.id)
