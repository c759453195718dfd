"""The ``Scheduler`` actor: detached, named, async; the only writer of the store.

Each cycle it gathers a picture (queued tasks, running attempts, alive nodes), decides where
queued tasks go, creates ``TaskActor``s with hard node affinity, and reaps finished attempts.
Reports from attempts arrive through ``report``/``at_checkpoint``/``await_*``; a report from an
attempt that is not the task's current one is dropped (a late reply from a dead attempt).

Ray restarts the actor if it dies (``max_restarts=-1``); the new instance rebuilds from the
store and re-attaches to the still-running attempt actors by name, or restarts their tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agent import processes
from agent.config import ProjectConfig, parse_priority
from agent.events import (
    AnswerReceived,
    AttemptEnded,
    CheckpointReady,
    ClarificationRequested,
    DecisionMade,
    EventAdapter,
    PriorityChanged,
    StepStarted,
    TaskCancelled,
    TaskFailed,
    TaskPlaced,
    TaskRequeued,
    TaskSubmitted,
    TerminationReason,
)
from agent.models import ModelError, split_spec
from agent.models.scripted import scripted_model
from agent.prd import PrdError, load_prd, parse_prd_text
from agent.project import ProjectError, open_project
from agent.runner import TaskSpec
from cluster.node_join import hearth_version, refusal
from cluster.placement import PendingLoads, build_snapshot, model_spec, project_policy, slots, with_pending_loads
from cluster.policy import PolicyConfig, decide, feasible
from cluster.policy_model import QueuedTask
from cluster.states import TERMINAL, TaskState
from cluster.store import SYSTEM_WHO, Store, TaskRow, UnknownTask
from cluster.task_actor import NAMESPACE, SCHEDULER_NAME, TaskActor, attempt_actor_name

log = logging.getLogger("hearth.scheduler")
INVENTORY_EVERY_S = 5.0
S = TaskState
ACTIVE = {S.placed, S.running, S.waiting_input, S.awaiting_approval, S.yielding}


class SubmitError(ValueError):
    """A submission that cannot be accepted (bad PRD, unknown project, infeasible model…)."""


class Conflict(ValueError):
    """The request does not fit the task's current state (e.g. an answer to a task that waits for none)."""


