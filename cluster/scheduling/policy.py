"""Pure scheduling policy: ``decide(snapshot) -> Decisions``. No Ray, no I/O, no clock but ``snapshot.now``.

Priority (``docs/scheduling.md`` has a worked example)::

    urgency   = clip(task.priority if given else project.base_priority, 0, project.max_priority)
                + (resume_bonus if the task was re-queued after a human answer else 0)
    effective = min(urgency + seconds_queued / aging_s, priority_ceiling)

The queue is served by effective priority, highest first; ties (notably every task at the ceiling) go
to the oldest ``queued_since``, then the smallest id. The ceiling lies above every urgency, so a task
that waited ``(ceiling - urgency) * aging_s`` is behind only older tasks: nothing starves.

Placement of each task, in that order (one server per model and node; a model lives on ONE GPU):

1. its preferred node (its sandbox snapshot is there) if that node can take it at all, else
2. a node where the model is loaded with a free slot (the server with the most free slots), else
3. a GPU whose free VRAM fits the model (best fit: least VRAM left over), else
4. a GPU where evicting IDLE servers (no request, no task) makes room: servers no queued task wants
   first, then least recently used; fewest evictions wins.

Never over a GPU's VRAM (loaded + planned <= total, and <= what NVML reports free), a server's slots,
a project's ``max_concurrent`` or ``allowed_nodes``; each task also needs ``task_cpus`` on its node.

Pre-emption, only for a task that could not be placed and has waited ``preempt_after_s``: candidate
victims are running tasks placed at a priority more than ``preempt_margin`` below the waiting task's
*urgency* (aging orders the queue, but waiting long does not entitle a task to push running work aside:
any backlog would churn), not pre-empted in the last ``preempt_cooldown_s``. The policy takes the
cheapest set whose release makes the task fit on one node: a slot of a server of its model if one is
loaded (never a second copy), else VRAM for a new server; the lowest highest-priority victim, then the
fewest victims, at-checkpoint tasks first. Tasks already yielding count as free. The GPU is then held
for the task for the rest of the cycle. If no set helps, nobody is disturbed. Victims get ``Preempt``:
they yield at their next checkpoint. Nothing is ever killed.
"""

from __future__ import annotations

import heapq
import math
import operator
from dataclasses import dataclass, field
from itertools import accumulate, islice

from cluster.scheduling.cycle import Cycle, CycleNode
from cluster.scheduling.feasibility import feasible
from cluster.scheduling.preemption import claim_victims, find_victims
from cluster.scheduling.types import (
    Decisions,
    ModelSpec,
    PolicyConfig,
    ProjectPolicy,
    QueuedTask,
    Snapshot,
    Waiting,
    WaitReason,
)

__all__ = ["PolicyConfig", "decide", "effective_priority", "feasible", "urgency"]


def urgency(task: QueuedTask, project: ProjectPolicy, config: PolicyConfig) -> float:
    """The task's own priority: suggestion (else project base) clipped to the cap, plus resume bonus."""
    asked = project.base_priority if task.priority is None else task.priority
    return min(max(asked, 0), project.max_priority) + (config.resume_bonus if task.resumed_after_answer else 0.0)


def effective_priority(task: QueuedTask, project: ProjectPolicy, now: float, config: PolicyConfig) -> float:
    """``min(urgency + seconds queued / aging_s, priority_ceiling)``: the order the queue is served in."""
    waited = max(0.0, now - task.queued_since)
    return min(urgency(task, project, config) + waited / config.aging_s, config.priority_ceiling)



@dataclass(slots=True)
class _Group:
    """Queued tasks of one project that want one model: they share every answer but their priority."""

    project: str
    limit: int
    base: int
    cap: int
    model: str
    spec: ModelSpec
    scope: list[CycleNode]
    key: tuple[str, tuple[str, ...]]
    members: list[tuple[float, float, str, float, QueuedTask]] = field(default_factory=list)
    """``(-effective, queued_since, id, urgency, task)``, sorted: the group's queue order."""
    best_urgency_from: list[float] = field(default_factory=list)


def _group(cycle: Cycle, task: QueuedTask) -> _Group | None:
    project, spec = cycle.snap.projects.get(task.project), cycle.snap.models.get(task.model)
    if project is None or spec is None:
        return None
    scope_key, scope = cycle.scope[task.project]
    base, cap = min(project.base_priority, project.max_priority), project.max_priority
    return _Group(task.project, project.max_concurrent, base, cap, task.model, spec, scope, (task.model, scope_key))


_ID, _URGENCY = operator.itemgetter(2), operator.itemgetter(3)
_UNSEEN = _Group("", 0, 0, 0, "", ModelSpec(vram_mib=0, max_concurrent=1), [], ("", ()))


def decide(snapshot: Snapshot, config: PolicyConfig | None = None) -> Decisions:
    """One scheduling cycle over the whole queue; the module docstring has the rules."""
    cycle = Cycle(snapshot, config or PolicyConfig())
    queue = _rank_queue(cycle)  # each task's effective priority, in groups of one project and model
    _serve_in_order(cycle, queue)  # place each task, or find it victims, or say why it waits
    return Decisions.model_construct(  # every part was built from validated input: no second validation
        placements=cycle.placements,
        loads=cycle.loads,
        evictions=cycle.evictions,
        preemptions=cycle.preemptions,
        waiting=queue.waiting,
        priorities=queue.priorities,
    )


