"""From what the scheduler knows to the policy's ``Snapshot`` (gather), and back (what to apply).

The policy (``cluster/scheduling/policy.py``) is pure; this module is the only place that knows how store
rows, Ray's node table and the node inventories map onto it:

* a node's task capacity is its ``hearth_slots`` resource (else its CPUs), given to the policy as
  ``cpus_free`` with one "CPU" per task;
* GPUs and free VRAM come from each node's NVML inventory (refreshed by the scheduler), and so do
  the ``docker:`` model containers running there (``loaded``: placement prefers them);
* ``embedded:``/``scripted:``/``openai:`` models need no GPU and no VRAM; ``docker:`` models take
  their VRAM need and slots from the model catalogue;
* a task resumed after an answer gets the policy's resume bonus and prefers the node that holds
  its workspace (``resume_node``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from agent.config import ProjectConfig
from agent.events import Event, StepCompleted, StepStarted
from agent.models import ModelError, split_spec
from cluster.scheduling.types import (
    GpuState,
    LoadedModelState,
    ModelSpec,
    NodeState,
    ProjectPolicy,
    QueuedTask,
    RunningTask,
    Snapshot,
)

if TYPE_CHECKING:  # rows are read, never made here: the store sits above the Ray-free scheduling package
    from cluster.store import TaskRow

RayNode = dict[str, Any]
"""One row of Ray's node table, as ``ray.nodes()`` gives it (``NodeID``, ``Alive``, ``Resources``, ``Labels``)."""
InventoryJson = dict[str, Any]
"""A node's ``cluster.nodes.NodeInventory`` as JSON (``gpus``, ``models``…), as the node reported it."""

UNSERVABLE_MIB = 1 << 40
CPU_MODEL_SLOTS = 64
"""Concurrent tasks one CPU-model server takes (the node's slots are the real limit)."""


def model_spec(model: str) -> ModelSpec:
    runtime, name = split_spec(model)
    if runtime != "docker":
        return ModelSpec(vram_mib=0, max_concurrent=CPU_MODEL_SLOTS, needs_gpu=False)
    from agent.models.catalogue import load_catalogue
    from agent.models.docker_runtime import LOCAL_MODEL, local_entry

    try:
        entry = local_entry(name) if name == LOCAL_MODEL else load_catalogue().get(name)
    except ModelError:
        # Unknown here: no GPU could serve it, so the policy reports it infeasible (nothing pends).
        return ModelSpec(vram_mib=UNSERVABLE_MIB, max_concurrent=1, needs_gpu=True)
    if entry.base_url:  # served elsewhere (the user's own vLLM/llama.cpp): any node may call it
        return ModelSpec(vram_mib=0, max_concurrent=entry.concurrency, needs_gpu=False)
    return ModelSpec(vram_mib=entry.vram(), max_concurrent=entry.concurrency, needs_gpu=not entry.cpu_only)


def slots(info: RayNode) -> int:
    resources = info.get("Resources") or {}
    return int(resources.get("hearth_slots", resources.get("CPU", 0)))


def node_state(node_id: str, info: RayNode, inventory: InventoryJson, busy: int,
               models: dict[str, ModelSpec]) -> NodeState:
    gpus = [GpuState(index=g["index"], name=g.get("name", ""), total_vram_mib=g["total_vram_mib"],
                     free_vram_mib=g["free_vram_mib"]) for g in inventory.get("gpus", [])]
    labels = {str(k): str(v) for k, v in (info.get("Labels") or {}).items()}
    return NodeState(id=node_id, alive=bool(info.get("Alive")), cpus_free=max(0, slots(info) - busy),
                     gpus=gpus, labels=labels, loaded=loaded_models(inventory, models))


def loaded_models(inventory: InventoryJson, models: dict[str, ModelSpec]) -> list[LoadedModelState]:
    """The node's running model servers (from its inventory) as the policy sees them. A server on
    a GPU the inventory does not list (NVML gone) counts as a CPU server: it still holds a slot."""
    indexes = {g["index"] for g in inventory.get("gpus", [])}
    out = []
    for server in inventory.get("models", []):
        gpu = server.get("gpu_index")
        out.append(LoadedModelState(
            name=server["model"], gpu_index=gpu if gpu in indexes else None,
            vram_mib=server.get("vram_mib", 0) if gpu in indexes else 0,
            slots_max=models[server["model"]].max_concurrent))
    return out


