"""Node inventory: GPUs and VRAM through NVML, CPUs and memory; what a node advertises to Ray.

``inventory()`` never fails for want of a GPU: where NVML is absent (no driver, no library) the
node is CPU-only. ``ray_start_args()`` turns an inventory into the ``ray start`` flags that make
the same command right on every box: ``--resources`` carries ``vram_mib`` (total over GPUs) and
``hearth_slots``; ``--labels`` carries the GPU model, so placement can ask for it.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from pydantic import BaseModel


class GpuInfo(BaseModel):
    index: int
    uuid: str
    name: str
    total_vram_mib: int
    free_vram_mib: int
    used_vram_mib: int
    processes: dict[int, int] = {}
    """pid → VRAM MiB, where NVML reports it."""


class ModelServerInfo(BaseModel):
    """A model server Hearth started on this node (a ``docker:`` model's container)."""

    model: str
    """The model spec tasks ask for, e.g. ``docker:qwen2.5-coder-7b``."""
    gpu_index: int | None = None
    vram_mib: int = 0


class NodeInventory(BaseModel):
    hostname: str
    cpus: int
    memory_mib: int
    gpus: list[GpuInfo] = []
    nvml: str = "absent"
    """'ok', or why NVML could not be used ('absent: …')."""
    models: list[ModelServerInfo] = []
    docker: str = "absent"
    """'ok', or why the node's model containers could not be listed."""

    @property
    def total_vram_mib(self) -> int:
        return sum(g.total_vram_mib for g in self.gpus)


def _mib(value: int) -> int:
    return int(value // (1024 * 1024))


def gpu_inventory() -> tuple[list[GpuInfo], str]:
    """GPUs seen by NVML, or ([], reason) where NVML is not usable here."""
    try:
        import pynvml
    except ImportError:
        return [], "absent: nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"absent: {exc}"
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            processes: dict[int, int] = {}
            try:
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.usedGpuMemory is not None:
                        processes[int(proc.pid)] = _mib(proc.usedGpuMemory)
            except pynvml.NVMLError:
                pass
            gpus.append(GpuInfo(
                index=index, uuid=uuid if isinstance(uuid, str) else uuid.decode(),
                name=name if isinstance(name, str) else name.decode(),
                total_vram_mib=_mib(memory.total), free_vram_mib=_mib(memory.free),
                used_vram_mib=_mib(memory.used), processes=processes))
        return gpus, "ok"
    finally:
        pynvml.nvmlShutdown()


def inventory(*, with_models: bool = True) -> NodeInventory:
    gpus, status = gpu_inventory()
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    models, docker = model_servers(gpus) if with_models else ([], "not asked")
    return NodeInventory(hostname=os.uname().nodename, cpus=os.cpu_count() or 1, memory_mib=_mib(pages),
                         gpus=gpus, nvml=status, models=models, docker=docker)


def model_servers(gpus: list[GpuInfo]) -> tuple[list[ModelServerInfo], str]:
    """The ``docker:`` model containers running on this node's engine; none (and why) without one."""
    try:
        from agent.models.docker_runtime import DockerModelRuntime
        from agent.sandbox.docker_engine import docker_client

        client = docker_client(timeout_s=5)
    except Exception as exc:  # no SDK, no engine: a node without Docker models
        return [], f"absent: {str(exc)[:200]}"
    by_uuid = {g.uuid: g.index for g in gpus}
    servers = []
    try:
        with DockerModelRuntime(client=client) as runtime:
            for loaded in runtime.loaded():
                first = loaded.gpus[0] if loaded.gpus else None
                index = None if first is None else int(first) if first.isdigit() else by_uuid.get(first)
                servers.append(ModelServerInfo(model=f"docker:{loaded.name}", gpu_index=index,
                                               vram_mib=loaded.vram_mib))
    except Exception as exc:
        return [], f"error: {str(exc)[:200]}"
    finally:
        client.close()
    return servers, "ok"


def gpu_label(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' → 'rtx-4090' (Ray label values: alphanumerics, '-', '_', '.')."""
    short = re.sub(r"^(nvidia\s+)?(geforce\s+)?", "", name.strip().lower())
    return re.sub(r"[^a-z0-9._-]+", "-", short).strip("-") or "unknown"


def ray_start_args(inv: NodeInventory, *, slots: int | None = None,
                   extra_labels: dict[str, str] | None = None) -> list[str]:
    """The ``ray start`` flags this node should advertise.

    ``slots`` is how many tasks it runs at once (default: one per CPU); 0 means none (a pure head):
    no ``hearth_slots`` and no CPUs for Ray to hand out. Labels carry the GPU model and the Hearth and
    Ray versions (the scheduler refuses a node whose Hearth differs from the head's).
    """
    from cluster.node_join import version_labels

    count = inv.cpus if slots is None else slots
    resources: dict[str, Any] = {"hearth_slots": count} if count else {}
    if inv.gpus:
        resources["vram_mib"] = inv.total_vram_mib
    labels = {"hearth-node": "1", **version_labels(), **(extra_labels or {})}
    if inv.gpus:
        labels["gpu-model"] = gpu_label(inv.gpus[0].name)
        labels["gpu-count"] = str(len(inv.gpus))
    args = [f"--num-gpus={len(inv.gpus)}", f"--resources={json.dumps(resources)}",
            "--labels=" + ",".join(f"{k}={v}" for k, v in labels.items())]
    if count == 0:
        args.insert(0, "--num-cpus=0")
    return args


class NodeView(BaseModel):
    """One node as ``hearth nodes`` and ``GET /v1/nodes`` show it."""

    node_id: str
    alive: bool
    address: str
    gpus: list[GpuInfo]
    vram_total_mib: int
    vram_free_mib: int
    nvml: str
    """'ok', 'unknown' (the node did not answer), or why NVML could not be used."""
    slots: int
    """Tasks the node runs at once (its ``hearth_slots`` resource)."""
    models: list[ModelServerInfo]
    labels: dict[str, str]
    running: list[str]
    """Ids of the tasks placed there."""
    refused: str | None = None
    """Why the scheduler places no task there (it runs another Hearth or Ray than the head)."""