class Scheduler:
    def __init__(self, state_dir: str, cycle_s: float = 0.2, policy: dict[str, Any] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.store = Store(self.state_dir / "hearth.db")
        self.cycle_s = cycle_s
        self.running: dict[str, tuple[str, Any, Any]] = {}
        """attempt id → (task id, actor handle, ref of actor.result())."""
        self.decisions: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.wake = asyncio.Event()
        self.policy = PolicyConfig.model_validate(policy or {})
        self.inventories: dict[str, dict[str, Any]] = {}
        self._inventory_at = -INVENTORY_EVERY_S
        self.pending_loads: PendingLoads = {}
        """Model servers planned on a node that its inventory does not show yet."""
        self.preempted_at: dict[str, float] = {}
        self.refused: dict[str, str] = {}
        """Alive nodes that run another Hearth or Ray than the head → why they get no tasks."""
        self._loop_task: asyncio.Task[None] | None = None
        # Ray runs an async actor's __init__ inside its event loop: start cycling right away, so a
        # restarted scheduler (Ray re-runs only __init__) resumes without waiting for a call.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            self._ensure_started()

    # lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> str:
        """Idempotent: rebuild from the store, re-attach attempts, start the scheduling loop.

        Every public method calls it too, because Ray re-runs only ``__init__`` after a restart.
        """
        self._ensure_started()
        return str(self.state_dir)

    def _ensure_started(self) -> None:
        if self._loop_task is None:
            self._reattach()
            self._loop_task = asyncio.get_running_loop().create_task(self._cycle_forever())

    def _reattach(self) -> None:
        """Track every active attempt: re-attach to its actor by name, or treat it as lost.

        Runs at start (a restarted scheduler) and each cycle, so an attempt that somehow went
        untracked (a crash between creating its actor and recording it) can never strand a task.
        """
        tracked = {entry[0] for entry in self.running.values()}
        for task in self.store.tasks(ACTIVE):
            if task.attempt_id is None or task.id in tracked:
                continue
            try:
                actor = ray.get_actor(attempt_actor_name(task.attempt_id), namespace=NAMESPACE)
                self.running[task.attempt_id] = (task.id, actor, actor.result.remote())
            except ValueError:
                self._attempt_lost(task, "the attempt's actor is gone (found on scheduler restart)")

    async def _cycle_forever(self) -> None:
        while True:
            try:
                await self._refresh_inventories()
                self._reattach()
                self._reap()
                await self._expire_approvals()
                self._place()
            except Exception:
                log.exception("scheduling cycle failed")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self.cycle_s)

    # submission ---------------------------------------------------------------------------------
    async def submit(self, project_path: str, prd_path: str | None = None, prd_text: str | None = None,
                     priority: str | int | None = None, model: str | None = None) -> dict[str, Any]:
        self._ensure_started()
        try:
            project = open_project(Path(project_path))
        except (ProjectError, ValueError) as exc:
            raise SubmitError(str(exc)) from None
        config = project.config
        prd_relpath = None
        try:
            if prd_text is not None:
                plan = parse_prd_text(prd_text, source="<request>", filename_hint=prd_path or "")
            elif prd_path is not None:
                path = Path(prd_path)
                path = path if path.is_absolute() else project.path / path
                plan = load_prd(path)
                if path.resolve().is_relative_to(project.path):
                    prd_relpath = str(path.resolve().relative_to(project.path))
            else:
                raise SubmitError("give a PRD: a path (prd_path) or its text (prd_text)")
        except PrdError as exc:
            raise SubmitError(str(exc)) from None
        try:
            wanted = config.clip_priority(None if priority is None else parse_priority(priority))
        except ValueError as exc:
            raise SubmitError(str(exc)) from None
        model = model or config.model
        try:
            runtime, name = split_spec(model)
            if runtime == "scripted":
                scripted_model(name)
        except ModelError as exc:
            raise SubmitError(str(exc)) from None
        if not plan.steps:
            raise SubmitError(f"{plan.source}: every story already passes; nothing to do")
        await self._refresh_inventories(force=not self.inventories)
        missing = self._infeasible(config, model)
        if missing:
            alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            refused = "".join(f"; {why}, so it gets no tasks" for node, why in self.refused.items() if node in alive)
            raise SubmitError(f"no node can ever run this task: {missing}{refused}")
        self.store.put_project(config.name, str(project.path), config.model_dump(mode="json"))
        spec = TaskSpec(task_id="pending", project_path=str(project.path), plan=plan, prd_relpath=prd_relpath,
                        model=model, base_commit=project.head_commit(), config=config)
        submitted = TaskSubmitted(task_id="pending", name=plan.name, steps=[s.id for s in plan.steps],
                                  priority=wanted)
        row = self.store.create_task(project=config.name, name=plan.name, priority=wanted, model=model,
                                     spec=spec.model_dump(mode="json"), submitted=submitted)
        self.wake.set()
        return row.model_dump(mode="json")

    def _infeasible(self, config: ProjectConfig, model: str) -> str | None:
        """What is missing when no node could ever serve ``model`` for this project (None: feasible)."""
        nodes = self._alive_nodes()
        probe = QueuedTask(id="submit-probe", project=config.name, model=model, queued_since=time.time())
        snapshot = build_snapshot(time.time(), nodes, self.inventories, [], [], {})
        snapshot = snapshot.model_copy(update={
            "queued": [probe], "models": {model: model_spec(model)},
            "projects": {config.name: project_policy(config.model_dump(mode="json"))}})
        return feasible(probe, snapshot)

    # placement ----------------------------------------------------------------------------------
    def _alive_nodes(self) -> dict[str, dict[str, Any]]:
        """Nodes tasks may go to: alive, and running the head's Hearth and Ray (never a mismatched box)."""
        return {n["NodeID"]: n for n in ray.nodes() if n.get("Alive") and self._refusal(n) is None}

    def _refusal(self, node: dict[str, Any]) -> str | None:
        reason = refusal(node.get("Labels") or {}, hearth_version(), ray.__version__)
        if reason and node["NodeID"] not in self.refused:
            self.refused[node["NodeID"]] = f"node {node['NodeID'][:12]} ({node.get('NodeManagerAddress')}) {reason}"
            log.warning("refusing node %s (%s): it %s", node["NodeID"][:12], node.get("NodeManagerAddress"), reason)
        return reason

    def _place(self) -> None:
        """One policy cycle: gather a snapshot, ``decide``, apply placements and pre-emptions."""
        queued = self.store.tasks({S.queued})
        if not queued:
            return
        nodes = self._alive_nodes()
        active = self.store.tasks(ACTIVE)
        now = time.time()
        inventories = with_pending_loads(self.inventories, self.pending_loads, now)
        snapshot = build_snapshot(now, nodes, inventories, queued, active, self.preempted_at)
        decisions = decide(snapshot, self.policy)
        by_id = {t.id: t for t in queued}
        busy = {node: sum(t.node_id == node for t in active) for node in nodes}
        for eviction in decisions.evictions:
            self._evict(eviction.node, eviction.model)
        for load in decisions.loads:  # the placed task starts the server; count its VRAM meanwhile
            self.pending_loads[(load.node, load.model)] = (load.gpu_index, load.vram_mib, now)
        for placement in decisions.placements:
            # A yielding victim still holds its slot until its checkpoint: never double-book a node.
            if busy.get(placement.node, 0) >= slots(nodes[placement.node]):
                continue
            self._launch(by_id[placement.task_id], placement.node, placement.gpu_index)
            busy[placement.node] = busy.get(placement.node, 0) + 1
        for preempt in decisions.preemptions:
            victim = self.store.task(preempt.task_id)
            if victim.state == S.running:
                self.store.set_state(victim.id, S.yielding,
                                     message=f"yielding at its next checkpoint for {preempt.for_task}")
                self.preempted_at[victim.id] = snapshot.now
        for task_id, waiting in decisions.waiting.items():
            if by_id[task_id].message != waiting.message:
                self.store.update_task(task_id, message=waiting.message)

    async def _refresh_inventories(self, force: bool = False) -> None:
        """Each alive node's NVML inventory (GPUs, free VRAM), at most every few seconds."""
        if not force and time.monotonic() - self._inventory_at < INVENTORY_EVERY_S:
            return
        self._inventory_at = time.monotonic()
        refs = {}
        for node in self._alive_nodes():
            refs[node] = node_inventory.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)).remote()
        for node, ref in refs.items():
            try:
                self.inventories[node] = await asyncio.wait_for(ref, timeout=10)
            except (TimeoutError, ray.exceptions.RayError):
                self.inventories.pop(node, None)

    def _evict(self, node: str, model: str) -> None:
        """Stop an idle model server on ``node`` (the policy needs its VRAM); forget it at once so
        the next cycle does not plan with it."""
        inventory = self.inventories.get(node)
        if inventory is not None:
            inventory["models"] = [m for m in inventory.get("models", []) if m.get("model") != model]
        release_model.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)).remote(model)
        log.info("evicting %s on node %s", model, node[:12])

    def _launch(self, task: TaskRow, node: str, gpu_index: int | None = None) -> None:
        attempt_no = task.attempts + 1
        attempt_id = f"{task.id}.{attempt_no}-{uuid.uuid4().hex[:6]}"
        resume = task.resume_node == node and task.resume_commit is not None
        start_step = task.next_step if resume else 0
        answer = json.loads(task.answer) if task.answer and resume else None
        actor = TaskActor.options(  # type: ignore[attr-defined]
            name=attempt_actor_name(attempt_id), namespace=NAMESPACE, lifetime="detached",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
        ).remote(task.spec, attempt_id, attempt_no, start_step, task.resume_commit if resume else None, answer,
                 gpu_index)
        self.store.start_attempt(task.id, attempt_id, attempt_no, node)
        self.store.set_state(task.id, S.placed,
                             TaskPlaced(task_id=task.id, attempt_id=attempt_id, node_id=node,
                                        attempt_no=attempt_no),
                             attempts=attempt_no, attempt_id=attempt_id, node_id=node,
                             next_step=start_step, answer=None)
        actor.start.remote()
        self.running[attempt_id] = (task.id, actor, actor.result.remote())

    # reaping ------------------------------------------------------------------------------------
    def _reap(self) -> None:
        if not self.running:
            return
        refs = {entry[2]: attempt for attempt, entry in self.running.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in ready:
            attempt_id = refs[ref]
            task_id, actor, _ = self.running.pop(attempt_id)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:
                self._attempt_lost(self.store.task(task_id), f"{type(exc).__name__}", attempt_id)
                continue
            ray.kill(actor)
            self._finish(task_id, attempt_id, result)

    def _finish(self, task_id: str, attempt_id: str, result: dict[str, Any]) -> None:
        task = self.store.task(task_id)
        if task.attempt_id != attempt_id or task.state in TERMINAL:
            return
        reason = TerminationReason(result["reason"])
        message = result.get("message", "")
        self.store.end_attempt(attempt_id, reason.value)
        ended = AttemptEnded(task_id=task_id, attempt_id=attempt_id, reason=reason, message=message)
        if reason == TerminationReason.completed:
            self.store.set_state(task_id, S.completed, ended, attempt_id=None, next_step=result["next_step"])
        elif reason == TerminationReason.preempted:
            self.store.set_state(task_id, S.queued, ended, attempt_id=None, resume_node=task.node_id,
                                 next_step=result["next_step"], resume_commit=result.get("resume_commit"))
            self.store.append_event(TaskRequeued(task_id=task_id, reason=reason, from_step=result["next_step"]))
        elif reason == TerminationReason.waiting_input:
            parked = {"attempt_id": None, "resume_node": task.node_id, "next_step": result["next_step"],
                      "resume_commit": result.get("resume_commit")}
            if task.answer is not None:
                self.store.set_state(task_id, S.queued, ended, waiting_for=None, **parked)
            else:
                self.store.set_state(task_id, S.waiting_input, ended, **parked)
        elif reason == TerminationReason.cancelled:
            self.store.set_state(task_id, S.cancelled, ended, attempt_id=None)
        elif reason == TerminationReason.error and task.attempts < self._max_attempts(task):
            self._requeue_from_zero(task, ended, reason)
        else:
            self.store.set_state(task_id, S.failed, ended, attempt_id=None, message=message)
            self.store.append_event(TaskFailed(task_id=task_id, reason=reason, message=message))
        self.wake.set()

    def _max_attempts(self, task: TaskRow) -> int:
        return int(task.spec["config"].get("max_attempts", 3))

    def _attempt_lost(self, task: TaskRow, detail: str, attempt_id: str | None = None) -> None:
        attempt_id = attempt_id or task.attempt_id
        if attempt_id is None or task.attempt_id != attempt_id or task.state in TERMINAL:
            return
        alive = self._alive_nodes()
        reason = TerminationReason.node_lost if task.node_id not in alive else TerminationReason.error
        self.store.end_attempt(attempt_id, reason.value)
        ended = AttemptEnded(task_id=task.id, attempt_id=attempt_id, reason=reason, message=detail)
        if task.attempts < self._max_attempts(task):
            self._requeue_from_zero(task, ended, reason)
        else:
            message = f"gave up after {task.attempts} attempts: {detail}"
            self.store.set_state(task.id, S.failed, ended, attempt_id=None, message=message)
            self.store.append_event(TaskFailed(task_id=task.id, reason=reason, message=message))

    def _requeue_from_zero(self, task: TaskRow, ended: AttemptEnded, reason: TerminationReason) -> None:
        self.store.set_state(task.id, S.queued, ended, attempt_id=None, next_step=0, resume_commit=None,
                             resume_node=None, answer=None, waiting_for=None)
        self.store.append_event(TaskRequeued(task_id=task.id, reason=reason, from_step=0))
        future = self.decisions.pop(task.id, None)
        if future is not None:
            future.cancel()

    # reports from attempts ----------------------------------------------------------------------
    def _current(self, attempt_id: str) -> TaskRow | None:
        task_id = attempt_id.split(".", 1)[0]
        try:
            task = self.store.task(task_id)
        except UnknownTask:
            return None
        return task if task.attempt_id == attempt_id and task.state not in TERMINAL else None

    async def report(self, attempt_id: str, raw_event: dict[str, Any]) -> bool:
        """Journal an attempt's event; False (and nothing stored) if the attempt is stale."""
        self._ensure_started()
        task = self._current(attempt_id)
        if task is None:
            return False
        event = EventAdapter.validate_python(raw_event)
        if isinstance(event, StepStarted) and task.state in {S.placed, S.waiting_input, S.awaiting_approval}:
            self.store.set_state(task.id, S.running, event)
        elif isinstance(event, ClarificationRequested):
            self.store.set_state(task.id, S.waiting_input, event, waiting_for=event.question)
        elif isinstance(event, CheckpointReady) and event.needs_approval:
            self.store.set_state(task.id, S.awaiting_approval, event, waiting_for=event.step_id)
        else:
            self.store.append_event(event)
        return True

    async def at_checkpoint(self, attempt_id: str, step_id: str) -> str:
        self._ensure_started()
        task = self._current(attempt_id)
        if task is None:
            return "cancel"
        return "yield" if task.state == S.yielding else "continue"

    async def await_answer(self, attempt_id: str, step_id: str, question: str) -> None:
        """Never blocks: the attempt parks itself (frees its slot) and a new one resumes on the answer."""
        self._ensure_started()
        return None

    async def await_decision(self, attempt_id: str, step_id: str) -> dict[str, Any]:
        self._ensure_started()
        task = self._current(attempt_id)
        if task is None:
            raise Conflict("stale attempt")
        if task.state != S.awaiting_approval:
            # Decided before this call arrived (a fast click, a timeout, or the runner re-asking
            # after a scheduler restart): hand over the decision that was journaled.
            made = self._decision_made(task.id, attempt_id, step_id)
            if made is not None:
                return made
        future = self.decisions.setdefault(task.id, asyncio.get_running_loop().create_future())
        return await future

    def _decision_made(self, task_id: str, attempt_id: str, step_id: str) -> dict[str, Any] | None:
        """The decision on the attempt's latest checkpoint of ``step_id``, if one was journaled: the
        task's last checkpoint-or-decision event is then that decision."""
        event = self.store.last_event(task_id, "checkpoint_ready", "decision_made")
        if isinstance(event, DecisionMade) and event.attempt_id == attempt_id and event.step_id == step_id:
            return {"approve": event.approve, "reason": event.reason, "who": event.who}
        return None

    async def _expire_approvals(self) -> None:
        """Take the project's ``approval_timeout_action`` on checkpoints nobody decided in time."""
        now = time.time()
        for task in self.store.tasks({S.awaiting_approval}):
            timeout = task.spec["config"].get("approval_timeout_s")
            if not timeout:
                continue
            checkpoint = self.store.last_event(task.id, "checkpoint_ready")
            if now - (checkpoint.at if checkpoint else task.updated_at) < timeout:
                continue
            action = task.spec["config"].get("approval_timeout_action", "approve")
            who = f"{SYSTEM_WHO} (approval timeout)"
            if action == "cancel":
                await self.cancel(task.id, who=who)
            else:
                await self.decide(task.id, approve=action == "approve", who=who,
                                  reason=f"no decision within {timeout:g} s; the project's default is {action}")

    # people ------------------------------------------------------------------------------------
    async def answer(self, task_id: str, text: str, who: str) -> dict[str, Any]:
        """Record a person's answer; the task is re-queued (at resume priority) to continue the step.

        If the attempt that asked has not finished parking yet, the answer waits in the store and
        ``_finish`` re-queues the task when it does, so two attempts never share a workspace.
        """
        self._ensure_started()
        task = self.store.task(task_id)
        if task.state != S.waiting_input or task.answer is not None:
            raise Conflict(f"{task_id} is {task.state.value}, not waiting for an answer")
        step_id = getattr(self.store.last_event(task_id, "clarification_requested"), "step_id", "")
        received = AnswerReceived(task_id=task_id, attempt_id=task.attempt_id, step_id=step_id, answer=text,
                                  who=who)
        answer = json.dumps({"text": text, "who": who})
        if task.attempt_id is None:
            self.store.set_state(task_id, S.queued, received, answer=answer, waiting_for=None)
        else:
            self.store.update_task(task_id, answer=answer)
            self.store.append_event(received)
        self.wake.set()
        return self.store.task(task_id).model_dump(mode="json")

    async def decide(self, task_id: str, approve: bool, reason: str, who: str) -> dict[str, Any]:
        self._ensure_started()
        task = self.store.task(task_id)
        if task.state != S.awaiting_approval:
            raise Conflict(f"{task_id} is {task.state.value}, not awaiting approval")
        self.store.set_state(task_id, S.running,
                             DecisionMade(task_id=task_id, attempt_id=task.attempt_id,
                                          step_id=task.waiting_for or "", approve=approve, reason=reason,
                                          who=who), waiting_for=None)
        future = self.decisions.setdefault(task_id, asyncio.get_running_loop().create_future())
        if not future.done():
            future.set_result({"approve": approve, "reason": reason, "who": who})
        self.decisions.pop(task_id, None)
        return self.store.task(task_id).model_dump(mode="json")

    # user commands ------------------------------------------------------------------------------
    async def cancel(self, task_id: str, who: str = "user") -> dict[str, Any]:
        self._ensure_started()
        task = self.store.task(task_id)
        if task.state in TERMINAL:
            raise Conflict(f"{task_id} is already {task.state.value}")
        if task.attempt_id and task.attempt_id in self.running:
            _, actor, _ = self.running.pop(task.attempt_id)
            ray.kill(actor)
            self.store.end_attempt(task.attempt_id, TerminationReason.cancelled.value)
        self.store.set_state(task_id, S.cancelled, TaskCancelled(task_id=task_id, who=who), attempt_id=None)
        return self.store.task(task_id).model_dump(mode="json")

    async def restart(self, task_id: str) -> dict[str, Any]:
        self._ensure_started()
        task = self.store.task(task_id)
        if task.state not in {S.failed, S.cancelled}:
            raise Conflict(f"{task_id} is {task.state.value}; only failed or cancelled tasks restart")
        self.store.set_state(task_id, S.queued,
                             TaskRequeued(task_id=task_id, reason=TerminationReason.cancelled, from_step=0),
                             attempts=0, next_step=0, resume_commit=None, resume_node=None, message="")
        self.wake.set()
        return self.store.task(task_id).model_dump(mode="json")

    async def set_priority(self, task_id: str, priority: str | int) -> dict[str, Any]:
        self._ensure_started()
        task = self.store.task(task_id)
        try:
            value = ProjectConfig.model_validate(task.spec["config"]).clip_priority(parse_priority(priority))
        except ValueError as exc:
            raise SubmitError(str(exc)) from None
        self.store.update_task(task_id, priority=value)
        self.store.append_event(PriorityChanged(task_id=task_id, priority=value))
        self.wake.set()
        return self.store.task(task_id).model_dump(mode="json")

    async def preempt(self, task_id: str) -> dict[str, Any]:
        """Ask a running task to yield at its next checkpoint (never mid-step)."""
        self._ensure_started()
        task = self.store.task(task_id)
        if task.state != S.running:
            raise Conflict(f"{task_id} is {task.state.value}; only running tasks can be pre-empted")
        self.store.set_state(task_id, S.yielding)
        return self.store.task(task_id).model_dump(mode="json")

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node Ray knows, with its inventory (GPUs, VRAM) and the tasks running there."""
        self._ensure_started()
        running: dict[str, list[str]] = {}
        for task in self.store.tasks(ACTIVE):
            running.setdefault(task.node_id or "", []).append(task.id)
        result = []
        for node in ray.nodes():
            node_id = node["NodeID"]
            inv: dict[str, Any] = {"gpus": []}
            if node.get("Alive"):
                try:
                    ref = node_inventory.options(
                        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)).remote()
                    inv = await asyncio.wait_for(ref, timeout=10)
                except (TimeoutError, ray.exceptions.RayError):
                    pass
            gpus = inv.get("gpus", [])
            result.append({
                "node_id": node_id, "alive": bool(node.get("Alive")), "address": node.get("NodeManagerAddress", ""),
                "gpus": gpus, "vram_total_mib": sum(g["total_vram_mib"] for g in gpus),
                "vram_free_mib": sum(g["free_vram_mib"] for g in gpus), "nvml": inv.get("nvml", "unknown"),
                "slots": slots(node), "models": inv.get("models", []),
                "labels": node.get("Labels", {}), "running": running.get(node_id, []),
                "refused": self._refusal(node),
            })
        return result

    async def pid(self) -> int:
        return os.getpid()

    async def policy_config(self) -> dict[str, Any]:
        """The cluster-wide policy in force (``[scheduler]`` of the head's head.toml)."""
        return self.policy.model_dump()

    async def ping(self) -> str:
        self._ensure_started()
        return "ok"


@ray.remote(num_cpus=0)
def release_model(model: str) -> None:
    """Stop this node's server for the ``docker:`` model ``model`` (an eviction)."""
    from agent.models import split_spec
    from agent.models.docker_runtime import DockerModelRuntime

    runtime, name = split_spec(model)
    if runtime == "docker":
        with DockerModelRuntime() as models:
            models.release(name)


@ray.remote(num_cpus=0)
def node_inventory() -> dict[str, Any]:
    from cluster.nodes import inventory

    return inventory().model_dump(mode="json")


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
