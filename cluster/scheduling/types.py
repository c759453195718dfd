"""What the scheduling policy reads and what it answers (see ``cluster.scheduling.policy``).

``Snapshot`` is everything ``decide()`` may look at: the caller's clock (``now``), the nodes with their
GPUs and loaded model servers, the model catalogue, the project policies, the queue and the running
tasks; ``PolicyConfig`` holds the policy's knobs. ``Decisions`` is everything it may ask for:
placements, model loads and evictions, pre-emption requests, and a reason for every task that stays
queued. All are plain frozen data, so the scheduler actor can journal them and tests can build them.

The policy never asks to kill anything: ``Preempt`` is a request that the victim's runner honours at its
next checkpoint boundary; there is no other way for a running task to be stopped by the policy.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------------- inputs


class GpuState(_Data):
    """One GPU of a node, as NVML reports it."""

    index: int = Field(ge=0)
    """NVML index on its node."""
    name: str = ""
    """Marketing name, e.g. ``NVIDIA GeForce RTX 4090`` (for messages only)."""
    total_vram_mib: int = Field(ge=0)
    free_vram_mib: int = Field(ge=0)
    """Free VRAM as NVML sees it. The policy uses ``min(free, total - sum of loaded models)``, so VRAM
    held by processes Hearth does not know about is respected and a model still loading counts in full."""


class LoadedModelState(_Data):
    """One model server running on a node (or being started: include it as soon as a load is applied)."""

    name: str
    """Catalogue name, e.g. ``docker:qwen2.5-coder-7b``."""
    gpu_index: int | None = None
    """GPU the server lives on; ``None`` for a CPU model."""
    vram_mib: int = Field(default=0, ge=0)
    active_requests: int = Field(default=0, ge=0)
    """In-flight requests right now; a server is idle (evictable) only at 0 and with no running task."""
    last_used: float = 0.0
    """Caller's clock at the last request; eviction takes the least recently used first."""
    slots_max: int = Field(ge=1)
    """How many tasks this server may serve at once."""


class NodeState(_Data):
    """One machine of the cluster."""

    id: str
    alive: bool = True
    cpus_free: float = Field(default=0.0, ge=0)
    """CPUs not yet claimed by running tasks' sandboxes."""
    gpus: list[GpuState] = []
    loaded: list[LoadedModelState] = []
    labels: dict[str, str] = {}
    """Ray labels; ``ProjectPolicy.allowed_nodes`` may name a node by ``key=value``."""


class ModelSpec(_Data):
    """Catalogue entry: what serving one model costs."""

    vram_mib: int = Field(ge=0)
    """VRAM one server needs, on ONE GPU (the policy does not split a model across GPUs)."""
    max_concurrent: int = Field(ge=1)
    """Task slots of one server."""
    needs_gpu: bool = True

    @model_validator(mode="after")
    def _cpu_models_need_no_vram(self) -> Self:
        if not self.needs_gpu and self.vram_mib:
            raise ValueError("a model with needs_gpu=false must have vram_mib=0")
        return self


class ProjectPolicy(_Data):
    """The scheduling part of a project's ``hearth.toml``."""

    base_priority: int = Field(default=50, ge=0, le=100)
    """Priority of a task that suggests none."""
    max_priority: int = Field(default=100, ge=0, le=100)
    """Cap on what a task of this project may ask for."""
    max_concurrent: int = Field(default=4, ge=1)
    """Tasks of this project placed or running at once."""
    allowed_nodes: list[str] = []
    """Node ids or ``key=value`` labels this project may use; empty means any node."""


class QueuedTask(_Data):
    """A task waiting for a node (new, pre-empted, re-queued after an answer or a lost node)."""

    id: str
    project: str
    model: str
    priority: int | None = None
    """The task's own suggestion (0 to 100), clipped to ``[0, project.max_priority]``; ``None``: base."""
    queued_since: float
    """Caller's clock when the task (re-)entered the queue; drives aging and breaks ties."""
    resumed_after_answer: bool = False
    """Re-queued because a human answered; earns ``PolicyConfig.resume_bonus``."""
    preferred_node: str | None = None
    """Where its sandbox snapshot is; chosen whenever that node can take it."""
    attempt: int = Field(default=0, ge=0)


class RunningTask(_Data):
    """A task that holds a model slot and a CPU on a node."""

    id: str
    project: str
    model: str
    node: str
    priority: float
    """The ``Placement.priority`` it was placed with (aging included), so a task that got in by waiting
    long is not pre-empted by the next fresh arrival."""
    at_checkpoint: bool = False
    """Between steps right now: a pre-emption takes effect at once."""
    can_yield: bool = True
    """False when no checkpoint lies ahead of it: it runs its last step, or its project declared
    ``checkpoints = false``. Such a task is never a pre-emption victim (it would only free its slot
    by ending)."""
    yielding: bool = False
    """Already asked to yield; its capacity is counted as on its way back."""
    started_at: float
    last_preempted_at: float | None = None


