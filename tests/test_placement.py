"""From what the scheduler knows to the policy's snapshot: node inventories, loaded model servers,
and servers planned but not reported yet (``cluster/scheduling/snapshot.py``; pure, no Ray)."""

from __future__ import annotations

from typing import Any

from cluster.scheduling.policy import PolicyConfig, decide
from cluster.scheduling.snapshot import PENDING_LOAD_S, build_snapshot, with_pending_loads
from cluster.scheduling.types import ModelSpec

GPU_NODE = {"NodeID": "n1", "Alive": True, "Resources": {"hearth_slots": 4}, "Labels": {}}
A6000 = {"index": 0, "name": "NVIDIA RTX A6000", "total_vram_mib": 49_152, "free_vram_mib": 30_000}


def inventory(*models: dict[str, Any]) -> dict[str, Any]:
    return {"gpus": [A6000], "models": list(models)}


def test_a_nodes_model_containers_reach_the_snapshot_as_loaded_servers() -> None:
    inv = inventory({"model": "docker:qwen", "gpu_index": 0, "vram_mib": 18_000},
                    {"model": "docker:ghost", "gpu_index": 3, "vram_mib": 9_000})  # GPU 3 unknown to NVML
    [node] = build_snapshot(0.0, {"n1": GPU_NODE}, {"n1": inv}, [], [], {}).nodes
    loaded = {m.name: (m.gpu_index, m.vram_mib) for m in node.loaded}
    assert loaded == {"docker:qwen": (0, 18_000), "docker:ghost": (None, 0)}


def test_a_planned_server_counts_until_the_inventory_shows_it() -> None:
    pending = {("n1", "docker:qwen"): (0, 18_000, 100.0)}
    merged = with_pending_loads({"n1": inventory()}, pending, now=101.0)
    assert merged["n1"]["models"] == [{"model": "docker:qwen", "gpu_index": 0, "vram_mib": 18_000}]
    assert pending  # still loading
    # The inventory now reports it: the pending entry is dropped, nothing is counted twice.
    reported = inventory({"model": "docker:qwen", "gpu_index": 0, "vram_mib": 18_500})
    merged = with_pending_loads({"n1": reported}, pending, now=102.0)
    assert [m["vram_mib"] for m in merged["n1"]["models"]] == [18_500] and not pending
    # A load that never showed up is forgotten after PENDING_LOAD_S.
    stale = {("n1", "docker:qwen"): (0, 18_000, 0.0)}
    assert with_pending_loads({"n1": inventory()}, stale, now=PENDING_LOAD_S + 1)["n1"]["models"] == []
    assert not stale


def test_pending_loads_stop_the_same_vram_being_planned_twice(monkeypatch: Any) -> None:
    """Two tasks for a 20 GB model, 30 GB free: the first is placed with a new server; planned again
    before the node reports that server, the second must share it, not load a second copy."""
    import cluster.scheduling.snapshot as placement

    monkeypatch.setattr(placement, "model_spec", lambda model: ModelSpec(vram_mib=20_000, max_concurrent=2))
    from tests_support import queued_row

    first, second = queued_row("T-1", "docker:big"), queued_row("T-2", "docker:big")
    pending: dict[tuple[str, str], tuple[int | None, int, float]] = {}
    snapshot = build_snapshot(10.0, {"n1": GPU_NODE}, {"n1": inventory()}, [first], [], {})
    decisions = decide(snapshot, PolicyConfig())
    [load] = decisions.loads
    pending[(load.node, load.model)] = (load.gpu_index, load.vram_mib, 10.0)

    merged = with_pending_loads({"n1": inventory()}, pending, now=11.0)
    placed = queued_row("T-1", "docker:big", node="n1")
    snapshot = build_snapshot(11.0, {"n1": GPU_NODE}, merged, [second], [placed], {})
    decisions = decide(snapshot, PolicyConfig())
    assert decisions.loads == [] and [(p.task_id, p.load_model) for p in decisions.placements] == [("T-2", False)]


def test_a_projects_policy_comes_from_its_newest_submission() -> None:
    # An older task still running was submitted when hearth.toml pinned the project to node "a";
    # the newer one was submitted after the pin was lifted: the queue follows the newer config.
    from tests_support import queued_row

    old = queued_row("T-1", "scripted:demo", node="a")
    pinned = old.spec.model_copy(update={"config": old.spec.config.model_copy(update={"allowed_nodes": ["a"]})})
    old = old.model_copy(update={"spec": pinned, "created_at": 1.0})
    new = queued_row("T-2", "scripted:demo").model_copy(update={"created_at": 2.0})
    assert build_snapshot(3.0, {}, {}, [new], [old], {}).projects["p"].allowed_nodes == []
    # and the other way round: an older queued task does not bring back an old pin
    newer_pinned = old.model_copy(update={"created_at": 4.0})
    assert build_snapshot(5.0, {}, {}, [new], [newer_pinned], {}).projects["p"].allowed_nodes == ["a"]
