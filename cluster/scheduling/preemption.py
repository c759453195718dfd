"""Pre-emption: the cheapest set of running tasks whose release lets a waiting task fit.

Victims are only asked to yield at their next checkpoint (``Preempt``); nothing is ever killed. The
rules are in ``cluster/scheduling/policy.py``'s docstring.
"""

from __future__ import annotations

from cluster.scheduling.cycle import (
    Cycle,
    CycleGpu,
    CycleNode,
    CycleServer,
    VictimPlan,
    victim_order,
    victims_cost,
)
from cluster.scheduling.types import ModelSpec, Preempt, QueuedTask, RunningTask, Waiting, WaitReason


def candidate(cycle: Cycle, task: RunningTask, urgency: float) -> bool:
    if task.id in cycle.claimed:
        return False
    return task.yielding or (task.id in cycle.cooled and urgency - task.priority > cycle.cfg.preempt_margin)


def find_victims(
    cycle: Cycle, model: str, spec: ModelSpec, scope: list[CycleNode], urgency: float, home: str | None
) -> VictimPlan | None:
    """Cheapest set of running tasks whose release would let the task fit on one node (and GPU).

    Where the model is already served, only a slot of such a server: evicting other work to start one
    more copy costs a reload now and, measured on the benchmark's overloaded trace, throughput later.
    """
    margin, cpus, servers = cycle.cfg.preempt_margin, cycle.cfg.task_cpus, cycle.by_model.get(model, [])
    nodes = {n.id for n in scope if n.yielding or urgency - n.floor > margin}
    plans = [p for s in servers if s.node.id in nodes and (p := _slot_plan(cycle, s, urgency))]
    plans = [p for p in plans if p.node.cpus + cpus * len(p.victims) >= cpus]
    if spec.needs_gpu and not any(s.node in scope for s in servers):  # not served: VRAM for a server
        plans = [
            p
            for n in scope
            if n.id in nodes and model not in n.servers
            for g in n.gpus
            if (p := _gpu_plan(cycle, n, g, spec.vram_mib, urgency)) and n.cpus + cpus * len(p.victims) >= cpus
        ]
    if not spec.needs_gpu and not plans:  # a CPU model: what it lacks is a task slot (CPU) on a node
        plans = [p for n in scope if n.id in nodes and (p := _cpu_plan(cycle, n, model, urgency))]
    return min(plans, key=lambda p: (*p.cost, p.node.id != home, p.node.id), default=None)


def _cpu_plan(cycle: Cycle, node: CycleNode, model: str, urgency: float) -> VictimPlan | None:
    """The cheapest running tasks on ``node`` whose release frees a CPU for a task needing no GPU."""
    cpus = cycle.cfg.task_cpus
    server = node.servers.get(model)
    if node.cpus >= cpus or (server is not None and server.held_for is not None):
        return None
    eligible = sorted((t for t in node.tasks if t.id not in cycle.claimed and candidate(cycle, t, urgency)),
                      key=victim_order)
    victims: list[RunningTask] = []
    free = node.cpus + cpus * sum(1 for t in node.tasks if t.yielding and t.id not in cycle.claimed)
    for victim in eligible:
        if free >= cpus:
            break
        if not victim.yielding:
            victims.append(victim)
            free += cpus
    if free < cpus or not victims:
        return None
    return VictimPlan(node, victims, None, [], victims_cost(victims))


def _slot_plan(cycle: Cycle, server: CycleServer, urgency: float) -> VictimPlan | None:
    if server.held_for is not None:
        return None
    if server.victims is None:  # its possible victims, best first; built once a cycle, on demand
        eligible = (t for t in server.tasks if t.yielding or t.id in cycle.cooled)
        server.victims = sorted(eligible, key=victim_order)
    for victim in server.victims:
        if victim.id in cycle.claimed:
            continue
        if not candidate(cycle, victim, urgency):
            return None  # the first one left is the best: if it will not do, none will
        return VictimPlan(server.node, [victim], None, [server], victims_cost([victim]))
    return None


def _gpu_plan(cycle: Cycle, node: CycleNode, gpu: CycleGpu, need: int, urgency: float) -> VictimPlan | None:
    if gpu.held_for is not None or gpu.total < need:
        return None
    free = gpu.headroom + sum(s.vram for s in gpu.servers if s.idle())
    freeable = [  # servers that turn idle once all their tasks yield
        s
        for s in gpu.servers
        if s.used
        and not s.planned
        and s.held_for is None
        and len(s.tasks) == s.used
        and all(candidate(cycle, t, urgency) for t in s.tasks)
    ]
    chosen: list[CycleServer] = []
    for server in sorted(freeable, key=lambda s: (victims_cost(s.tasks), s.last_used)):
        if free >= need:
            break
        free += server.vram
        chosen.append(server)
    if free < need or not chosen:
        return None
    victims = [t for s in chosen for t in s.tasks]
    return VictimPlan(node, victims, gpu, chosen + [s for s in gpu.servers if s.idle()], victims_cost(victims))


def claim_victims(cycle: Cycle, task: QueuedTask, plan: VictimPlan) -> Waiting:
    cycle.claimed.update(t.id for t in plan.victims)
    if plan.gpu is not None:  # a new server goes there: nobody else may load onto it this cycle
        plan.gpu.held_for = task.id
    for server in plan.servers:
        server.held_for = task.id
    victims = sorted(plan.victims, key=victim_order)
    cycle.preemptions.extend(
        Preempt(task_id=v.id, for_task=task.id, node=plan.node.id, at_checkpoint=v.at_checkpoint)
        for v in victims
        if not v.yielding
    )
    message = f"waiting for {', '.join(t.id for t in victims)} to yield at a checkpoint on {plan.node.id}"
    return Waiting(reason=WaitReason.waiting_for_preemption, message=message)

