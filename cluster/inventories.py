"""What the scheduler knows of each node: Ray's node table, each node's inventory (GPUs, free VRAM,
model containers; asked for every few seconds) and the model servers it planned that no inventory
shows yet. Also the two small Ray tasks that run *on* a node: report its inventory, stop a server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.node_join import hearth_version, refusal
from cluster.nodes import NodeView
from cluster.scheduling.snapshot import InventoryJson, PendingLoads, RayNode, slots, with_pending_loads

log = logging.getLogger("hearth.scheduler")
INVENTORY_EVERY_S = 5.0
INVENTORY_TIMEOUT_S = 10.0
NODES_FRESH_S = 1.0


def on_node(node_id: str) -> NodeAffinitySchedulingStrategy:
    """Run there and nowhere else (hard affinity: a lost node fails the call, it never moves)."""
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


class Inventories:
    def __init__(self) -> None:
        self.by_node: dict[str, InventoryJson] = {}
        self.pending_loads: PendingLoads = {}
        """Model servers planned on a node that its inventory does not show yet."""
        self._asked_at = -INVENTORY_EVERY_S
        self.answered_at: dict[str, float] = {}
        """node → when (monotonic) the last inventory request it answered was sent: it was alive then."""
        self._alive: dict[str, RayNode] = {}
        self._alive_at = -NODES_FRESH_S

    def alive_nodes(self) -> dict[str, RayNode]:
        """Nodes tasks may go to: alive, and running the head's Hearth and Ray (never a mismatched box)."""
        self._alive = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive") and refused_because(n) is None}
        self._alive_at = time.monotonic()
        return self._alive

    def recent_alive_nodes(self) -> dict[str, RayNode]:
        """``alive_nodes()`` as seen at most ``NODES_FRESH_S`` ago. Each placement cycle and each submit
        asks; Ray's node table is a GCS round trip that took a loaded head tens of ms, over a thousand
        submits seconds of its event loop. Judging a lost attempt asks afresh (and so refreshes this)."""
        if time.monotonic() - self._alive_at > NODES_FRESH_S:
            return self.alive_nodes()
        return self._alive

    @staticmethod
    def refused_nodes() -> list[str]:
        """Each alive node that gets no tasks for its versions, and why (for error messages)."""
        return [f"node {n['NodeID'][:12]} ({n.get('NodeManagerAddress', '')}) {reason}"
                for n in ray.nodes() if n.get("Alive") and (reason := refused_because(n))]

    async def refresh(self, force: bool = False) -> None:
        """Each alive node's inventory, at most every ``INVENTORY_EVERY_S``; a node that does not
        answer is forgotten until it does."""
        if not force and time.monotonic() - self._asked_at < INVENTORY_EVERY_S:
            return
        asked = self._asked_at = time.monotonic()
        refs = {node: node_inventory.options(scheduling_strategy=on_node(node)).remote()
                for node in self.alive_nodes()}
        for node, ref in refs.items():
            try:
                self.by_node[node] = await asyncio.wait_for(ref, timeout=INVENTORY_TIMEOUT_S)
                self.answered_at[node] = asked
            except (TimeoutError, ray.exceptions.RayError):
                self.by_node.pop(node, None)

    def alive_since(self, node: str, since: float) -> bool:
        """Whether ``node`` answered an inventory request sent after ``since`` (monotonic): proof that
        it was alive then, seconds before Ray's health checks could say so."""
        return self.answered_at.get(node, float("-inf")) > since

    def with_planned(self, now: float) -> dict[str, InventoryJson]:
        """The inventories plus the servers planned but not reported yet."""
        return with_pending_loads(self.by_node, self.pending_loads, now)

    def plan_load(self, node: str, model: str, gpu_index: int | None, vram_mib: int, now: float) -> None:
        self.pending_loads[(node, model)] = (gpu_index, vram_mib, now)

    def evict(self, node: str, model: str) -> None:
        """Stop an idle model server on ``node`` (the policy needs its VRAM); forget it at once so
        the next cycle does not plan with it."""
        inventory = self.by_node.get(node)
        if inventory is not None:
            inventory["models"] = [m for m in inventory.get("models", []) if m.get("model") != model]
        release_model.options(scheduling_strategy=on_node(node)).remote(model)
        log.info("evicting %s on node %s", model, node[:12])

    async def views(self, running: dict[str, list[str]]) -> list[NodeView]:
        """Every node Ray knows, asked for its inventory now, with the tasks running there."""
        result = []
        for node in ray.nodes():
            node_id = node["NodeID"]
            inv: InventoryJson = {"gpus": []}
            if node.get("Alive"):
                try:
                    ref = node_inventory.options(scheduling_strategy=on_node(node_id)).remote()
                    inv = await asyncio.wait_for(ref, timeout=INVENTORY_TIMEOUT_S)
                except (TimeoutError, ray.exceptions.RayError):
                    pass
            gpus = inv.get("gpus", [])
            result.append(NodeView(
                node_id=node_id, alive=bool(node.get("Alive")), address=node.get("NodeManagerAddress", ""),
                gpus=gpus, vram_total_mib=sum(g["total_vram_mib"] for g in gpus),
                vram_free_mib=sum(g["free_vram_mib"] for g in gpus), nvml=inv.get("nvml", "unknown"),
                slots=slots(node), models=inv.get("models", []), labels=node.get("Labels", {}),
                running=running.get(node_id, []), refused=refused_because(node)))
        return result


_reported: set[str] = set()


def refused_because(node: RayNode) -> str | None:
    """Why no task may go to ``node`` (it runs another Hearth or Ray than this head), or None."""
    reason = refusal(node.get("Labels") or {}, hearth_version(), ray.__version__)
    if reason and node["NodeID"] not in _reported:
        _reported.add(node["NodeID"])
        log.warning("refusing node %s (%s): it %s", node["NodeID"][:12], node.get("NodeManagerAddress"), reason)
    return reason


@ray.remote(num_cpus=0)
def release_model(model: str) -> None:
    """Stop this node's server for the ``docker:`` model ``model`` (an eviction)."""
    from agent.models import split_spec
    from agent.models.docker_runtime import DockerModelRuntime

    runtime, name = split_spec(model)
    if runtime == "docker":
        with DockerModelRuntime() as models:
            models.release(name)


@ray.remote(num_cpus=0)
def node_inventory() -> dict[str, Any]:
    """This node's inventory, as JSON (what ``cluster/scheduling/snapshot.py`` reads)."""
    from cluster.nodes import inventory

    return inventory().model_dump(mode="json")
