"""The nodes page: each box with its GPUs (VRAM used and free), model containers, slots and tasks."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class GpuView(BaseModel):
    index: int
    name: str
    total_mib: int
    used_mib: int
    free_mib: int
    used_pct: float
    models: list[str]
    """Hearth's model containers on this GPU."""


class ModelView(BaseModel):
    model: str
    gpu: str
    vram_mib: int


class NodeView(BaseModel):
    node_id: str
    short_id: str
    address: str
    alive: bool
    hostname: str
    gpu_model: str
    gpus: list[GpuView]
    vram_total_mib: int
    vram_used_mib: int
    vram_free_mib: int
    nvml: str
    slots: int
    running: list[str]
    models: list[ModelView]


def gib(mib: int) -> str:
    return f"{mib / 1024:.1f} GiB"


def view(node: dict[str, Any]) -> NodeView:
    models = node.get("models") or []
    gpus = []
    for gpu in node.get("gpus") or []:
        total = int(gpu.get("total_vram_mib", 0))
        free = int(gpu.get("free_vram_mib", 0))
        used = int(gpu.get("used_vram_mib", total - free))
        on_gpu = [m["model"] for m in models if m.get("gpu_index") == gpu.get("index")]
        gpus.append(GpuView(index=int(gpu.get("index", 0)), name=str(gpu.get("name", "GPU")), total_mib=total,
                            used_mib=used, free_mib=free, used_pct=round(100 * used / total, 1) if total else 0.0,
                            models=on_gpu))
    labels = node.get("labels") or {}
    return NodeView(
        node_id=str(node.get("node_id", "")), short_id=str(node.get("node_id", ""))[:12],
        address=str(node.get("address", "")), alive=bool(node.get("alive")),
        hostname=str(node.get("hostname") or labels.get("hostname") or node.get("address", "")),
        gpu_model=str(labels.get("gpu-model", "")), gpus=gpus,
        vram_total_mib=sum(g.total_mib for g in gpus), vram_used_mib=sum(g.used_mib for g in gpus),
        vram_free_mib=sum(g.free_mib for g in gpus), nvml=str(node.get("nvml", "")),
        slots=int(node.get("slots", 0) or 0), running=list(node.get("running") or []),
        models=[ModelView(model=str(m.get("model", "")),
                          gpu="CPU" if m.get("gpu_index") is None else f"GPU {m['gpu_index']}",
                          vram_mib=int(m.get("vram_mib", 0))) for m in models])


def views(nodes: list[dict[str, Any]]) -> list[NodeView]:
    """Alive boxes first, then by address."""
    return sorted((view(n) for n in nodes), key=lambda v: (not v.alive, v.address, v.node_id))