class Snapshot(_Data):
    """Everything ``decide()`` sees. ``now`` comes from the caller's clock; the policy reads no other."""

    now: float
    nodes: list[NodeState]
    models: dict[str, ModelSpec]
    projects: dict[str, ProjectPolicy]
    queued: list[QueuedTask] = []
    running: list[RunningTask] = []


class PolicyConfig(BaseModel):
    """Knobs of the scheduling policy (``[scheduler]`` in the cluster configuration)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aging_s: float = Field(default=300.0, gt=0)
    """Seconds in the queue that add one point of effective priority (300: 12 points an hour)."""
    priority_ceiling: float = 200.0
    """Where aging stops; must exceed 100 + resume_bonus so that waiting beats any fixed priority."""
    resume_bonus: float = Field(default=50.0, ge=0)
    """Points added to a task re-queued after a human answered it (someone is waiting on it)."""
    preempt_margin: float = Field(default=10.0, ge=0)
    """A waiting task's urgency must exceed a victim's priority by more than this."""
    preempt_after_s: float = Field(default=120.0, ge=0)
    """A task pre-empts only after waiting this long: on a busy cluster a slot usually frees up by itself."""
    preempt_cooldown_s: float = Field(default=600.0, ge=0)
    """A task pre-empted less than this long ago is not chosen as a victim again."""
    task_cpus: float = Field(default=1.0, ge=0)
    """CPUs one task's sandbox claims on its node."""

    @model_validator(mode="after")
    def _ceiling_above_every_urgency(self) -> Self:
        if self.priority_ceiling <= 100 + self.resume_bonus:
            raise ValueError("priority_ceiling must exceed 100 + resume_bonus, or aging cannot end starvation")
        return self


# -------------------------------------------------------------------------------------------- outputs


class Placement(_Data):
    """Start ``task_id`` on ``node``; its steps use ``model`` served there."""

    task_id: str
    node: str
    model: str
    gpu_index: int | None
    """GPU of the model server the task will use; ``None`` for a CPU model."""
    load_model: bool
    """True when the server is not up yet: it is in ``Decisions.loads`` of this same cycle."""
    priority: float
    """Effective priority at placement; record it as ``RunningTask.priority``."""


class ModelLoad(_Data):
    """Start a server for ``model`` on ``node`` (after this cycle's evictions on that GPU)."""

    node: str
    model: str
    gpu_index: int | None
    vram_mib: int
    for_task: str


class Eviction(_Data):
    """Stop the idle server for ``model`` on ``node`` to make room for ``for_task``."""

    node: str
    model: str
    gpu_index: int | None
    vram_mib: int
    for_task: str


class Preempt(_Data):
    """Ask ``task_id`` to yield at its next checkpoint so that ``for_task`` can run. Never a kill."""

    task_id: str
    for_task: str
    node: str
    at_checkpoint: bool
    """The victim was between steps when the snapshot was taken, so it can yield at once."""


class WaitReason(StrEnum):
    """Why a task is still queued after a cycle."""

    infeasible = "infeasible"
    """No node could ever serve it (unknown model or project, no GPU large enough where allowed)."""
    no_node = "no_node"
    """Capable nodes exist but none the project may use is alive."""
    project_limit = "project_limit"
    """The project already has ``max_concurrent`` tasks placed or running."""
    waiting_for_slot = "waiting_for_slot"
    """The model is loaded but every slot is busy, and there is no VRAM for another server."""
    waiting_for_vram = "waiting_for_vram"
    """No GPU has enough free (or idle, evictable) VRAM for the model."""
    waiting_for_cpu = "waiting_for_cpu"
    """No usable node has a CPU free for the task's sandbox."""
    waiting_for_preemption = "waiting_for_preemption"
    """Lower-priority tasks were asked to yield; the task runs when they reach their checkpoints."""


class Waiting(_Data):
    """Why one task stays queued; ``message`` is the sentence the user sees."""

    reason: WaitReason
    message: str


class Decisions(_Data):
    """The answer of one ``decide()`` cycle. Apply evictions, then loads, then placements."""

    placements: list[Placement] = []
    loads: list[ModelLoad] = []
    evictions: list[Eviction] = []
    preemptions: list[Preempt] = []
    waiting: dict[str, Waiting] = {}
    """Every queued task that was not placed, with its reason (tasks with the same cause share one)."""
    priorities: dict[str, float] = {}
    """Effective priority of every queued task this cycle (for ``hearth tasks`` and the journal)."""
