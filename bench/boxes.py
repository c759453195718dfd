"""The ``boxes`` section of bench/cluster.py: real boxes that share nothing but the network, against
``ray.cluster_utils`` measured the same way in the same run.

``python bench/boxes.py`` prints one JSON object on its last line, ``{"boxes": {…}, "cluster_utils": {…}}``,
each with:

* ``submit_to_first_step_ms_p50`` — the scheduler accepts a one-step task → its first StepStarted is
  journaled (warm; the task runs on a box, the head runs none);
* ``checkpoint_transfer_ms`` — a checkpoint commit on a box reaches the head's repository: an
  incremental git bundle made on the box, carried by Ray's object store to an actor on the head, which
  verifies it and fetches it into a bare repository (the path checkpoints take). For a commit of 200
  small files and for one of 50 MB (incompressible);
* ``node_loss_to_restart_s`` — the box running a task loses every process mid-step → the task's next
  attempt starts its first step on the other box. Both clusters run Ray's default health checks.

Each side runs in its own process: a Ray driver keeps its token settings for life, and the boxes use
token auth. The boxes are tests/boxes_fixtures.py's: ``hearth up --slots 0`` plus two
``hearth node start --address`` in their own mount namespaces.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
FINAL = {"completed", "failed", "cancelled"}
SUBMITS = 5


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", *args], cwd=cwd, check=True,
                   capture_output=True)


def make_project(root: Path, name: str, steps: int) -> Path:
    from agent.project import init_project

    path = root / name
    (path / "tasks").mkdir(parents=True)
    stories = [{"id": f"S-{n}", "title": f"Write {n}", "acceptanceCriteria": [f'f{n}.txt contains "{n}"'],
                "passes": False, **({"dependsOn": [f"S-{n - 1}"]} if n > 1 else {})} for n in range(1, steps + 1)]
    (path / "tasks" / "prd.json").write_text(json.dumps({"name": name, "userStories": stories}, indent=2))
    _git(path, "init", "-q", "-b", "main")
    init_project(path, config={"concurrency": 100, "max_attempts": 3})
    _git(path, "add", "-A")
    _git(path, "commit", "-qm", "prd")
    return path


def checkpoint_transfer_ms(head_node: str, box_node: str) -> dict[str, float]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    class HeadRepo:
        def __init__(self) -> None:
            self.bare = Path(tempfile.mkdtemp(prefix="hearth-bench-head-"))
            subprocess.run(["git", "init", "-q", "--bare", str(self.bare)], check=True)

        def receive(self, bundle: bytes) -> str:
            path = self.bare / "incoming.bundle"
            path.write_bytes(bundle)
            subprocess.run(["git", "bundle", "verify", "-q", str(path)], cwd=self.bare, check=True,
                           capture_output=True)
            subprocess.run(["git", "fetch", "-q", str(path), "+refs/heads/*:refs/heads/*"], cwd=self.bare,
                           check=True, capture_output=True)
            return "ok"

    @ray.remote(num_cpus=0)
    def on_box(head: Any, files: int, file_bytes: int) -> float:
        import shutil

        repo = Path(tempfile.mkdtemp(prefix="hearth-bench-box-"))
        git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
        subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
        (repo / "README").write_text("base\n")
        subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
        subprocess.run([*git, "commit", "-qm", "base"], cwd=repo, check=True)
        base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                              text=True).stdout.strip()
        first = subprocess.run(["git", "bundle", "create", "-q", "-", "main"], cwd=repo, check=True,
                               capture_output=True).stdout
        ray.get(head.receive.remote(first))  # the head has the base, as it does a task's base commit
        for n in range(files):
            (repo / f"file-{n:04d}.bin").write_bytes(os.urandom(file_bytes))
        subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
        subprocess.run([*git, "commit", "-qm", "checkpoint"], cwd=repo, check=True)
        started = time.perf_counter()
        bundle = subprocess.run(["git", "bundle", "create", "-q", "-", f"{base}..main"], cwd=repo, check=True,
                                capture_output=True).stdout
        ray.get(head.receive.remote(bundle))
        elapsed = (time.perf_counter() - started) * 1000
        shutil.rmtree(repo, ignore_errors=True)
        return elapsed

    head = HeadRepo.options(  # type: ignore[attr-defined]
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=head_node, soft=False)).remote()
    box = on_box.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=box_node, soft=False))
    figures = {}
    for label, files, size in (("200_files", 200, 512), ("50_mb", 50, 1024 * 1024)):
        samples = [ray.get(box.remote(head, files, size)) for _ in range(3)]
        figures[label] = round(statistics.median(samples), 1)
    ray.kill(head)
    return figures


def measure(scheduler: Any, db: Path, root: Path, head_node: str, boxes: list[str],
            kill: Callable[[str], None]) -> dict[str, Any]:
    import ray

    from cluster.scheduler import wait_for
    from cluster.store import Store

    def task(task_id: str) -> Any:
        store = Store(db, readonly=True)
        try:
            return store.task(task_id), store.events(task_id)
        finally:
            store.close()

    def first(task_id: str, kind: str, after: float = 0.0) -> float | None:
        return next((e.at for e in task(task_id)[1] if e.kind == kind and e.at >= after), None)

    def submit(project: Path, model: str) -> str:
        return str(ray.get(scheduler.submit.remote(str(project), "tasks/prd.json", None, None, model)).id)

    result: dict[str, Any] = {}
    fast = make_project(root, "fast", steps=1)
    warm = submit(fast, "scripted:demo")
    wait_for(lambda: task(warm)[0].state.value in FINAL, 300, 0.1)
    latencies = []
    for _ in range(SUBMITS):
        submitted = time.time()
        task_id = submit(fast, "scripted:demo")
        wait_for(lambda task_id=task_id: first(task_id, "step_started") is not None, 300, 0.01)
        latencies.append(((first(task_id, "step_started") or submitted) - submitted) * 1000)
        wait_for(lambda task_id=task_id: task(task_id)[0].state.value in FINAL, 300, 0.1)
    result["submit_to_first_step_ms_p50"] = round(statistics.median(latencies), 1)
    result["checkpoint_transfer_ms"] = checkpoint_transfer_ms(head_node, boxes[0])

    slow = make_project(root, "slow", steps=2)
    task_id = submit(slow, "scripted:sleep-6")
    wait_for(lambda: first(task_id, "step_started") is not None, 300, 0.05)
    victim = task(task_id)[0].node_id
    killed = time.time()
    kill(victim)
    wait_for(lambda: task(task_id)[0].attempts >= 2 and first(task_id, "step_started", after=killed) is not None,
             300, 0.1)
    restarted = first(task_id, "step_started", after=killed)
    result["node_loss_to_restart_s"] = round(restarted - killed, 2) if restarted else None
    wait_for(lambda: task(task_id)[0].state.value in FINAL, 300, 0.2)
    result["node_loss_task_state"] = task(task_id)[0].state.value
    return result


def on_cluster_utils() -> dict[str, Any]:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.setdefault("HEARTH_STATE_DIR", tempfile.mkdtemp(prefix="hearth-bench-state-"))
    import ray
    from ray.cluster_utils import Cluster

    from cluster.scheduler import get_or_create_scheduler

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1, resources={"hearth_slots": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="hearth", logging_level="ERROR", log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="hearth-bench-cu-"))
    try:
        scheduler = get_or_create_scheduler(str(root / "state"))
        by_id = {w.node_id: w for w in workers}
        head = next(n["NodeID"] for n in ray.nodes() if n["NodeID"] not in by_id)
        return measure(scheduler, root / "state" / "hearth.db", root, head, list(by_id),
                       lambda node: cluster.remove_node(by_id[node], allow_graceful=False))
    finally:
        ray.shutdown()
        cluster.shutdown()


def on_boxes() -> dict[str, Any]:
    from boxes_fixtures import boxes_cluster

    started = time.time()
    with boxes_cluster([("bench-a", "127.0.0.3"), ("bench-b", "127.0.0.4")]) as (head, boxes):
        joined_s = round(time.time() - started, 1)
        os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(head.state / "ray-token")})
        import ray

        from cluster.task_actor import NAMESPACE, SCHEDULER_NAME

        ray.init(address=head.address, namespace="hearth", logging_level="ERROR", log_to_driver=False,
                 _node_ip_address=head.host)
        try:
            nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
            head_node = next(i for i, n in nodes.items() if n["Labels"].get("hearth-role") == "head")
            by_node = {i: next(b for b in boxes if b.ip == n["NodeManagerAddress"])
                       for i, n in nodes.items() if i != head_node}
            scheduler = ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
            result = measure(scheduler, head.state / "hearth.db", head.state.parent, head_node, list(by_node),
                             lambda node: by_node[node].kill())
        finally:
            ray.shutdown()
    result["head_and_two_boxes_up_s"] = joined_s
    return result


def run_side(side: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, side], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr or done.stdout).strip()[-800:]}
    return dict(json.loads(lines[-1]))


def boxes_figures() -> dict[str, Any]:
    return {"cluster_utils": run_side("cluster_utils"), "boxes": run_side("boxes")}


if __name__ == "__main__":
    if sys.argv[1:] == ["cluster_utils"]:
        print(json.dumps(on_cluster_utils()))
    elif sys.argv[1:] == ["boxes"]:
        print(json.dumps(on_boxes()))
    else:
        print(json.dumps(boxes_figures()))