@dataclass(slots=True)
class _Queue:
    groups: list[_Group]
    """Groups whose project and model are known, each sorted in queue order."""
    priorities: dict[str, float]
    """Task id → effective priority."""
    waiting: dict[str, Waiting]
    """Task id → why it stays queued (filled in as the cycle goes)."""


def _rank_queue(cycle: Cycle) -> _Queue:
    """Each queued task's effective priority, and the tasks grouped by (project, model) in queue order."""
    snapshot, cfg = cycle.snap, cycle.cfg
    waiting: dict[str, Waiting] = {}
    priorities: dict[str, float] = {}
    groups: dict[tuple[str, str], _Group | None] = {}
    refused: dict[tuple[str, str], Waiting] = {}
    now, aging, ceiling, bonus = snapshot.now, cfg.aging_s, cfg.priority_ceiling, cfg.resume_bonus
    for task in snapshot.queued:  # hot: ~10,000 tasks a cycle, so effective_priority() is inlined
        task_id, since = task.id, task.queued_since
        group = groups.get(key := (task.project, task.model), _UNSEEN)
        if group is _UNSEEN:
            group = groups[key] = _group(cycle, task)
        if group is None:  # unknown project or model
            if key not in refused:
                refused[key] = Waiting(reason=WaitReason.infeasible, message=feasible(task, snapshot) or "")
            waiting[task_id] = refused[key]
            continue
        asked = task.priority
        urgent: float = group.base if asked is None else (0 if asked < 0 else asked if asked < group.cap else group.cap)
        if task.resumed_after_answer:
            urgent += bonus
        effective = urgent + (now - since) / aging if now > since else urgent
        if effective > ceiling:
            effective = ceiling
        priorities[task_id] = effective
        group.members.append((-effective, since, task_id, urgent, task))
    if len(priorities) + len(waiting) != len(snapshot.queued):
        raise ValueError("queued task ids must be unique")
    live = [g for g in groups.values() if g is not None]
    for group in live:
        group.members.sort()  # ids are unique: tuples never compare past them
        group.best_urgency_from = list(accumulate(map(_URGENCY, reversed(group.members)), max))[::-1]
    return _Queue(live, priorities, waiting)


def _serve_in_order(cycle: Cycle, queue: _Queue) -> None:
    """Serve the groups' heads highest first.

    A k-way merge of the sorted groups, so the order is exactly (effective desc, queued_since, id) over
    the whole queue. Room only shrinks within a cycle, so a group that found none stays blocked, and a
    pre-emption search that failed at some urgency fails at every lower one: once neither can change,
    the rest of the group gets its reason in one go.
    """
    nodes = cycle.nodes.values()
    gate = -math.inf if any(n.yielding for n in nodes) else min((n.floor for n in nodes), default=math.inf)
    gate += cycle.cfg.preempt_margin
    live, waiting, priorities = queue.groups, queue.waiting, queue.priorities
    cycle.wanted = {g.model for g in live}
    heads = [(*group.members[0][:3], 0, index) for index, group in enumerate(live)]
    heapq.heapify(heads)
    while heads:
        *_, position, index = heapq.heappop(heads)
        group = live[index]
        _, _, task_id, urgent, task = group.members[position]
        if (reason := _serve(cycle, group, task, urgent, priorities[task_id], gate)) is not None:
            waiting[task_id] = reason
        position += 1
        if position < len(group.members):
            if (settled := _settled(cycle, group, position, gate)) is None:
                heapq.heappush(heads, (*group.members[position][:3], position, index))
            else:
                waiting.update(dict.fromkeys(map(_ID, islice(group.members, position, None)), settled))


def _serve(
    cycle: Cycle, group: _Group, task: QueuedTask, urgent: float, priority: float, gate: float
) -> Waiting | None:
    """Place one task, or find it victims, or say why it waits (``None``: placed)."""
    if (limited := _settled(cycle, group, None, gate)) is not None:
        return limited
    blocked = cycle.blocked.get(group.key)
    if blocked is None:
        option = cycle.option(group.model, group.spec, group.scope, task.preferred_node)
        if option is not None:
            cycle.place(task, priority, option, group.spec)
            return None
        blocked = cycle.blocked[group.key] = cycle.blocked_reason(task, group.spec, group.scope)
        if blocked.reason in (WaitReason.infeasible, WaitReason.no_node):
            cycle.hopeless[group.key] = math.inf
    if urgent > cycle.hopeless.get(group.key, gate) and task.queued_since <= cycle.patient_since:
        plan = find_victims(cycle, group.model, group.spec, group.scope, urgent, task.preferred_node)
        if plan is not None:
            return claim_victims(cycle, task, plan)
        cycle.hopeless[group.key] = urgent
    return blocked


def _settled(cycle: Cycle, group: _Group, position: int | None, gate: float) -> Waiting | None:
    """The reason every member of ``group`` from ``position`` on gets this cycle, if nothing can change it."""
    if cycle.project_load[group.project] >= group.limit:
        return cycle.limit_reason(group.project, group.limit)
    blocked = cycle.blocked.get(group.key)
    if position is None or blocked is None:
        return None
    return blocked if group.best_urgency_from[position] <= cycle.hopeless.get(group.key, gate) else None
