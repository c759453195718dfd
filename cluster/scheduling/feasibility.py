"""Could any node ever serve a task? The check at submission and for tasks the policy cannot place."""

from __future__ import annotations

from cluster.scheduling.types import NodeState, QueuedTask, Snapshot


def allowed(node: NodeState, patterns: list[str]) -> bool:
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
    nodes = [n for n in snapshot.nodes if allowed(n, project.allowed_nodes)]
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
