"""From what the scheduler knows to the policy's ``Snapshot`` (gather), and back (what to apply).

The policy (``cluster/policy.py``) is pure; this module is the only place that knows how store
rows, Ray's node table and the node inventories map onto it:

* a node's task capacity is its ``hearth_slots`` resource (else its CPUs), given to the policy as
  ``cpus_free`` with one "CPU" per task;
* GPUs and free VRAM come from each node's NVML inventory (refreshed by the scheduler);
* ``embedded:``/``scripted:``/``openai:`` models need no GPU and no VRAM; ``docker:`` models take
  their VRAM need and slots from the model catalogue;
* a task resumed after an answer gets the policy's resume bonus and prefers the node that holds
  its workspace (``resume_node``).
"""

from __future__ import annotations

from typing import Any

from agent.config import ProjectConfig
from agent.models import ModelError, split_spec
from cluster.policy_model import (
    GpuState,
    ModelSpec,
    NodeState,
    ProjectPolicy,
    QueuedTask,
    RunningTask,
    Snapshot,
)
from cluster.store import TaskRow

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
    return ModelSpec(vram_mib=entry.vram(), max_concurrent=entry.concurrency, needs_gpu=not entry.cpu_only)


def slots(info: dict[str, Any]) -> int:
    resources = info.get("Resources") or {}
    return int(resources.get("hearth_slots", resources.get("CPU", 0)))


def node_state(node_id: str, info: dict[str, Any], inventory: dict[str, Any], busy: int) -> NodeState:
    gpus = [GpuState(index=g["index"], name=g.get("name", ""), total_vram_mib=g["total_vram_mib"],
                     free_vram_mib=g["free_vram_mib"]) for g in inventory.get("gpus", [])]
    labels = {str(k): str(v) for k, v in (info.get("Labels") or {}).items()}
    return NodeState(id=node_id, alive=bool(info.get("Alive")), cpus_free=max(0, slots(info) - busy),
                     gpus=gpus, labels=labels)


def project_policy(config: dict[str, Any]) -> ProjectPolicy:
    cfg = ProjectConfig.model_validate(config)
    return ProjectPolicy(base_priority=cfg.base_priority, max_priority=cfg.max_priority,
                         max_concurrent=cfg.concurrency, allowed_nodes=cfg.allowed_nodes)


def build_snapshot(now: float, nodes: dict[str, dict[str, Any]], inventories: dict[str, dict[str, Any]],
                   queued: list[TaskRow], active: list[TaskRow],
                   preempted_at: dict[str, float]) -> Snapshot:
    busy: dict[str, int] = {}
    for task in active:
        if task.node_id:
            busy[task.node_id] = busy.get(task.node_id, 0) + 1
    projects = {t.project: project_policy(t.spec["config"]) for t in [*queued, *active]}
    models = {t.model: model_spec(t.model) for t in [*queued, *active]}
    return Snapshot(
        now=now,
        nodes=[node_state(n, info, inventories.get(n, {}), busy.get(n, 0)) for n, info in nodes.items()],
        models=models,
        projects=projects,
        queued=[QueuedTask(id=t.id, project=t.project, model=t.model, priority=t.priority,
                           queued_since=t.queued_since, resumed_after_answer=t.answer is not None,
                           preferred_node=t.resume_node, attempt=t.attempts) for t in queued],
        running=[RunningTask(id=t.id, project=t.project, model=t.model, node=t.node_id or "",
                             priority=t.priority, yielding=t.state.value == "yielding",
                             at_checkpoint=False, started_at=t.updated_at,
                             last_preempted_at=preempted_at.get(t.id)) for t in active if t.node_id],
    )
