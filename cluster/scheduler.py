"""The ``Scheduler`` actor: detached, named, async; the only writer of the store.

Each cycle it gathers a picture (queued tasks, running attempts, alive nodes), asks the pure policy
(``cluster/scheduling/``) where queued tasks go, launches attempts there, and reaps finished ones.
Its concerns live beside it, one module each: ``attempts`` (launch, reap, end by reason, re-attach),
``code_calls`` (attempts' code and files to and from the head, inherited),
``replies`` (people's answers and decisions, approval timeouts), ``inventories`` (nodes, GPUs, model
servers), ``submission`` (checking a submission). This class holds them together and is the Ray
surface: every public method is an RPC, and every one returns a pydantic model.

Ray restarts the actor if it dies (``max_restarts=-1``) and re-runs only ``__init__``, inside the
actor's event loop: start-up (rebuild from the store, re-attach to still-running attempt actors by
name, start cycling) happens there, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import ray

from agent import processes
from agent.artifacts import ArtifactRef
from agent.config import ProjectConfig, parse_priority
from agent.events import (
    CheckpointReady,
    ClarificationRequested,
    Event,
    EventAdapter,
    PriorityChanged,
    StepStarted,
    TaskCancelled,
    TaskRequeued,
    TerminationReason,
)
from agent.runner import Decision, Verdict
from cluster.artifact_store import HeadArtifactStore
from cluster.attempts import ACTIVE, Attempts
from cluster.code_calls import AttemptCodeCalls
from cluster.errors import Conflict, SubmitError
from cluster.inventories import Inventories
from cluster.nodes import NodeView
from cluster.project_code import ProjectCode
from cluster.replies import Replies
from cluster.scheduling.policy import PolicyConfig, decide, feasible
from cluster.scheduling.snapshot import RayNode, build_snapshot, model_spec, project_policy, slots, step_progress
from cluster.scheduling.states import TERMINAL, TaskState
from cluster.scheduling.types import QueuedTask
from cluster.store import Store, TaskRow
from cluster.submission import prepare_submission
from cluster.task_actor import NAMESPACE, SCHEDULER_NAME

log = logging.getLogger("hearth.scheduler")
S = TaskState


class Scheduler(AttemptCodeCalls):
    def __init__(self, state_dir: str, cycle_s: float = 0.2, policy: dict[str, Any] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.store = Store(self.state_dir / "hearth.db")
        self.cycle_s = cycle_s
        self.policy = PolicyConfig.model_validate(policy or {})
        self.wake = asyncio.Event()
        self.inventories = Inventories()
        self.replies = Replies(self.store, self.wake)
        self.code = ProjectCode(self.state_dir)
        """Each project's repository and the files people read, kept on the head (cluster/project_code.py)."""
        self.attempts = Attempts(self.store, self.wake, self.inventories, self.replies, self.code)
        self.preempted_at: dict[str, float] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self.artifacts = HeadArtifactStore(self.state_dir)
        with contextlib.suppress(RuntimeError):  # outside an event loop (not under Ray): start() does it
            asyncio.get_running_loop()
            self.start_once()

    def start_once(self) -> None:
        if self._loop_task is None:
            self.attempts.start()
            self._loop_task = asyncio.get_running_loop().create_task(self._cycle_forever())

    async def start(self) -> str:
        """Idempotent: the state dir (start-up already ran in ``__init__``)."""
        self.start_once()
        return str(self.state_dir)

    async def _cycle_forever(self) -> None:
        while True:
            try:
                await self.inventories.refresh()
                self.attempts.reattach()
                self.attempts.reap()
                await self.replies.expire_approvals(self.cancel)
                self.attempts.hosts.trim(*self._place())
            except Exception:
                log.exception("scheduling cycle failed")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self.cycle_s)

    # submission ---------------------------------------------------------------------------------
    async def submit(self, project_path: str, prd_path: str | None = None, prd_text: str | None = None,
                     priority: str | int | None = None, model: str | None = None) -> TaskRow:
        """``project_path``: the project's directory on the head, or a git URL the head can fetch."""
        # The head fetches the project into its mirror (blocking git: off the event loop).
        config, spec, submitted, wanted = await asyncio.to_thread(
            prepare_submission, self.code, project_path, prd_path, prd_text, priority, model)
        await self.inventories.refresh(force=not self.inventories.by_node)
        missing = self._infeasible(config, spec.model, self.inventories.recent_alive_nodes())
        if missing:  # refused only on a fresh view of the nodes: one may have joined a moment ago
            missing = self._infeasible(config, spec.model, self.inventories.alive_nodes())
        if missing:
            refused = "".join(f"; {why}, so it gets no tasks" for why in self.inventories.refused_nodes())
            raise SubmitError(f"no node can ever run this task: {missing}{refused}")
        self.store.put_project(spec.project_path, config)
        row = self.store.create_task(project=config.name, name=spec.plan.name, priority=wanted, model=spec.model,
                                     spec=spec, submitted=submitted)
        self.wake.set()
        return row

    def _infeasible(self, config: ProjectConfig, model: str, nodes: dict[str, RayNode]) -> str | None:
        """What is missing when no node could ever serve ``model`` for this project (None: feasible)."""
        probe = QueuedTask(id="submit-probe", project=config.name, model=model, queued_since=time.time())
        snapshot = build_snapshot(time.time(), nodes, self.inventories.by_node, [], [], {})
        snapshot = snapshot.model_copy(update={
            "queued": [probe], "models": {model: model_spec(model)},
            "projects": {config.name: project_policy(config)}})
        return feasible(probe, snapshot)

    # placement ----------------------------------------------------------------------------------
    def _place(self) -> tuple[int, set[str]]:
        """One policy cycle: gather a snapshot, ``decide``, apply placements and pre-emptions.
        Returns how many tasks are still queued, and the nodes tasks may go to (for the host pool)."""
        queued = self.store.tasks({S.queued})
        if not queued:
            return 0, set()
        nodes = self.inventories.recent_alive_nodes()
        active = self.store.tasks(set(ACTIVE))
        now = time.time()
        progress = {t.id: step_progress(t, self.store.last_event(t.id, "step_started", "step_completed"))
                    for t in active if t.node_id and t.state in (S.running, S.yielding)}
        snapshot = build_snapshot(now, nodes, self.inventories.with_planned(now), queued, active, self.preempted_at,
                                  progress)
        decisions = decide(snapshot, self.policy)
        by_id = {t.id: t for t in queued}
        busy = {node: sum(t.node_id == node for t in active) for node in nodes}
        for eviction in decisions.evictions:
            self.inventories.evict(eviction.node, eviction.model)
        for load in decisions.loads:  # the placed task starts the server; count its VRAM meanwhile
            self.inventories.plan_load(load.node, load.model, load.gpu_index, load.vram_mib, now)
        placed = 0
        # The snapshot's node view may be a second old: launch only on nodes alive now (a box that
        # just died would take the attempt, and its host could never be scheduled there).
        alive_now = self.inventories.alive_nodes() if decisions.placements else nodes
        for placement in decisions.placements:
            # A yielding victim still holds its slot until its checkpoint: never double-book a node.
            if placement.node not in alive_now or busy.get(placement.node, 0) >= slots(nodes[placement.node]):
                continue
            self.attempts.launch(by_id[placement.task_id], placement.node, placement.gpu_index)
            busy[placement.node] = busy.get(placement.node, 0) + 1
            placed += 1
        for preempt in decisions.preemptions:
            victim = self.store.task(preempt.task_id)
            if victim.state == S.running:
                self.store.set_state(victim.id, S.yielding,
                                     message=f"yielding at its next checkpoint for {preempt.for_task}")
                self.preempted_at[victim.id] = snapshot.now
        for task_id, waiting in decisions.waiting.items():
            if by_id[task_id].message != waiting.message:
                self.store.update_task(task_id, message=waiting.message)
        return len(queued) - placed, set(nodes)

    # reports from attempts ----------------------------------------------------------------------
    async def report(self, attempt_id: str, event: Event | dict[str, Any]) -> bool:
        """Journal an attempt's event; False (and nothing stored) if the attempt is stale."""
        task = self.attempts.current(attempt_id)
        if task is None:
            return False
        event = EventAdapter.validate_python(event)
        if isinstance(event, StepStarted) and task.state in {S.placed, S.waiting_input, S.awaiting_approval}:
            self.store.set_state(task.id, S.running, event, answer=None)  # the attempt has the answer now
        elif isinstance(event, ClarificationRequested):
            self.store.set_state(task.id, S.waiting_input, event, waiting_for=event.question)
        elif isinstance(event, CheckpointReady) and event.needs_approval:
            self.store.set_state(task.id, S.awaiting_approval, event, waiting_for=event.step_id)
        else:
            self.store.append_event(event)
        return True

    async def store_artifact(self, attempt_id: str, ref: dict[str, Any], chunks: list[Any]) -> dict[str, Any]:
        """Write an attempt's artifact (chunks: Ray refs of its bytes) into the head's store."""
        if self.attempts.current(attempt_id) is None:
            raise Conflict("stale attempt: artifact dropped")
        stored = await self.artifacts.receive(ArtifactRef.model_validate(ref), chunks)
        return stored.model_dump(mode="json")

    async def at_checkpoint(self, attempt_id: str, step_id: str) -> Verdict:
        task = self.attempts.current(attempt_id)
        if task is None:
            return "cancel"
        return "yield" if task.state == S.yielding else "continue"

    async def await_decision(self, attempt_id: str, step_id: str) -> Decision:
        task = self.attempts.current(attempt_id)
        if task is None:
            raise Conflict("stale attempt")
        return await self.replies.await_decision(task, attempt_id, step_id)

    # people -------------------------------------------------------------------------------------
    async def answer(self, task_id: str, text: str, who: str) -> TaskRow:
        return self.replies.answer(task_id, text, who)

    async def approve_or_reject(self, task_id: str, approve: bool, reason: str, who: str,
                                finish: str = "") -> TaskRow:
        return self.replies.approve_or_reject(task_id, approve, reason, who, finish)

    async def cancel(self, task_id: str, who: str = "user") -> TaskRow:
        task = self.store.task(task_id)
        if task.state in TERMINAL:
            raise Conflict(f"{task_id} is already {task.state.value}")
        self.attempts.stop(task)
        return self.store.set_state(task_id, S.cancelled, TaskCancelled(task_id=task_id, who=who), attempt_id=None)

    async def restart(self, task_id: str) -> TaskRow:
        task = self.store.task(task_id)
        if task.state not in {S.failed, S.cancelled}:
            raise Conflict(f"{task_id} is {task.state.value}; only failed or cancelled tasks restart")
        row = self.store.set_state(task_id, S.queued,
                                   TaskRequeued(task_id=task_id, reason=TerminationReason.cancelled, from_step=0),
                                   attempts=0, next_step=0, resume_commit=None, resume_node=None, message="")
        self.wake.set()
        return row

    async def set_priority(self, task_id: str, priority: str | int) -> TaskRow:
        task = self.store.task(task_id)
        try:
            value = task.spec.config.clip_priority(parse_priority(priority))
        except ValueError as exc:
            raise SubmitError(str(exc)) from None
        self.store.update_task(task_id, priority=value)
        self.store.append_event(PriorityChanged(task_id=task_id, priority=value))
        self.wake.set()
        return self.store.task(task_id)

    async def nodes(self) -> list[NodeView]:
        """Every node Ray knows, with its inventory (GPUs, VRAM) and the tasks running there."""
        running: dict[str, list[str]] = {}
        for task in self.store.tasks(set(ACTIVE)):
            running.setdefault(task.node_id or "", []).append(task.id)
        return await self.inventories.views(running)

    async def pid(self) -> int:
        return os.getpid()

    async def policy_config(self) -> dict[str, Any]:
        """The cluster-wide policy in force (``[scheduler]`` of the head's head.toml)."""
        return self.policy.model_dump()

    async def ping(self) -> str:
        return "ok"


# Pinned to the head node: the store lives there, and a worker's death must not take the scheduler.
SchedulerActor: Any = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1,
                                 resources={"node:__internal_head__": 0.001})(Scheduler)


def get_or_create_scheduler(state_dir: str, policy: dict[str, Any] | None = None) -> Any:
    """The cluster's scheduler handle, creating the detached actor on the head if needed."""
    handle = SchedulerActor.options(
        name=SCHEDULER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_concurrency=1000,
    ).remote(state_dir, 0.2, policy)
    ray.get(handle.start.remote())
    return handle


def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout_s`` passes (for CLIs and tests)."""
    return processes.wait_until(predicate, timeout_s, interval_s)
