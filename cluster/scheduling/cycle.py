"""One ``decide()`` cycle's working state: the cluster as the policy sees it, updated as it plans.

Mutable dataclasses with slots, not pydantic: ``decide()`` runs over ~10,000 queued tasks a cycle and
touches these in its inner loops. Placement (``option``/``place``) and the reasons a task waits live
here; the victim search for pre-emption is in ``cluster/scheduling/preemption.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cluster.scheduling.feasibility import allowed, feasible
from cluster.scheduling.types import (
    Eviction,
    ModelLoad,
    ModelSpec,
    NodeState,
    Placement,
    PolicyConfig,
    Preempt,
    QueuedTask,
    RunningTask,
    Snapshot,
    Waiting,
    WaitReason,
)


@dataclass(eq=False, slots=True)
class CycleGpu:
    index: int
    total: int
    headroom: int
    servers: list[CycleServer] = field(default_factory=list)
    held_for: str | None = None


@dataclass(eq=False, slots=True)
class CycleServer:
    node: CycleNode
    model: str
    gpu: CycleGpu | None
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
class CycleNode:
    id: str
    cpus: float
    gpus: list[CycleGpu]
    servers: dict[str, CycleServer] = field(default_factory=dict)
    floor: float = math.inf
    """Lowest priority among its running tasks that may be pre-empted (not yielding, cooled down)."""
    yielding: int = 0
    tasks: list[RunningTask] = field(default_factory=list)
    """Every running task on the node, whatever its model (CPU pre-emption picks among them)."""


OptionRank = tuple[int, float, float, float, str, int]  # tier, then what each tier minimises, node, GPU


@dataclass(slots=True)
class PlaceOption:
    node: CycleNode
    server: CycleServer | None = None
    gpu: CycleGpu | None = None
    evict: list[CycleServer] = field(default_factory=list)


@dataclass(slots=True)
class VictimPlan:
    node: CycleNode
    victims: list[RunningTask]
    gpu: CycleGpu | None
    """The GPU a new server will go to; ``None`` when the plan frees a slot of a loaded server."""
    servers: list[CycleServer]
    cost: tuple[float, int]


def victim_order(task: RunningTask) -> tuple[bool, float, bool, float, str]:
    # Already yielding costs nothing; then lowest priority, at a checkpoint (yields now), least work done.
    return (not task.yielding, task.priority, not task.at_checkpoint, -task.started_at, task.id)


def victims_cost(victims: list[RunningTask]) -> tuple[float, int]:
    fresh = [t.priority for t in victims if not t.yielding]
    return (max(fresh, default=-math.inf), len(fresh))



class Cycle:
    """The cluster as one ``decide()`` sees it, updated as it plans, and what it has decided so far."""

    def __init__(self, snapshot: Snapshot, config: PolicyConfig) -> None:
        self.snap, self.cfg, self.now = snapshot, config, snapshot.now
        self.nodes: dict[str, CycleNode] = {}
        self.by_model: dict[str, list[CycleServer]] = {}
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
            elif task.can_yield and (task.last_preempted_at is None
                                     or self.now - task.last_preempted_at >= config.preempt_cooldown_s):
                self.cooled.add(task.id)
                node.floor = min(node.floor, task.priority)
            self.project_load[task.project] = self.project_load.get(task.project, 0) + 1
            node.tasks.append(task)
            if (server := node.servers.get(task.model)) is not None:
                server.used += 1
                server.tasks.append(task)
        self.scope: dict[str, tuple[tuple[str, ...], list[CycleNode]]] = {}
        for name, project in snapshot.projects.items():
            members = [self.nodes[s.id] for s in snapshot.nodes if s.alive and allowed(s, project.allowed_nodes)]
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
        gpus = {g.index: CycleGpu(g.index, g.total_vram_mib, g.total_vram_mib) for g in state.gpus}
        node = self.nodes[state.id] = CycleNode(state.id, state.cpus_free, list(gpus.values()))
        for loaded in state.loaded:
            gpu = gpus.get(loaded.gpu_index) if loaded.gpu_index is not None else None
            server = CycleServer(node, loaded.name, gpu, loaded.vram_mib, loaded.slots_max, loaded.last_used)
            server.active = loaded.active_requests
            node.servers[loaded.name] = server
            self.by_model.setdefault(loaded.name, []).append(server)
            if gpu is not None:
                gpu.servers.append(server)
                gpu.headroom -= loaded.vram_mib
        for g in state.gpus:  # NVML may see VRAM held by processes we do not know about
            gpus[g.index].headroom = min(gpus[g.index].headroom, g.free_vram_mib)

    # ------------------------------------------------------------------------------------- placement

    def option(self, model: str, spec: ModelSpec, scope: list[CycleNode], preferred: str | None) -> PlaceOption | None:
        cpus = self.cfg.task_cpus
        home = self.nodes.get(preferred or "")
        if home is not None and home in scope:
            server = home.servers.get(model)
            if server is None:
                ranked = self._load_option(home, model, spec)
                if ranked is not None:
                    return ranked[0]
            elif server.used < server.slots and server.held_for is None and home.cpus >= cpus:
                return PlaceOption(home, server, server.gpu)
        loaded = [
            s
            for s in self.by_model.get(model, ())
            if s.used < s.slots and s.held_for is None and s.node.cpus >= cpus and s.node in scope
        ]
        if loaded:  # spread over servers: more room for each, and fewer of them turn idle and get evicted
            best = min(loaded, key=lambda s: (s.used - s.slots, s.node.id))
            return PlaceOption(best.node, best, best.gpu)
        ranked_all = [r for n in scope if (r := self._load_option(n, model, spec)) is not None]
        return min(ranked_all, key=lambda r: r[1])[0] if ranked_all else None

    def _load_option(self, node: CycleNode, model: str, spec: ModelSpec) -> tuple[PlaceOption, OptionRank] | None:
        """Best way to start a new server for ``model`` on ``node``, with its rank."""
        if node.cpus < self.cfg.task_cpus or model in node.servers:
            return None  # one server per (node, model): a full one means wait, not a second copy
        if not spec.needs_gpu:  # keep GPU nodes' CPUs for GPU work
            return PlaceOption(node), (1, len(node.gpus), -node.cpus, 0.0, node.id, 0)
        best: tuple[PlaceOption, OptionRank] | None = None
        for gpu in node.gpus:
            if gpu.held_for is not None or gpu.total < spec.vram_mib:
                continue
            if gpu.headroom >= spec.vram_mib:
                ranked = (PlaceOption(node, gpu=gpu), (1, gpu.headroom - spec.vram_mib, 0.0, 0.0, node.id, gpu.index))
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
                ranked = (PlaceOption(node, gpu=gpu, evict=evict), rank)
            if best is None or ranked[1] < best[1]:
                best = ranked
        return best

    def _eviction_order(self, server: CycleServer) -> tuple[bool, float]:
        return (server.model in self.wanted, server.last_used)  # nobody queued for it, then LRU

    def place(self, task: QueuedTask, priority: float, option: PlaceOption, spec: ModelSpec) -> None:
        node, server, gpu = option.node, option.server, option.gpu
        index = gpu.index if gpu is not None else None
        if server is None:
            for old in option.evict:
                self._evict(old, task.id)
            server = CycleServer(node, task.model, gpu, spec.vram_mib, spec.max_concurrent, self.now, new=True)
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

    def _evict(self, server: CycleServer, for_task: str) -> None:
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

    def blocked_reason(self, task: QueuedTask, spec: ModelSpec, scope: list[CycleNode]) -> Waiting:
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