def project_policy(cfg: ProjectConfig) -> ProjectPolicy:
    return ProjectPolicy(base_priority=cfg.base_priority, max_priority=cfg.max_priority,
                         max_concurrent=cfg.concurrency, allowed_nodes=cfg.allowed_nodes)


class StepProgress(NamedTuple):
    """Where a running task's runner is, from its last step event (``step_progress``)."""

    steps_after: int
    """Steps of the plan after the one it runs (or has just finished): checkpoints it can yield at."""
    between_steps: bool
    """It finished a step and has not started the next: it is at a checkpoint right now."""


def step_progress(task: TaskRow, last: Event | None) -> StepProgress:
    """``last``: the task's latest ``step_started`` or ``step_completed`` event (None: not started)."""
    ids = [s.id for s in task.spec.plan.steps]
    if isinstance(last, StepStarted):
        return StepProgress(steps_after=max(0, last.total - last.index - 1), between_steps=False)
    if isinstance(last, StepCompleted) and last.step_id in ids:
        return StepProgress(steps_after=len(ids) - ids.index(last.step_id) - 1, between_steps=True)
    return StepProgress(steps_after=max(0, len(ids) - task.next_step - 1), between_steps=False)


def build_snapshot(now: float, nodes: dict[str, RayNode], inventories: dict[str, InventoryJson],
                   queued: list[TaskRow], active: list[TaskRow],
                   preempted_at: dict[str, float], progress: dict[str, StepProgress] | None = None) -> Snapshot:
    """``progress``: each running task's ``step_progress`` (a task missing from it counts as mid-step
    with checkpoints ahead)."""
    progress = progress or {}
    unknown = StepProgress(steps_after=1, between_steps=False)
    busy: dict[str, int] = {}
    for task in active:
        if task.node_id:
            busy[task.node_id] = busy.get(task.node_id, 0) + 1
    # A project's policy comes from its newest submission: its hearth.toml may have changed since
    # an older task (still running, or queued) was submitted with the config of its time.
    newest: dict[str, TaskRow] = {}
    for t in [*queued, *active]:
        if t.project not in newest or t.created_at > newest[t.project].created_at:
            newest[t.project] = t
    projects = {name: project_policy(t.spec.config) for name, t in newest.items()}
    served = [m["model"] for n in nodes for m in inventories.get(n, {}).get("models", [])]
    models = {name: model_spec(name) for name in {*(t.model for t in [*queued, *active]), *served}}
    return Snapshot(
        now=now,
        nodes=[node_state(n, info, inventories.get(n, {}), busy.get(n, 0), models) for n, info in nodes.items()],
        models=models,
        projects=projects,
        queued=[QueuedTask(id=t.id, project=t.project, model=t.model, priority=t.priority,
                           queued_since=t.queued_since, resumed_after_answer=t.answer is not None,
                           preferred_node=t.resume_node, attempt=t.attempts) for t in queued],
        running=[RunningTask(id=t.id, project=t.project, model=t.model, node=t.node_id or "",
                             priority=t.priority, yielding=t.state.value == "yielding",
                             at_checkpoint=progress.get(t.id, unknown).between_steps,
                             can_yield=t.spec.config.checkpoints and progress.get(t.id, unknown).steps_after > 0,
                             started_at=t.updated_at,
                             last_preempted_at=preempted_at.get(t.id)) for t in active if t.node_id],
    )


PENDING_LOAD_S = 900.0
"""How long a server the scheduler planned counts as loading before the node's inventory shows it."""

PendingLoads = dict[tuple[str, str], tuple[int | None, int, float]]
"""(node, model) → (GPU index, VRAM MiB, when the load was planned)."""


def with_pending_loads(inventories: dict[str, InventoryJson], pending: PendingLoads,
                       now: float) -> dict[str, InventoryJson]:
    """The inventories plus the servers planned but not reported yet (a task placed with
    ``load_model`` starts its server lazily, and the next inventory comes seconds later: without
    this, the same VRAM would be planned twice). Drops entries the inventory now shows, or that
    are too old to still be loading."""
    merged = dict(inventories)
    for (node, model), (gpu, vram, since) in list(pending.items()):
        inventory = merged.get(node)
        present = inventory is not None and any(m.get("model") == model for m in inventory.get("models", []))
        if present or now - since > PENDING_LOAD_S or inventory is None:
            pending.pop((node, model))
            continue
        merged[node] = {**inventory, "models": [*inventory.get("models", []),
                                                 {"model": model, "gpu_index": gpu, "vram_mib": vram}]}
    return merged
