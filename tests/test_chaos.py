"""Chaos: SIGKILL each part of a running local head mid-step, restart it as systemd would, and check
that every task still ends completed (or with a stated reason), that no event is lost or journaled
twice, and that no two attempts of a task ever ran at once. Each case records its figures
(``record``; docs/reliability.md). One head serves every case (the head kill comes last); scripted
models (``scripted:sleep-N`` keeps a step busy N seconds in the sandbox)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chaos_head import Head, assert_nothing_lost, record
from openclaw_fixtures import make_project

from agent.processes import wait_until

pytestmark = pytest.mark.chaos
SLOW_MODEL = "scripted:sleep-4"
"""Each step runs `sleep 4` in the sandbox: long enough to be killed mid-step."""
WAIT_S = 300.0
"""Deadline for any one wait (a loaded CI machine is slow; a quiet one takes seconds)."""


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    # A short path: Ray's unix sockets live under <state>/ray, and a socket path has ~107 bytes.
    state = Path(tempfile.mkdtemp(prefix="hearth-chaos-"))
    started = Head(state, slots=2)
    saved = dict(os.environ)  # up() sets HEARTH_STATE_DIR and Ray's health-check variables here
    try:
        started.up()
        yield started
    finally:
        started.down()
        shutil.rmtree(state, ignore_errors=True)
        os.environ.clear()
        os.environ.update(saved)  # the modules after this one see the session's environment again


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("chaos-project"), "chaos-demo", concurrency=8)


def running(head: Head, task_ids: list[str], n: int | None = None) -> None:
    """Until ``n`` (default: all) of the tasks are mid-step."""
    want = len(task_ids) if n is None else n
    assert wait_until(lambda: list(head.states(task_ids).values()).count("running") >= want, WAIT_S, 0.2), \
        head.states(task_ids)


def ends_clean(head: Head, tasks: list[str], case: str, killed: float, back: Callable[[], bool]) -> dict[str, int]:
    """After a kill at ``killed``: ``back`` comes true (the recovery time), then every task ends
    completed with no event lost or doubled and no attempts overlapping; the figures are recorded."""
    assert wait_until(back, WAIT_S, 0.2), head.states(tasks)
    recover_s = time.monotonic() - killed
    head.wait_states(tasks, {"completed", "failed", "cancelled"}, WAIT_S)
    figures = assert_nothing_lost(head, tasks)
    record(case, recover_s=recover_s, all_ended_s=time.monotonic() - killed, **figures)
    assert head.states(tasks) == dict.fromkeys(tasks, "completed")
    return figures


def test_sidecar_killed_mid_step(head: Head, project: Path) -> None:
    tasks = head.submit(project, SLOW_MODEL, 2)
    running(head, tasks)
    head.kill_sidecar()
    killed = time.monotonic()
    head.start_sidecar()
    ends_clean(head, tasks, "kill -9 sidecar", killed, head.healthy)


def test_scheduler_killed_mid_step(head: Head, project: Path) -> None:
    tasks = head.submit(project, SLOW_MODEL, 2)
    running(head, tasks)
    [pid] = head.actor_pids("Scheduler")
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    ends_clean(head, tasks, "kill -9 scheduler actor", killed,
               lambda: head.actor_pids("Scheduler") not in ([], [pid]) and head.healthy())


def test_task_actor_killed_mid_step(head: Head, project: Path) -> None:
    [task] = head.submit(project, SLOW_MODEL)
    running(head, [task])
    pids = head.actor_pids("TaskActor")
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    killed = time.monotonic()
    figures = ends_clean(head, [task], "kill -9 task actor", killed,
                         lambda: head.read(lambda s: len(s.attempts(task))) >= 2)
    assert figures["tasks_retried"] == 1


def test_node_killed_mid_step(head: Head, project: Path) -> None:
    def alive_nodes() -> set[str]:
        with head.api as api:
            return {n["node_id"] for n in api.get("/v1/nodes").json() if n["alive"]}

    before = alive_nodes()
    worker = head.add_node(slots=2)

    def joined() -> bool:
        nonlocal worker
        if worker.poll() is not None:  # `ray start` gave up (a GCS too busy to answer in time): again
            worker = head.add_node(slots=2)
        return len(alive_nodes() - before) == 1

    assert wait_until(joined, WAIT_S, 0.5), head.worker_log()
    [worker_node] = alive_nodes() - before
    # 2 slots per node: two tasks land on the worker. Longer steps: all four must be mid-step at once.
    tasks = head.submit(project, "scripted:sleep-20", 4)
    running(head, tasks)
    on_worker = head.read(lambda s: [t for t in tasks if s.task(t).node_id == worker_node])
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(30)
    killed = time.monotonic()
    figures = ends_clean(head, tasks, "kill -9 a worker node (its raylet's process group)", killed,
                         lambda: all(head.read(lambda s: [len(s.attempts(t)) >= 2 for t in on_worker])))
    assert figures["tasks_retried"] == len(on_worker) == 2


def test_head_killed_mid_step_and_restarted(head: Head, project: Path) -> None:
    tasks = head.submit(project, SLOW_MODEL, 2)
    running(head, tasks)
    head.kill_head()
    killed = time.monotonic()
    head.up()  # what systemd's Restart= does: `hearth up` again, over the same state dir
    ends_clean(head, tasks, "kill -9 the head (Ray head + scheduler + sidecar), then hearth up", killed, head.healthy)
