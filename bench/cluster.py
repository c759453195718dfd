"""Cluster benchmark on a real 3-node ``ray.cluster_utils`` cluster (scripted model, bwrap sandbox).

Prints one JSON object on its last line:

* ``submit_to_first_step_ms_p50`` — submit → the task's first StepStarted is journaled (warm cluster).
* ``node_loss_to_restart_s`` — a node is killed mid-step → the task's new attempt runs elsewhere.
* ``preempt_to_start_s`` — a high-priority submit on a full cluster → it starts, minus the victim's
  time to its next checkpoint (only pre-emption overhead is left). The scheduler runs with
  ``preempt_after_s = 0``: the default policy first waits 120 s for a slot to free by itself, a
  deliberate patience this figure leaves out.
* ``tasks_per_s`` — 200 one-step tasks submitted at once, completed per second.
* ``boxes`` — the same path on real boxes that share nothing but the network (bench/boxes.py),
  with its own cluster_utils baseline measured in the same run. ``--only boxes`` runs just that.

Baseline in the same run: ``ray_actor_roundtrip_ms_p50`` (creating a trivial actor and calling it
once), the floor any actor-per-attempt design pays.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# `python bench/cluster.py` puts bench/ first on sys.path, where this file would shadow the
# `cluster` package: look in the repository root instead.
BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(BENCH.parent))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HEARTH_STATE_DIR", tempfile.mkdtemp(prefix="hearth-bench-state-"))

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from agent.project import init_project, write_config  # noqa: E402
from cluster.scheduler import get_or_create_scheduler, wait_for  # noqa: E402
from cluster.store import Store  # noqa: E402

POLICY = {"preempt_after_s": 0, "preempt_cooldown_s": 5}
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
               "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}


def one_step_project(root: Path, name: str, **config: Any) -> Path:
    path = root / name
    (path / "tasks").mkdir(parents=True)
    prd = {"name": name, "userStories": [
        {"id": "S-1", "title": "Write a", "acceptanceCriteria": ['a.txt contains "a"'], "passes": False},
        {"id": "S-2", "title": "Write b", "acceptanceCriteria": ['b.txt contains "b"'], "passes": False,
         "dependsOn": ["S-1"]}][: config.pop("steps", 1)]}
    (path / "tasks" / "prd.json").write_text(json.dumps(prd, indent=2))
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    project = init_project(path, config={"concurrency": 1000, **config})
    write_config(path, project.config)
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "prd"], cwd=path, check=True)
    return path


class Bench:
    def __init__(self, state: Path) -> None:
        self.db = state / "hearth.db"
        self.scheduler = get_or_create_scheduler(str(state), policy=POLICY)

    def submit(self, project: Path, model: str = "scripted:demo", priority: int | None = None) -> str:
        row = ray.get(self.scheduler.submit.remote(str(project), "tasks/prd.json", None, priority, model))
        return str(row.id)

    def events(self, task_id: str) -> list[Any]:
        store = Store(self.db, readonly=True)
        try:
            return store.events(task_id)
        finally:
            store.close()

    def task(self, task_id: str) -> Any:
        store = Store(self.db, readonly=True)
        try:
            return store.task(task_id)
        finally:
            store.close()

    def first(self, task_id: str, kind: str, after: float = 0.0) -> float | None:
        return next((e.at for e in self.events(task_id) if e.kind == kind and e.at >= after), None)


@ray.remote(num_cpus=0)
class Echo:
    def ping(self) -> int:
        return 1


def main() -> None:
    if sys.argv[1:] == ["--only", "boxes"]:
        print(json.dumps(boxes_section()))
        return
    result = cluster_utils_section()
    result["boxes"] = boxes_section()
    print(json.dumps(result))


def cluster_utils_section() -> dict[str, Any]:
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "_system_config": FAST_HEALTH})
    workers = [cluster.add_node(num_cpus=1, resources={"hearth_slots": 2}, labels={"pool": "w"})
               for _ in range(2)]
    ray.init(address=cluster.address, namespace="hearth", logging_level="ERROR", log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="hearth-bench-"))
    bench = Bench(root / "state")
    result: dict[str, Any] = {}
    try:
        baseline = []
        for _ in range(10):
            started = time.perf_counter()
            actor = Echo.remote()  # type: ignore[attr-defined]
            ray.get(actor.ping.remote())
            baseline.append((time.perf_counter() - started) * 1000)
            ray.kill(actor)
        result["ray_actor_roundtrip_ms_p50"] = round(statistics.median(baseline), 1)

        fast = one_step_project(root, "fast")
        bench.submit(fast)  # warm-up: worker processes, imports
        latencies = []
        for _ in range(10):
            submitted = time.time()
            task_id = bench.submit(fast)
            wait_for(lambda task_id=task_id: bench.first(task_id, "step_started") is not None, 60, 0.01)
            latencies.append(((bench.first(task_id, "step_started") or submitted) - submitted) * 1000)
        result["submit_to_first_step_ms_p50"] = round(statistics.median(latencies), 1)

        slow = one_step_project(root, "slow", allowed_nodes=["pool=w"], steps=2)
        task_id = bench.submit(slow, model="scripted:sleep-5")
        wait_for(lambda: bench.first(task_id, "step_started") is not None, 60, 0.05)
        node = bench.task(task_id).node_id
        victim = next(w for w in workers if w.node_id == node)
        killed = time.time()
        cluster.remove_node(victim, allow_graceful=False)
        wait_for(lambda: bench.task(task_id).attempts >= 2
                 and bench.first(task_id, "step_started", after=killed) is not None, 60, 0.05)
        restarted = bench.first(task_id, "step_started", after=killed)
        result["node_loss_to_restart_s"] = round((restarted or killed) - killed, 2) if restarted else None
        workers = [w for w in workers if w is not victim]
        wait_for(lambda: bench.task(task_id).state.value in {"completed", "failed"}, 120, 0.2)

        # Pre-emption: fill the surviving worker's slots with low-priority two-step tasks, then
        # submit a high-priority one. Overhead = its first step starting minus the moment the
        # first victim reached its checkpoint (the earliest it may yield).
        busy = one_step_project(root, "busy", allowed_nodes=["pool=w"], steps=2, max_priority=100)
        overheads = []
        for _ in range(3):
            lows = [bench.submit(busy, model="scripted:sleep-3", priority=10) for _ in range(2)]
            wait_for(lambda lows=lows: all(bench.first(i, "step_started") is not None for i in lows), 60, 0.02)
            high_submitted = time.time()
            high = bench.submit(busy, model="scripted:demo", priority=90)
            wait_for(lambda high=high: bench.first(high, "step_started") is not None, 60, 0.01)
            high_started = bench.first(high, "step_started") or high_submitted
            checkpoints = [bench.first(i, "step_completed") for i in lows]
            reached = min((c for c in checkpoints if c is not None), default=high_submitted)
            overheads.append(high_started - max(reached, high_submitted))
            wait_for(lambda ids=[*lows, high]: all(bench.task(i).state.value in {"completed", "failed"}
                                                   for i in ids), 120, 0.2)
        result["preempt_to_start_s"] = round(statistics.median(overheads), 2)

        many = one_step_project(root, "many")
        started = time.time()
        ids = [bench.submit(many) for _ in range(200)]
        wait_for(lambda: all(bench.task(i).state.value in {"completed", "failed"} for i in ids), 900, 0.5)
        elapsed = time.time() - started
        done = sum(bench.task(i).state.value == "completed" for i in ids)
        result["tasks_per_s"] = round(done / elapsed, 2)
        result["tasks_completed"] = done
    finally:
        ray.shutdown()
        cluster.shutdown()
    return result


def boxes_section() -> dict[str, Any]:
    from bench.boxes import boxes_figures

    return boxes_figures()


if __name__ == "__main__":
    sys.exit(main())
