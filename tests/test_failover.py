"""Failures on a real multi-node Ray cluster: a node dies mid-step, the scheduler actor dies.

Each test adds and kills its own throwaway nodes; the session's head node stays.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import git
import pytest
import ray
from tests_support import configure, from_store

from agent.project import task_branch
from cluster.scheduler import wait_for
from cluster.store import Store

pytestmark = pytest.mark.ray


def store_of(scheduler: Any) -> Store:
    return Store(Path(scheduler.state_dir) / "hearth.db", readonly=True)


def task(scheduler: Any, task_id: str) -> Any:
    return from_store(scheduler, lambda store: store.task(task_id))


def test_node_loss_restarts_the_task_from_step_0_on_another_node(ray_cluster: Any, scheduler: Any,
                                                                   greeting_project: Path) -> None:
    workers = [ray_cluster.add_node(num_cpus=1, resources={"hearth_slots": 1}, labels={"pool": "failover"})
               for _ in range(2)]
    ray_cluster.wait_for_nodes()
    by_id = {w.node_id: w for w in workers}
    configure(greeting_project, allowed_nodes=["pool=failover"], max_attempts=3)
    row = ray.get(scheduler.submit.remote(str(greeting_project), "tasks/prd.json", None, None, "scripted:sleep-4"))
    task_id = row.id
    assert wait_for(lambda: task(scheduler, task_id).state.value == "running", 60)
    first = task(scheduler, task_id)
    assert first.node_id in by_id
    ray_cluster.remove_node(by_id[first.node_id], allow_graceful=False)
    assert wait_for(lambda: task(scheduler, task_id).state.value in {"completed", "failed"}, 120)
    final = task(scheduler, task_id)
    assert final.state.value == "completed", final.message
    assert final.node_id != first.node_id and final.attempts == 2
    db = store_of(scheduler)
    try:
        kinds = [(e.kind, getattr(e, "reason", None)) for e in db.events(task_id)]
        attempts = db.attempts(task_id)
    finally:
        db.close()
    assert ("attempt_ended", "node_lost") in kinds
    assert ("task_requeued", "node_lost") in kinds
    assert attempts[0].reason == "node_lost" and attempts[1].reason == "completed"
    # The branch holds exactly one checkpoint per step: the restart began again from the base commit.
    repo = git.Repo(greeting_project)
    subjects = [c.summary for c in repo.iter_commits(f"{first.spec.base_commit}..{task_branch(task_id)}")]
    assert subjects == ["US-002: Create goodbye file", "US-001: Create hello file"]
    for worker in workers:
        if worker.node_id != first.node_id:
            ray_cluster.remove_node(worker)


def test_killing_the_scheduler_loses_nothing(ray_cluster: Any, scheduler: Any, greeting_project: Path) -> None:
    row = ray.get(scheduler.submit.remote(str(greeting_project), "tasks/prd.json", None, None, "scripted:sleep-3"))
    task_id = row.id
    assert wait_for(lambda: task(scheduler, task_id).state.value == "running", 60)
    pid = ray.get(scheduler.pid.remote())
    os.kill(pid, signal.SIGKILL)  # a crash, not a polite stop: Ray restarts the actor
    assert wait_for(lambda: _answers(scheduler), 60)
    assert wait_for(lambda: task(scheduler, task_id).state.value in {"completed", "failed"}, 120)
    final = task(scheduler, task_id)
    assert final.state.value == "completed", final.message
    assert final.attempts == 1  # the running attempt was re-attached, not restarted


def _answers(scheduler: Any) -> bool:
    try:
        return ray.get(scheduler.ping.remote(), timeout=5) == "ok"
    except (ray.exceptions.RayError, TimeoutError):
        return False


def test_high_priority_preempts_a_low_one_at_its_next_checkpoint(ray_cluster: Any, scheduler: Any,
                                                                  greeting_project: Path) -> None:
    worker = ray_cluster.add_node(num_cpus=1, resources={"hearth_slots": 1}, labels={"pool": "preempt"})
    ray_cluster.wait_for_nodes()
    configure(greeting_project, allowed_nodes=["pool=preempt"], max_priority=100)
    low = ray.get(scheduler.submit.remote(str(greeting_project), "tasks/prd.json", None, 20, "scripted:sleep-3"))
    assert wait_for(lambda: task(scheduler, low.id).state.value == "running", 60)
    high = ray.get(scheduler.submit.remote(str(greeting_project), "tasks/prd.json", None, 90, "scripted:demo"))
    assert wait_for(lambda: task(scheduler, low.id).state.value in {"yielding", "queued"}, 30)
    assert wait_for(lambda: task(scheduler, high.id).state.value == "completed", 120)
    assert wait_for(lambda: task(scheduler, low.id).state.value == "completed", 120)
    db = store_of(scheduler)
    try:
        low_events, high_events = db.events(low.id), db.events(high.id)
    finally:
        db.close()
    # The victim finished its first step (never interrupted mid-step), yielded, and resumed at step 2.
    started = [(e.attempt_id, e.step_id) for e in low_events if e.kind == "step_started"]
    assert [s for _, s in started] == ["US-001", "US-002"] and started[0][0] != started[1][0]
    requeued = [e for e in low_events if e.kind == "task_requeued"]
    assert requeued and requeued[0].reason == "preempted" and requeued[0].from_step == 1
    first_done = next(e.at for e in low_events if e.kind == "step_completed")
    high_start = next(e.at for e in high_events if e.kind == "step_started")
    assert high_start >= first_done  # the high task waited for the checkpoint, not for the whole task
    assert task(scheduler, low.id).attempts == 2
    ray_cluster.remove_node(worker)
