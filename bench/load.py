"""Load benchmark: 1,000 one-step PRDs submitted at once through the API of a real local head
(``hearth up``: Ray head, scheduler actor, sidecar), run by a scripted model in the bwrap sandbox.

Prints one JSON object on its last line::

    {"tasks": 1000, "states": {...}, "lost": 0, "tasks_per_s": ..., "list_ms_p50": ..., "list_ms_p99": ...,
     "cli_tasks_ms": ..., ...}

* ``states``: every task's state when the run ends; ``lost``: submitted tasks the API refused or
  the store does not have; ``unfinished``: tasks not ended by ``--deadline-s`` (still queued/running);
* ``tasks_per_s``: tasks ended per second, first submit to last end;
* ``list_ms_p50``/``p99``: ``GET /v1/tasks`` (all tasks) while the load runs;
* ``cli_tasks_ms``: ``hearth tasks`` wall time (a fresh process) with every task listed;
* ``phase_ms_p50``: where a task's time goes (submitted → placed → step started → checkpoint ready →
  attempt ended); ``task_hosts``: how many task host processes ran the ``attempts``;
  ``attempt_reasons``: how the attempts ended; ``retried``: why each retried task's attempt ended;
* ``sse_cpu_s_per_20s``: the sidecar's CPU seconds over 20 s with ``--streams`` idle event streams open.

Baselines measured in the same run: ``python_startup_ms`` (the interpreter alone, the floor of any
CLI command), ``list_ms_idle`` (``GET /v1/tasks`` before the load), ``sidecar_idle_cpu_s_per_20s``
(no streams open). Also ``load_average`` (the machine's 1-minute load when the run ends).

Usage: ``python bench/load.py [--tasks 1000] [--slots 4] [--deadline-s 3600] [--streams 100]``
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(BENCH.parent))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
STATE = Path(os.environ.setdefault("HEARTH_STATE_DIR", tempfile.mkdtemp(prefix="hearth-load-state-")))

import httpx  # noqa: E402
import psutil  # noqa: E402

from agent.events import AttemptEnded  # noqa: E402
from cluster import local  # noqa: E402
from cluster.store import Store  # noqa: E402

TERMINAL = {"completed", "failed", "cancelled"}


def one_step_project(root: Path) -> Path:
    from agent.project import init_project, write_config

    path = root / "load"
    (path / "tasks").mkdir(parents=True)
    prd = {"name": "load", "userStories": [
        {"id": "S-1", "title": "Write a", "acceptanceCriteria": ['a.txt contains "a"'], "passes": False}]}
    (path / "tasks" / "prd.json").write_text(json.dumps(prd, indent=2))
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    project = init_project(path, config={"concurrency": 10_000, "model": "scripted:demo"})
    write_config(path, project.config)
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "load"], cwd=path, check=True)
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def timed_ms(action: Any) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_s(pid: int, window_s: float) -> float:
    proc = psutil.Process(pid)
    before = proc.cpu_times()
    time.sleep(window_s)  # a measurement window, not a synchronisation
    after = proc.cpu_times()
    return round(after.user + after.system - before.user - before.system, 2)


def stream_cost(api: httpx.Client, url: str, headers: dict[str, str], pid: int, streams: int, project: Path
                ) -> dict[str, float]:
    """The sidecar's CPU over 20 s: idle, then with ``streams`` followers of one quiet running task."""
    idle = cpu_s(pid, 20)
    task = api.post("/v1/tasks", json={"project_path": str(project), "prd_path": "tasks/prd.json",
                                       "model": "scripted:sleep-600"}).json()
    stop = threading.Event()

    def follow() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(30, read=None)) as http, \
                http.stream("GET", f"/v1/tasks/{task['id']}/events") as reply:
            for _ in reply.iter_lines():
                if stop.is_set():
                    return

    threads = [threading.Thread(target=follow, daemon=True) for _ in range(streams)]
    for thread in threads:
        thread.start()
    time.sleep(3)  # let every stream connect before the window opens
    busy = cpu_s(pid, 20)
    stop.set()
    api.post(f"/v1/tasks/{task['id']}/cancel")  # ends every stream
    for thread in threads:
        thread.join(30)
    return {"sidecar_idle_cpu_s_per_20s": idle, "sse_cpu_s_per_20s": busy, "sse_streams": streams}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--deadline-s", type=float, default=3600)
    parser.add_argument("--streams", type=int, default=100)
    args = parser.parse_args()

    result: dict[str, Any] = {}
    result["python_startup_ms"] = round(statistics.median(
        timed_ms(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True)) for _ in range(3)), 1)
    project = one_step_project(Path(tempfile.mkdtemp(prefix="hearth-load-")))
    info = local.up(api_port=free_port(), slots=args.slots, progress=lambda m: print(f"· {m}", file=sys.stderr))
    headers = {"Authorization": f"Bearer {local.ensure_token(STATE)}"}
    try:
        with httpx.Client(base_url=info.api_url, headers=headers, timeout=120) as api:
            assert info.sidecar_pid is not None
            if args.streams:
                result |= stream_cost(api, info.api_url, headers, info.sidecar_pid, args.streams, project)
            result["list_ms_idle"] = round(statistics.median(
                timed_ms(lambda: api.get("/v1/tasks").raise_for_status()) for _ in range(5)), 1)
            result |= load(api, project, args)
            env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
            result["cli_tasks_ms"] = round(statistics.median(timed_ms(lambda: subprocess.run(
                [sys.executable, "-m", "cluster.cli", "tasks"], env=env, check=True, capture_output=True))
                for _ in range(3)), 1)
    finally:
        local.down(progress=lambda m: print(f"· {m}", file=sys.stderr))
        shutil.rmtree(STATE, ignore_errors=True)
    result["load_average"] = round(os.getloadavg()[0], 1)
    first = ["tasks", "states", "lost", "tasks_per_s", "list_ms_p50", "list_ms_p99", "cli_tasks_ms"]
    print(json.dumps({key: result[key] for key in first} | {k: v for k, v in result.items() if k not in first}))


