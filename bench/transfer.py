"""Code transfer between a node and the head (agent/transport.py ↔ cluster/repos.py), in ms.

For two repositories — 200 small files, and 50 MB of incompressible data in 50 files — it measures:

* ``<repo>_base_fetch_ms`` — a node with an empty cache gets the task's base commit from the head
  (one bundle of the whole history) and clones its workspace from its cache.
* ``<repo>_checkpoint_ms_p50`` — one checkpoint (3 files changed) goes back to the head: an
  incremental bundle is made, sent, verified and fetched into the mirror, and the task branch is
  pushed to the project's repository.

Each is measured through Ray (``ray``: the node is a ``cluster_utils`` worker node and the bundle
bytes ride the object store to an actor on the head, as with the scheduler) and, as the baseline in
the same run, in-process (``direct``: the same git work with no Ray hop). Prints one JSON object on
its last line. ``run_transfer_bench(ray_address)`` is the function bench/cluster.py's boxes section
can call on a cluster it already has (it returns the dict instead of printing).
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

BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(BENCH.parent))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from agent.transport import NodeCode  # noqa: E402
from cluster.project_code import InProcessCodeHost, ProjectCode  # noqa: E402

CHECKPOINTS = 5
REPOS = {"files200": (200, 200), "mb50": (50, 1024 * 1024)}
"""name → (files, bytes per file): 200 small text files; 50 files of 1 MiB of random bytes."""


def make_repo(root: Path, files: int, size: int) -> Path:
    path = root / "project"
    path.mkdir(parents=True)
    for i in range(files):
        data = os.urandom(size) if size >= 4096 else (f"line {i}\n" * (size // 8)).encode()
        (path / f"f{i:04d}.bin").write_bytes(data)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-qm", "base"], cwd=path, check=True, env=env)
    return path


class HeadSide:
    """The head's side as the scheduler runs it (mirror, verify, publish), without the task table."""

    def __init__(self, state: str, project: str, source: str) -> None:
        self.code = ProjectCode(Path(state))
        self.project, self.source = project, source

    def open(self) -> str:
        return self.code.repos.refresh(self.project, self.source)

    def bundle(self, commit: str, have: list[str]) -> bytes:
        return self.code.bundle(self.project, commit, have)

    def checkpoint(self, task_id: str, commit: str, bundle: bytes) -> None:
        self.code.take_checkpoint(self.project, f"{task_id}.1-bench", commit, bundle)
        self.code.publish(self.project, self.source, task_id)


class ActorHost:
    """``CodeHost`` over a Ray actor handle (what cluster/task_actor.RayCodeHost does via the scheduler)."""

    def __init__(self, head: Any, task_id: str) -> None:
        self.head, self.task_id = head, task_id

    def bundle(self, commit: str, have: list[str]) -> bytes:
        return bytes(ray.get(self.head.bundle.remote(commit, have)))

    def checkpoint(self, commit: str, bundle: bytes) -> None:
        ray.get(self.head.checkpoint.remote(self.task_id, commit, bundle))

    def put_blob(self, kind: str, name: str, data: bytes) -> None:
        raise NotImplementedError

    def get_blob(self, kind: str, name: str) -> bytes | None:
        raise NotImplementedError


def node_run(host: Any, node_state: str, task_id: str, base: str) -> dict[str, float]:
    """On a node: fetch the base, then send ``CHECKPOINTS`` checkpoints; times in ms."""
    code = NodeCode(host, Path(node_state) / "repos" / "p.git", task_id)
    started = time.perf_counter()
    repo = code.workspace(base, Path(node_state) / "work" / task_id)
    fetch_ms = (time.perf_counter() - started) * 1000
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "b")
        cfg.set_value("user", "email", "b@b")
    times = []
    for n in range(CHECKPOINTS):
        for i in range(3):
            (Path(repo.working_tree_dir or ".") / f"f{i:04d}.bin").write_bytes(os.urandom(2048) + bytes([n]))
        started = time.perf_counter()
        repo.git.add("-A")
        repo.git.commit("-qm", f"checkpoint {n}")
        code.send_checkpoint(repo)
        times.append((time.perf_counter() - started) * 1000)
    return {"base_fetch_ms": round(fetch_ms, 1), "checkpoint_ms_p50": round(statistics.median(times), 1)}


@ray.remote(num_cpus=0)
def node_run_remote(head: Any, node_state: str, task_id: str, base: str) -> dict[str, float]:
    return node_run(ActorHost(head, task_id), node_state, task_id, base)


def run_transfer_bench(ray_address: str | None = None, node_resource: str | None = None) -> dict[str, float]:
    """Figures for both repositories; ``node_resource``: a custom resource that pins the node side to a
    worker node (so the bytes cross between raylets), None for any node."""
    result: dict[str, float] = {}
    head_actor = ray.remote(num_cpus=0, resources={"node:__internal_head__": 0.001})(HeadSide)
    for name, (files, size) in REPOS.items():
        with tempfile.TemporaryDirectory(prefix=f"hearth-transfer-{name}-") as tmp:
            root = Path(tmp)
            source = make_repo(root, files, size)
            direct_head = HeadSide(str(root / "head-direct"), "p", str(source))
            base = direct_head.open()
            host = InProcessCodeHost(direct_head.code, "p", str(source), "T-1.1-bench")
            for key, value in node_run(host, str(root / "node-direct"), "T-1", base).items():
                result[f"{name}_direct_{key}"] = value
            head = head_actor.remote(str(root / "head-ray"), "p", str(source))
            ray.get(head.open.remote())
            options: dict[str, Any] = {"resources": {node_resource: 0.001}} if node_resource else {}
            figures = ray.get(node_run_remote.options(**options).remote(head, str(root / "node-ray"), "T-2", base))
            for key, value in figures.items():
                result[f"{name}_ray_{key}"] = value
            ray.kill(head)
    return result


def main() -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={"bench_node": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        result = run_transfer_bench(node_resource="bench_node")
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
