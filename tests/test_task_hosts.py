"""Warm task hosts on a real Ray cluster (scripted models, named so): attempts on a node reuse one
long-lived host process, and a host killed mid-step loses only its attempt, which a fresh host retries."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import ray
from tests_support import configure, from_store

from cluster.scheduler import wait_for
from cluster.task_actor import NAMESPACE

pytestmark = pytest.mark.ray
ENDED = {"completed", "failed", "cancelled"}


def state(scheduler: Any, task_id: str) -> str:
    return str(from_store(scheduler, lambda store: store.task(task_id).state.value))


def attempts(scheduler: Any, task_id: str) -> list[Any]:
    return list(from_store(scheduler, lambda store: store.attempts(task_id)))


def host_pid(name: str) -> int:
    return int(ray.get(ray.get_actor(name, namespace=NAMESPACE).pid.remote(), timeout=60))


@pytest.fixture
def one_slot_node(ray_cluster: Any) -> Any:
    """A node of its own with one slot: its attempts run one after another."""
    node = ray_cluster.add_node(num_cpus=1, resources={"hearth_slots": 1}, labels={"pool": "hosts"})
    ray_cluster.wait_for_nodes()
    yield node
    ray_cluster.remove_node(node)


def test_scripted_attempts_on_a_node_reuse_one_warm_host_process(scheduler: Any, one_slot_node: Any,
                                                                  greeting_project: Path) -> None:
    configure(greeting_project, allowed_nodes=["pool=hosts"])
    submit = scheduler.submit.remote
    tasks = [ray.get(submit(str(greeting_project), "tasks/prd.json", None, None, "scripted:sleep-1")).id
             for _ in range(3)]
    pids: set[int] = set()

    def note_pid_then_all_ended() -> bool:
        for task_id in tasks:  # the process of whichever host runs now (a host outlives no queue)
            if state(scheduler, task_id) == "running" and (host := attempts(scheduler, task_id)[-1].host):
                pids.add(host_pid(host))
        return all(state(scheduler, t) in ENDED for t in tasks)

    assert wait_for(note_pid_then_all_ended, 240, 0.5)
    assert [state(scheduler, t) for t in tasks] == ["completed"] * 3
    runs = [a for t in tasks for a in attempts(scheduler, t)]
    assert len(runs) == 3 and all(a.node_id == one_slot_node.node_id for a in runs)
    # One host ran all three attempts: one process, started once, not one per attempt.
    assert {a.host for a in runs} == {runs[0].host} and runs[0].host is not None
    assert len(pids) == 1, pids


def test_a_killed_host_loses_its_attempt_and_a_fresh_host_retries_it(scheduler: Any, one_slot_node: Any,
                                                                      greeting_project: Path) -> None:
    configure(greeting_project, allowed_nodes=["pool=hosts"], max_attempts=3)
    task_id = ray.get(scheduler.submit.remote(str(greeting_project), "tasks/prd.json", None, None,
                                              "scripted:sleep-4")).id
    assert wait_for(lambda: state(scheduler, task_id) == "running", 120)
    [first] = attempts(scheduler, task_id)
    assert first.host is not None
    os.kill(host_pid(first.host), signal.SIGKILL)
    assert wait_for(lambda: state(scheduler, task_id) in ENDED, 300)
    assert state(scheduler, task_id) == "completed"
    killed, retry = attempts(scheduler, task_id)
    assert killed.reason == "error" and retry.reason == "completed"
    assert retry.host is not None and retry.host != first.host
    with pytest.raises(ValueError):  # the killed host is gone for good, never handed another attempt
        ray.get_actor(first.host, namespace=NAMESPACE)