def load(api: httpx.Client, project: Path, args: argparse.Namespace) -> dict[str, Any]:
    body = {"project_path": str(project), "prd_path": "tasks/prd.json", "model": "scripted:demo"}
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: api.post("/v1/tasks", json=body), range(args.tasks)))
    ids = [r.json()["id"] for r in replies if r.status_code == 201]
    submit_s = time.time() - started
    list_ms: list[float] = []
    deadline = started + args.deadline_s
    while time.time() < deadline:
        took = time.perf_counter()
        listed = api.get("/v1/tasks").json()
        list_ms.append((time.perf_counter() - took) * 1000)
        ours = {t["id"]: t["state"] for t in listed}
        if all(ours.get(i) in TERMINAL for i in ids):
            break
        time.sleep(0.5)
    store = Store(STATE / "hearth.db", readonly=True)
    try:
        rows = {t.id: t for t in store.tasks()}
        ended_at = max((rows[i].updated_at for i in ids if i in rows), default=started)
        phases = phase_ms(store)
        hosts = store.db.execute("SELECT COUNT(DISTINCT host), COUNT(*) FROM attempts").fetchone()
        # Why each attempt ended, and the message of every retried one: a retry is a fault to explain.
        reasons = dict(store.db.execute("SELECT COALESCE(reason, 'running'), COUNT(*) FROM attempts GROUP BY 1"))
        retried = [f"{e.task_id}: {e.reason.value}: {e.message}"[:300]
                   for t in ids if t in rows and rows[t].attempts > 1
                   for e in store.events(t) if isinstance(e, AttemptEnded) and e.reason.value != "completed"]
    finally:
        store.close()
    states = collections.Counter(rows[i].state.value if i in rows else "missing" for i in ids)
    lost = (args.tasks - len(ids)) + sum(1 for i in ids if i not in rows)
    done = sum(states[s] for s in TERMINAL)
    return {"tasks": args.tasks, "states": dict(states), "lost": lost, "unfinished": len(ids) - done,
            "submit_s": round(submit_s, 1),
            "tasks_per_s": round(done / max(ended_at - started, 1e-9), 2),
            "list_ms_p50": round(percentile(list_ms, 0.5), 1), "list_ms_p99": round(percentile(list_ms, 0.99), 1),
            "phase_ms_p50": phases, "task_hosts": hosts[0], "attempts": hosts[1], "attempt_reasons": reasons,
            "retried": retried[:10]}


PHASES = {"queued_to_placed": ("task_submitted", "task_placed"), "placed_to_step": ("task_placed", "step_started"),
          "step_to_checkpoint": ("step_started", "checkpoint_ready"),
          "checkpoint_to_end": ("checkpoint_ready", "attempt_ended")}
"""Where one attempt's time goes, between the events it journals (first of each kind per task)."""


def phase_ms(store: Store) -> dict[str, float]:
    """p50 of each phase over every task that went through it."""
    at: dict[tuple[str, str], float] = {}
    for task_id, kind, when in store.db.execute("SELECT task_id, kind, MIN(at) FROM events GROUP BY task_id, kind"):
        at[(task_id, kind)] = when
    tasks = {task_id for task_id, _ in at}
    return {name: round(percentile([(at[(t, end)] - at[(t, begin)]) * 1000 for t in tasks
                                    if (t, begin) in at and (t, end) in at], 0.5), 1)
            for name, (begin, end) in PHASES.items()}


if __name__ == "__main__":
    main()
