"""A local head started as ``hearth up`` starts it (a ``ray start --head --block`` process group, the
sidecar as ``python -m cluster.api``), whose parts the chaos tests kill with SIGKILL and restart as
systemd would; plus the checks every chaos case ends with.

Everything here is started by this module and stopped by PID or process group; nothing else is touched.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from agent.processes import wait_until
from cluster import local
from cluster.store import Store

TERMINAL = {"completed", "failed", "cancelled"}
FAST_HEALTH_ENV = {"RAY_health_check_initial_delay_ms": "0", "RAY_health_check_period_ms": "1000",
                   "RAY_health_check_timeout_ms": "3000", "RAY_health_check_failure_threshold": "5"}
"""Ray notices a dead node in seconds instead of ~30 s (read by Ray from the environment), yet a
live raylet on a loaded machine is not declared dead."""


HEAD_HOST, WORKER_HOST = "127.0.0.2", "127.0.0.3"
"""Loopback addresses of the head and of the worker node the node-kill case adds."""


class Head:
    def __init__(self, state: Path, slots: int) -> None:
        self.state = state
        self.slots = slots
        self.info: local.UpInfo | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.port = 0

    # lifecycle -------------------------------------------------------------------------------
    def up(self) -> None:
        """``hearth up`` (what systemd runs again after a crash)."""
        os.environ.update(FAST_HEALTH_ENV)
        os.environ["HEARTH_STATE_DIR"] = str(self.state)
        self.port = self.port or local._free_port()
        # 127.0.0.2, not 127.0.0.1: Ray runs a head on 127.0.0.1 as a one-machine cluster that refuses
        # other nodes (cluster/node_join.py: ray_env), and the node-kill case adds one (on 127.0.0.3).
        self.info = local.up(api_port=self.port, slots=self.slots, host=HEAD_HOST, progress=lambda _: None)

    def down(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(30)
        os.environ["HEARTH_STATE_DIR"] = str(self.state)
        local.down(progress=lambda _: None)

    @property
    def api(self) -> httpx.Client:
        assert self.info is not None
        token = (self.state / "token").read_text().strip()
        return httpx.Client(base_url=self.info.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError), self.api as api:
            return api.get("/v1/health").status_code == 200
        return False

    # processes -------------------------------------------------------------------------------
    def ray_processes(self) -> list[psutil.Process]:
        assert self.info is not None and self.info.ray_pid is not None
        roots = [psutil.Process(self.info.ray_pid)] + [psutil.Process(w.pid) for w in self.workers if w.poll() is None]
        found = []
        for root in roots:
            with contextlib.suppress(psutil.Error):
                found += [root, *root.children(recursive=True)]
        return found

    def actor_pids(self, title: str) -> list[int]:
        """PIDs of this head's Ray workers whose process title starts with ``ray::<title>``."""
        pids = []
        for proc in self.ray_processes():
            with contextlib.suppress(psutil.Error):
                if " ".join(proc.cmdline()).startswith(f"ray::{title}"):
                    pids.append(proc.pid)
        return pids

    def kill_sidecar(self) -> None:
        assert self.info is not None and self.info.sidecar_pid is not None
        os.killpg(self.info.sidecar_pid, signal.SIGKILL)
        psutil.Process(self.info.sidecar_pid).wait(30)

    def start_sidecar(self) -> None:
        """What systemd runs after the sidecar died: `hearth up`, which finds Ray alive and starts the
        sidecar alone (restarting Ray would lose every running attempt)."""
        self.up()

    def kill_head(self) -> None:
        """SIGKILL the Ray head's whole process group (GCS, raylet, every worker) and the sidecar."""
        assert self.info is not None and self.info.ray_pid is not None
        self.kill_sidecar()
        os.killpg(self.info.ray_pid, signal.SIGKILL)
        for proc in self.ray_processes():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(psutil.Error):
            psutil.Process(self.info.ray_pid).wait(30)

    def add_node(self, slots: int) -> subprocess.Popen[bytes]:
        """A second raylet on this machine: a worker node started with the ``ray start`` command
        ``hearth node start`` runs (its Hearth and Ray version labels, so the scheduler places tasks
        there), with the head's cluster token, in its own process group and its own Ray temp dir."""
        from cluster.node_join import ray_env
        from cluster.ray_start import ray_temp_dir, worker_ray_command

        assert self.info is not None
        worker_state = self.state / f"worker-{len(self.workers) + 1}"
        worker_state.mkdir(mode=0o700)
        command = worker_ray_command(address=self.info.ray_address, host=WORKER_HOST, slots=slots,
                                     temp_dir=ray_temp_dir(worker_state))
        with (self.state / "logs" / "worker.log").open("ab") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=ray_env(self.state / "ray-token", WORKER_HOST))
        self.workers.append(proc)
        return proc

    def worker_log(self) -> str:
        log = self.state / "logs" / "worker.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else "(no worker log)"

    # tasks -----------------------------------------------------------------------------------
    def submit(self, project: Path, model: str, n: int = 1) -> list[str]:
        with self.api as api:
            replies = [api.post("/v1/tasks", json={"project_path": str(project), "prd_path": "tasks/prd.json",
                                                   "model": model}) for _ in range(n)]
        assert all(r.status_code == 201 for r in replies), [r.text for r in replies]
        return [r.json()["id"] for r in replies]

    def read(self, read: Any) -> Any:
        store = Store(self.state / "hearth.db", readonly=True)
        try:
            return read(store)
        finally:
            store.close()

    def states(self, task_ids: list[str]) -> dict[str, str]:
        return self.read(lambda s: {t: s.task(t).state.value for t in task_ids})

    def wait_states(self, task_ids: list[str], wanted: set[str], timeout_s: float) -> float:
        """Seconds until every task is in ``wanted``."""
        started = time.monotonic()
        assert wait_until(lambda: set(self.states(task_ids).values()) <= wanted, timeout_s, 0.2), \
            self.states(task_ids)
        return time.monotonic() - started


def assert_nothing_lost(head: Head, task_ids: list[str]) -> dict[str, int]:
    """Every task ended completed, or failed/cancelled with a stated reason; each task's events are
    numbered 1..n with no gap and none journaled twice; no two attempts of a task ever overlapped."""
    def check(store: Store) -> dict[str, int]:
        retried = 0
        for task_id in task_ids:
            task = store.task(task_id)
            assert task.state.value in TERMINAL, (task_id, task.state)
            assert task.state.value == "completed" or task.message, (task_id, task.state, "no reason given")
            events = store.events(task_id, 0, 100_000)
            assert [e.seq for e in events] == list(range(1, len(events) + 1)), (task_id, [e.seq for e in events])
            bodies = [e.model_dump_json(exclude={"seq"}) for e in events]
            assert len(set(bodies)) == len(bodies), (task_id, "an event was journaled twice")
            attempts = store.attempts(task_id)
            for before, after in itertools.pairwise(attempts):
                assert before.ended_at is not None and before.ended_at <= after.started_at, (task_id, "overlap")
            retried += len(attempts) > 1
        return {"tasks": len(task_ids), "tasks_retried": retried}
    result: dict[str, int] = head.read(check)
    return result


def record(case: str, **figures: Any) -> None:
    """Append a case's figures to ``$HEARTH_CHAOS_FIGURES`` (docs/reliability.md is written from it)."""
    line = json.dumps({"case": case, **{k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}})
    print(line)
    if path := os.environ.get("HEARTH_CHAOS_FIGURES"):
        with open(path, "a") as out:
            out.write(line + "\n")
