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

from cluster.policy_model import (
    Decisions,
    Eviction,
    ModelLoad,
    ModelSpec,
    NodeState,
    Placement,
    PolicyConfig,
    Preempt,
    ProjectPolicy,
    QueuedTask,
    RunningTask,
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


def _allowed(node: NodeState, patterns: list[str]) -> bool:
    return not patterns or any(
        p == node.id or ("=" in p and node.labels.get(p.partition("=")[0]) == p.partition("=")[2]) for p in patterns
    )


def feasible(task: QueuedTask, snapshot: Snapshot) -> str | None:
    """``None`` if some node (alive or not) could ever serve the task, else what is missing, for the user."""
    spec, project = snapshot.models.get(task.model), snapshot.projects.get(task.project)
    if spec is None:
        return f"unknown model {task.model!r}; the catalogue has {', '.join(sorted(snapshot.models)) or 'nothing'}"
    if project is None:
        return f"unknown project {task.project!r}"
    nodes = [n for n in snapshot.nodes if _allowed(n, project.allowed_nodes)]
    if not nodes:
        if project.allowed_nodes:
            names = ", ".join(project.allowed_nodes)
            return f"project {task.project!r} may only use nodes {names}, and none of them is in the cluster"
        return "the cluster has no nodes"
    if not spec.needs_gpu or any(g.total_vram_mib >= spec.vram_mib for n in nodes for g in n.gpus):
        return None
    need = f"{task.model} needs {spec.vram_mib} MiB of VRAM on one GPU"
    scope = f"on the nodes project {task.project!r} may use" if project.allowed_nodes else "in the cluster"
    gpus = [(g.total_vram_mib, n.id, g.index, g.name) for n in nodes for g in n.gpus]
    if not gpus:
        message = f"no node can ever serve it: {need}, and there is no GPU {scope}"
    else:
        total, node_id, index, name = max(gpus, key=lambda item: item[:2])
        label = f"{node_id} GPU {index}" + (f", {name}" if name else "")
        message = f"no node can ever serve it: {need}; the largest GPU {scope} has {total} MiB ({label})"
    others = [n.id for n in snapshot.nodes if n not in nodes and any(g.total_vram_mib >= spec.vram_mib for g in n.gpus)]
    if others:
        message += f"; {', '.join(sorted(others))} could, but project {task.project!r} may not use them"
    return message


# ---------------------------------------------------------------------------- one cycle's working state


@dataclass(eq=False, slots=True)
class _Gpu:
    index: int
    total: int
    headroom: int
    servers: list[_Server] = field(default_factory=list)
    held_for: str | None = None


@dataclass(eq=False, slots=True)
class _Server:
    node: _Node
    model: str
    gpu: _Gpu | None
    vram: int
    slots: int
    last_used: float
    active: int = 0
    used: int = 0
    """Running tasks (yielding ones included) plus this cycle's placements."""
    planned: int = 0
    new: bool = False
    held_for: str | None = None
    tasks: list[RunningTask] = field(default_factory=list)
    victims: list[RunningTask] | None = None

    def idle(self) -> bool:
        return self.used == 0 and self.active == 0 and self.held_for is None


@dataclass(eq=False, slots=True)
class _Node:
    id: str
    cpus: float
    gpus: list[_Gpu]
    servers: dict[str, _Server] = field(default_factory=dict)
    floor: float = math.inf
    """Lowest priority among its running tasks that may be pre-empted (not yielding, cooled down)."""
    yielding: int = 0
    tasks: list[RunningTask] = field(default_factory=list)
    """Every running task on the node, whatever its model (CPU pre-emption picks among them)."""


_Rank = tuple[int, float, float, float, str, int]  # tier, then what each tier minimises, node, GPU


@dataclass(slots=True)
class _Option:
    node: _Node
    server: _Server | None = None
    gpu: _Gpu | None = None
    evict: list[_Server] = field(default_factory=list)


@dataclass(slots=True)
class _Plan:
    node: _Node
    victims: list[RunningTask]
    gpu: _Gpu | None
    """The GPU a new server will go to; ``None`` when the plan frees a slot of a loaded server."""
    servers: list[_Server]
    cost: tuple[float, int]


def _victim_order(task: RunningTask) -> tuple[bool, float, bool, float, str]:
    # Already yielding costs nothing; then lowest priority, at a checkpoint (yields now), least work done.
    return (not task.yielding, task.priority, not task.at_checkpoint, -task.started_at, task.id)


def _cost(victims: list[RunningTask]) -> tuple[float, int]:
    fresh = [t.priority for t in victims if not t.yielding]
    return (max(fresh, default=-math.inf), len(fresh))


class _Cycle:
    """The cluster as one ``decide()`` sees it, updated as it plans, and what it has decided so far."""

    def __init__(self, snapshot: Snapshot, config: PolicyConfig) -> None:
        self.snap, self.cfg, self.now = snapshot, config, snapshot.now
        self.nodes: dict[str, _Node] = {}
        self.by_model: dict[str, list[_Server]] = {}
        for state in snapshot.nodes:
            if state.alive:
                self._add_node(state)
        self.project_load = dict.fromkeys(snapshot.projects, 0)
        self.cooled: set[str] = set()
        for task in snapshot.running:
            node = self.nodes.get(task.node)
            if node is None:
                continue  # a lost node: the scheduler re-queues its tasks
            if task.yielding:
                node.yielding += 1
            elif task.last_preempted_at is None or self.now - task.last_preempted_at >= config.preempt_cooldown_s:
                self.cooled.add(task.id)
                node.floor = min(node.floor, task.priority)
            self.project_load[task.project] = self.project_load.get(task.project, 0) + 1
            node.tasks.append(task)
            if (server := node.servers.get(task.model)) is not None:
                server.used += 1
                server.tasks.append(task)
        self.scope: dict[str, tuple[tuple[str, ...], list[_Node]]] = {}
        for name, project in snapshot.projects.items():
            members = [self.nodes[s.id] for s in snapshot.nodes if s.alive and _allowed(s, project.allowed_nodes)]
            self.scope[name] = (tuple(n.id for n in members), members)
        self.claimed: set[str] = set()
        self.blocked: dict[tuple[str, tuple[str, ...]], Waiting] = {}
        self.hopeless: dict[tuple[str, tuple[str, ...]], float] = {}
        self.full: dict[str, Waiting] = {}
        self.wanted: set[str] = set()
        self.patient_since = snapshot.now - config.preempt_after_s
        self.placements: list[Placement] = []
        self.loads: list[ModelLoad] = []
        self.evictions: list[Eviction] = []
        self.preemptions: list[Preempt] = []

    def _add_node(self, state: NodeState) -> None:
        gpus = {g.index: _Gpu(g.index, g.total_vram_mib, g.total_vram_mib) for g in state.gpus}
        node = self.nodes[state.id] = _Node(state.id, state.cpus_free, list(gpus.values()))
        for loaded in state.loaded:
            gpu = gpus.get(loaded.gpu_index) if loaded.gpu_index is not None else None
            server = _Server(node, loaded.name, gpu, loaded.vram_mib, loaded.slots_max, loaded.last_used)
            server.active = loaded.active_requests
            node.servers[loaded.name] = server
            self.by_model.setdefault(loaded.name, []).append(server)
            if gpu is not None:
                gpu.servers.append(server)
                gpu.headroom -= loaded.vram_mib
        for g in state.gpus:  # NVML may see VRAM held by processes we do not know about
            gpus[g.index].headroom = min(gpus[g.index].headroom, g.free_vram_mib)

    # ------------------------------------------------------------------------------------- placement

    def option(self, model: str, spec: ModelSpec, scope: list[_Node], preferred: str | None) -> _Option | None:
        cpus = self.cfg.task_cpus
        home = self.nodes.get(preferred or "")
        if home is not None and home in scope:
            server = home.servers.get(model)
            if server is None:
                ranked = self._load_option(home, model, spec)
                if ranked is not None:
                    return ranked[0]
            elif server.used < server.slots and server.held_for is None and home.cpus >= cpus:
                return _Option(home, server, server.gpu)
        loaded = [
            s
            for s in self.by_model.get(model, ())
            if s.used < s.slots and s.held_for is None and s.node.cpus >= cpus and s.node in scope
        ]
        if loaded:  # spread over servers: more room for each, and fewer of them turn idle and get evicted
            best = min(loaded, key=lambda s: (s.used - s.slots, s.node.id))
            return _Option(best.node, best, best.gpu)
        ranked_all = [r for n in scope if (r := self._load_option(n, model, spec)) is not None]
        return min(ranked_all, key=lambda r: r[1])[0] if ranked_all else None

    def _load_option(self, node: _Node, model: str, spec: ModelSpec) -> tuple[_Option, _Rank] | None:
        """Best way to start a new server for ``model`` on ``node``, with its rank."""
        if node.cpus < self.cfg.task_cpus or model in node.servers:
            return None  # one server per (node, model): a full one means wait, not a second copy
        if not spec.needs_gpu:  # keep GPU nodes' CPUs for GPU work
            return _Option(node), (1, len(node.gpus), -node.cpus, 0.0, node.id, 0)
        best: tuple[_Option, _Rank] | None = None
        for gpu in node.gpus:
            if gpu.held_for is not None or gpu.total < spec.vram_mib:
                continue
            if gpu.headroom >= spec.vram_mib:
                ranked = (_Option(node, gpu=gpu), (1, gpu.headroom - spec.vram_mib, 0.0, 0.0, node.id, gpu.index))
            else:
                free, evict = gpu.headroom, []
                for server in sorted((s for s in gpu.servers if s.idle()), key=self._eviction_order):
                    if free >= spec.vram_mib:
                        break
                    free += server.vram
                    evict.append(server)
                if free < spec.vram_mib:
                    continue
                wanted = sum(s.model in self.wanted for s in evict)
                rank = (2, wanted, len(evict), evict[-1].last_used, node.id, gpu.index)
                ranked = (_Option(node, gpu=gpu, evict=evict), rank)
            if best is None or ranked[1] < best[1]:
                best = ranked
        return best

    def _eviction_order(self, server: _Server) -> tuple[bool, float]:
        return (server.model in self.wanted, server.last_used)  # nobody queued for it, then LRU

    def place(self, task: QueuedTask, priority: float, option: _Option, spec: ModelSpec) -> None:
        node, server, gpu = option.node, option.server, option.gpu
        index = gpu.index if gpu is not None else None
        if server is None:
            for old in option.evict:
                self._evict(old, task.id)
            server = _Server(node, task.model, gpu, spec.vram_mib, spec.max_concurrent, self.now, new=True)
            node.servers[task.model] = server
            self.by_model.setdefault(task.model, []).append(server)
            if gpu is not None:
                gpu.servers.append(server)
                gpu.headroom -= spec.vram_mib
            load = ModelLoad(node=node.id, model=task.model, gpu_index=index, vram_mib=spec.vram_mib, for_task=task.id)
            self.loads.append(load)
        server.used += 1
        server.planned += 1
        node.cpus -= self.cfg.task_cpus
        self.project_load[task.project] += 1
        placement = Placement(
            task_id=task.id, node=node.id, model=task.model, gpu_index=index, load_model=server.new, priority=priority
        )
        self.placements.append(placement)

    def _evict(self, server: _Server, for_task: str) -> None:
        gpu = server.gpu
        del server.node.servers[server.model]
        self.by_model[server.model].remove(server)
        if gpu is not None:
            gpu.servers.remove(server)
            gpu.headroom += server.vram
        index = gpu.index if gpu else None
        eviction = Eviction(
            node=server.node.id, model=server.model, gpu_index=index, vram_mib=server.vram, for_task=for_task
        )
        self.evictions.append(eviction)

    def limit_reason(self, project: str, limit: int) -> Waiting:
        if project not in self.full:
            message = f"project {project!r} is at its limit of {limit} tasks"
            self.full[project] = Waiting(reason=WaitReason.project_limit, message=message)
        return self.full[project]

    def blocked_reason(self, task: QueuedTask, spec: ModelSpec, scope: list[_Node]) -> Waiting:
        """Why no node in ``scope`` can take the task now (computed once per model and scope a cycle)."""
        if not scope or (spec.needs_gpu and not any(g.total >= spec.vram_mib for n in scope for g in n.gpus)):
            if missing := feasible(task, self.snap):
                return Waiting(reason=WaitReason.infeasible, message=missing)
            what = "alive" if not scope else "alive with a GPU large enough"
            return Waiting(reason=WaitReason.no_node, message=f"no node project {task.project!r} may use is {what}")
        cpus = self.cfg.task_cpus
        if all(n.cpus < cpus for n in scope):
            message = f"waiting for a CPU: every usable node has less than {cpus:g} free"
            return Waiting(reason=WaitReason.waiting_for_cpu, message=message)
        servers = sorted((s for s in self.by_model.get(task.model, ()) if s.node in scope), key=lambda s: s.node.id)
        busy = ", ".join(f"{s.used}/{s.slots} on {s.node.id}" for s in servers)
        slot = f"waiting for a slot of {task.model} ({busy} busy)"
        others = [n for n in scope if n.cpus >= cpus and task.model not in n.servers]
        if not spec.needs_gpu or not any(g.total >= spec.vram_mib for n in others for g in n.gpus):
            return Waiting(reason=WaitReason.waiting_for_slot, message=slot if servers else "waiting for a slot")
        largest = max(
            (g.headroom + sum(s.vram for s in g.servers if s.idle()) for n in others for g in n.gpus if not g.held_for),
            default=0,
        )
        vram = f"VRAM on any node: needs {spec.vram_mib} MiB, largest free {max(largest, 0)} MiB"
        if servers:
            return Waiting(reason=WaitReason.waiting_for_slot, message=f"{slot} or for {vram}")
        return Waiting(reason=WaitReason.waiting_for_vram, message=f"waiting for {vram}")

    # ----------------------------------------------------------------------------------- pre-emption

    def candidate(self, task: RunningTask, urgency: float) -> bool:
        if task.id in self.claimed:
            return False
        return task.yielding or (task.id in self.cooled and urgency - task.priority > self.cfg.preempt_margin)

    def plan(self, model: str, spec: ModelSpec, scope: list[_Node], urgency: float, home: str | None) -> _Plan | None:
        """Cheapest set of running tasks whose release would let the task fit on one node (and GPU).

        Where the model is already served, only a slot of such a server: evicting other work to start one
        more copy costs a reload now and, measured on the benchmark's overloaded trace, throughput later.
        """
        margin, cpus, servers = self.cfg.preempt_margin, self.cfg.task_cpus, self.by_model.get(model, [])
        nodes = {n.id for n in scope if n.yielding or urgency - n.floor > margin}
        plans = [p for s in servers if s.node.id in nodes and (p := self._slot_plan(s, urgency))]
        plans = [p for p in plans if p.node.cpus + cpus * len(p.victims) >= cpus]
        if spec.needs_gpu and not any(s.node in scope for s in servers):  # not served: VRAM for a server
            plans = [
                p
                for n in scope
                if n.id in nodes and model not in n.servers
                for g in n.gpus
                if (p := self._gpu_plan(n, g, spec.vram_mib, urgency)) and n.cpus + cpus * len(p.victims) >= cpus
            ]
        if not spec.needs_gpu and not plans:  # a CPU model: what it lacks is a task slot (CPU) on a node
            plans = [p for n in scope if n.id in nodes and (p := self._cpu_plan(n, model, urgency))]
        return min(plans, key=lambda p: (*p.cost, p.node.id != home, p.node.id), default=None)

    def _cpu_plan(self, node: _Node, model: str, urgency: float) -> _Plan | None:
        """The cheapest running tasks on ``node`` whose release frees a CPU for a task needing no GPU."""
        cpus = self.cfg.task_cpus
        server = node.servers.get(model)
        if node.cpus >= cpus or (server is not None and server.held_for is not None):
            return None
        eligible = sorted((t for t in node.tasks if t.id not in self.claimed and self.candidate(t, urgency)),
                          key=_victim_order)
        victims: list[RunningTask] = []
        free = node.cpus + cpus * sum(1 for t in node.tasks if t.yielding and t.id not in self.claimed)
        for victim in eligible:
            if free >= cpus:
                break
            if not victim.yielding:
                victims.append(victim)
                free += cpus
        if free < cpus or not victims:
            return None
        return _Plan(node, victims, None, [], _cost(victims))

    def _slot_plan(self, server: _Server, urgency: float) -> _Plan | None:
        if server.held_for is not None:
            return None
        if server.victims is None:  # its possible victims, best first; built once a cycle, on demand
            eligible = (t for t in server.tasks if t.yielding or t.id in self.cooled)
            server.victims = sorted(eligible, key=_victim_order)
        for victim in server.victims:
            if victim.id in self.claimed:
                continue
            if not self.candidate(victim, urgency):
                return None  # the first one left is the best: if it will not do, none will
            return _Plan(server.node, [victim], None, [server], _cost([victim]))
        return None

    def _gpu_plan(self, node: _Node, gpu: _Gpu, need: int, urgency: float) -> _Plan | None:
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
            and all(self.candidate(t, urgency) for t in s.tasks)
        ]
        chosen: list[_Server] = []
        for server in sorted(freeable, key=lambda s: (_cost(s.tasks), s.last_used)):
            if free >= need:
                break
            free += server.vram
            chosen.append(server)
        if free < need or not chosen:
            return None
        victims = [t for s in chosen for t in s.tasks]
        return _Plan(node, victims, gpu, chosen + [s for s in gpu.servers if s.idle()], _cost(victims))

    def commit(self, task: QueuedTask, plan: _Plan) -> Waiting:
        self.claimed.update(t.id for t in plan.victims)
        if plan.gpu is not None:  # a new server goes there: nobody else may load onto it this cycle
            plan.gpu.held_for = task.id
        for server in plan.servers:
            server.held_for = task.id
        victims = sorted(plan.victims, key=_victim_order)
        self.preemptions.extend(
            Preempt(task_id=v.id, for_task=task.id, node=plan.node.id, at_checkpoint=v.at_checkpoint)
            for v in victims
            if not v.yielding
        )
        message = f"waiting for {', '.join(t.id for t in victims)} to yield at a checkpoint on {plan.node.id}"
        return Waiting(reason=WaitReason.waiting_for_preemption, message=message)


# ------------------------------------------------------------------------------------------- the cycle


@dataclass(slots=True)
class _Group:
    """Queued tasks of one project that want one model: they share every answer but their priority."""

    project: str
    limit: int
    base: int
    cap: int
    model: str
    spec: ModelSpec
    scope: list[_Node]
    key: tuple[str, tuple[str, ...]]
    members: list[tuple[float, float, str, float, QueuedTask]] = field(default_factory=list)
    """``(-effective, queued_since, id, urgency, task)``, sorted: the group's queue order."""
    best_urgency_from: list[float] = field(default_factory=list)


def _group(cycle: _Cycle, task: QueuedTask) -> _Group | None:
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
    cfg = config or PolicyConfig()
    cycle = _Cycle(snapshot, cfg)
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

    # Serve the groups' heads highest first: a k-way merge of the sorted groups, so the order is exactly
    # (effective desc, queued_since, id) over the whole queue. Room only shrinks within a cycle, so a
    # group that found none stays blocked, and a pre-emption search that failed at some urgency fails at
    # every lower one: once neither can change, the rest of the group gets its reason in one go.
    nodes = cycle.nodes.values()
    gate = -math.inf if any(n.yielding for n in nodes) else min((n.floor for n in nodes), default=math.inf)
    gate += cfg.preempt_margin
    live = [g for g in groups.values() if g is not None]
    cycle.wanted = {g.model for g in live}
    heads = []
    for index, group in enumerate(live):
        group.members.sort()  # ids are unique: tuples never compare past them
        group.best_urgency_from = list(accumulate(map(_URGENCY, reversed(group.members)), max))[::-1]
        heads.append((*group.members[0][:3], 0, index))
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
    return Decisions.model_construct(  # every part was built from validated input: no second validation
        placements=cycle.placements,
        loads=cycle.loads,
        evictions=cycle.evictions,
        preemptions=cycle.preemptions,
        waiting=waiting,
        priorities=priorities,
    )


def _serve(
    cycle: _Cycle, group: _Group, task: QueuedTask, urgent: float, priority: float, gate: float
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
        plan = cycle.plan(group.model, group.spec, group.scope, urgent, task.preferred_node)
        if plan is not None:
            return cycle.commit(task, plan)
        cycle.hopeless[group.key] = urgent
    return blocked


def _settled(cycle: _Cycle, group: _Group, position: int | None, gate: float) -> Waiting | None:
    """The reason every member of ``group`` from ``position`` on gets this cycle, if nothing can change it."""
    if cycle.project_load[group.project] >= group.limit:
        return cycle.limit_reason(group.project, group.limit)
    blocked = cycle.blocked.get(group.key)
    if position is None or blocked is None:
        return None
    return blocked if group.best_urgency_from[position] <= cycle.hopeless.get(group.key, gate) else None
