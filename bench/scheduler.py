"""Benchmark the scheduling policy on a synthetic trace, against a FIFO first-fit baseline.

    python bench/scheduler.py [--tasks 10000] [--seed 7] [--tick 60] [--hours 24]

The trace (fixed seed): 32 nodes (8 x RTX 4090 24 GB, 8 x 2 x RTX 3090 24 GB, 6 x RTX A6000 48 GB,
4 x 2 x A6000, 6 CPU-only NAS boxes: 40 GPUs, 1.3 TB of VRAM), 8 models from 0 (CPU) to 36 GB, and
8 projects that mostly use their own default model (15% of their tasks pick another one); "infra" may
only use the A6000 boxes and "docs" is capped at priority 60. ``--tasks`` tasks arrive in PRD batches
(1 to ~60 tasks from one project) in waves over 24 hours: about 60% of the cluster's throughput on
average, 120% at the crests. 10% of the tasks ask for priority 90 ("high"), 30% for 20, the rest take
their project's base. Each needs 10 to 60 minutes of work in 5-minute steps, a checkpoint after each.

A discrete clock advances ``--tick`` seconds per cycle. Each cycle: tasks finish; tasks asked to yield
do so at their next checkpoint and re-queue with the work they have left; arrivals join the queue;
the scheduler builds a ``Snapshot`` and applies the decisions. Loading a model takes 20 s + 4 s per GB
and the task's work starts once its server is up. Both schedulers run the same trace under the same
rules (one server per model and node, slots, VRAM, project limits and allowed nodes, a CPU per task).
FIFO first-fit takes tasks oldest first and puts each on the first node, in inventory order, that can
take it: a loaded server with a free slot, free VRAM, or VRAM freed by evicting idle servers least
recently used first. It never pre-empts.

Progress goes to stderr; the last line on stdout is one JSON object:

* ``decide_ms_p50`` (wall), ``decide_cpu_ms_p50`` (process CPU), ``decide_ms_max``: 21 runs of one
  ``decide()`` over the full queue: the cluster of the simulation's busiest cycle with every task of the
  trace that is not running queued (``full_queue_tasks``), after ``gc.freeze()``;
  ``decide_ms_p50_sim`` / ``decide_ms_p99_sim``: every simulated cycle with a non-empty queue;
* ``vram_utilization``: mean over the cycles with a non-empty queue of (VRAM of servers that are up
  and serving at least one task) / (all GPU VRAM);
* ``model_loads``: servers started; ``preemptions``: yield requests;
* ``high_priority_wait_s_p50``: median time from submission to first placement of the high tasks;
  ``wait_s_p50`` / ``wait_s_max``: the same over every task (the max shows nothing starves);
* ``makespan_s``: until the last task finished; the same figures with a ``fifo_`` prefix;
* ``load_average_1m``: this machine's load when the figures were taken (wall times include waiting
  for a CPU on a shared box).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.scheduling.policy import decide
from cluster.scheduling.types import (
    Decisions,
    Eviction,
    GpuState,
    LoadedModelState,
    ModelLoad,
    ModelSpec,
    NodeState,
    Placement,
    ProjectPolicy,
    QueuedTask,
    RunningTask,
    Snapshot,
    Waiting,
    WaitReason,
)

GIB = 1024
MODELS = {
    "embedded:smollm2-135m": ModelSpec(vram_mib=0, max_concurrent=2, needs_gpu=False),
    "docker:phi-4-mini": ModelSpec(vram_mib=5 * GIB, max_concurrent=8),
    "docker:qwen2.5-coder-7b": ModelSpec(vram_mib=9 * GIB, max_concurrent=6),
    "docker:llama-3.1-8b": ModelSpec(vram_mib=10 * GIB, max_concurrent=6),
    "docker:qwen2.5-coder-14b": ModelSpec(vram_mib=14 * GIB, max_concurrent=4),
    "docker:deepseek-coder-v2-lite": ModelSpec(vram_mib=18 * GIB, max_concurrent=4),
    "docker:codestral-22b": ModelSpec(vram_mib=22 * GIB, max_concurrent=3),
    "docker:qwen2.5-coder-32b": ModelSpec(vram_mib=36 * GIB, max_concurrent=4),
}
# Each project mostly uses its hearth.toml default model; "infra" may only use the A6000 boxes and
# "docs" is capped at priority 60 (so its "high" tasks are not high).
PROJECTS = {
    "webapp": ProjectPolicy(max_concurrent=160),
    "api": ProjectPolicy(max_concurrent=160),
    "mobile": ProjectPolicy(max_concurrent=160),
    "infra": ProjectPolicy(max_concurrent=80, allowed_nodes=["gpu=a6000"]),
    "docs": ProjectPolicy(base_priority=40, max_priority=60, max_concurrent=60),
    "data": ProjectPolicy(max_concurrent=160),
    "ml": ProjectPolicy(max_concurrent=160),
    "legacy": ProjectPolicy(max_concurrent=160),
}
DEFAULT_MODEL = dict(
    zip(
        PROJECTS,
        [
            "docker:qwen2.5-coder-7b",
            "docker:llama-3.1-8b",
            "docker:phi-4-mini",
            "docker:qwen2.5-coder-32b",
            "embedded:smollm2-135m",
            "docker:deepseek-coder-v2-lite",
            "docker:codestral-22b",
            "docker:qwen2.5-coder-14b",
        ],
        strict=True,
    )
)
PROJECT_WEIGHTS = [0.2, 0.15, 0.1, 0.1, 0.05, 0.15, 0.1, 0.15]
STEP_S = 300.0
CPU_PER_TASK = 1.0
HORIZON_S = 24 * 3600.0
"""Arrivals are spread over this long, in waves (8-hour period): about 60% of the cluster's throughput on
average, 120% at the crests, so the queue swings between empty and several hundred tasks."""


def load_s(model: str) -> float:
    return 20.0 + 4.0 * MODELS[model].vram_mib / GIB


def inventory() -> list[tuple[str, list[tuple[str, int]], int, dict[str, str]]]:
    boxes: list[tuple[str, list[tuple[str, int]], int, dict[str, str]]] = []
    kinds = [
        ("rtx4090", 8, [("NVIDIA GeForce RTX 4090", 24_564)], 16, "4090"),
        ("3090x2", 8, [("NVIDIA GeForce RTX 3090", 24_576)] * 2, 24, "3090"),
        ("a6000", 6, [("NVIDIA RTX A6000", 49_140)], 16, "a6000"),
        ("a6000x2", 4, [("NVIDIA RTX A6000", 49_140)] * 2, 32, "a6000"),
        ("nas", 6, [], 8, "none"),
    ]
    for prefix, count, gpus, cpus, label in kinds:
        for i in range(count):
            boxes.append((f"{prefix}-{i}", gpus, cpus, {"gpu": label}))
    return boxes


def trace(tasks: int, seed: int, horizon_s: float = HORIZON_S) -> tuple[list[QueuedTask], dict[str, float]]:
    """PRD batches (1 to ~60 tasks) from one project at a time, arriving in waves over ``horizon_s``."""
    rng = random.Random(seed)
    queue: list[QueuedTask] = []
    work: dict[str, float] = {}
    mean_batch = 12.0
    peak_rate = 2 * tasks / mean_batch / horizon_s  # batches per second at the crest of a wave
    now = 0.0
    while len(queue) < tasks:
        now += rng.expovariate(peak_rate)
        if rng.random() > 0.5 * (1 + math.sin(2 * math.pi * now / (8 * 3600))):
            continue  # thinning: fewer batches in the troughs
        project = rng.choices(list(PROJECTS), PROJECT_WEIGHTS)[0]
        for _ in range(min(tasks - len(queue), 1 + int(rng.expovariate(1 / (mean_batch - 1))))):
            model = DEFAULT_MODEL[project]
            if rng.random() < 0.15 and project != "docs":
                model = rng.choice([m for m in MODELS if MODELS[m].needs_gpu])
            roll = rng.random()
            priority = 90 if roll < 0.1 else (20 if roll < 0.4 else None)
            task_id = f"T-{len(queue)}"
            queue.append(QueuedTask(id=task_id, project=project, model=model, priority=priority, queued_since=now))
            work[task_id] = STEP_S * rng.randint(2, 12)
    return queue, work


# ------------------------------------------------------------------------------------------ baseline


def _allowed(node: NodeState, patterns: list[str]) -> bool:
    return not patterns or any(
        p == node.id or node.labels.get(p.partition("=")[0]) == p.partition("=")[2] for p in patterns
    )


def fifo_first_fit(snapshot: Snapshot) -> Decisions:
    """Oldest first; first node in inventory order that can take the task. No pre-emption."""
    servers: dict[tuple[str, str], list[float]] = {}  # (node, model) -> [used, slots, gpu, vram, last_used, idle]
    headroom: dict[tuple[str, int], int] = {}
    cpus = {n.id: n.cpus_free for n in snapshot.nodes if n.alive}
    for n in snapshot.nodes:
        for g in n.gpus:
            headroom[n.id, g.index] = min(
                g.free_vram_mib, g.total_vram_mib - sum(m.vram_mib for m in n.loaded if m.gpu_index == g.index)
            )
        for m in n.loaded:
            gpu = -1 if m.gpu_index is None else m.gpu_index
            servers[n.id, m.name] = [0, m.slots_max, gpu, m.vram_mib, m.last_used, m.active_requests]
    for r in snapshot.running:
        if (r.node, r.model) in servers:
            servers[r.node, r.model][0] += 1
    load: dict[str, int] = {}
    for r in snapshot.running:
        load[r.project] = load.get(r.project, 0) + 1
    nodes = [n for n in snapshot.nodes if n.alive]
    placements, loads, evictions, waiting = [], [], [], {}
    wait = Waiting(reason=WaitReason.waiting_for_vram, message="no room")
    blocked: set[tuple[str, str]] = set()
    for task in sorted(snapshot.queued, key=lambda t: (t.queued_since, t.id)):
        project, spec = snapshot.projects[task.project], snapshot.models[task.model]
        key = (task.model, task.project)
        if load.get(task.project, 0) >= project.max_concurrent or key in blocked:
            waiting[task.id] = wait
            continue
        placed = False
        for n in nodes:
            if cpus[n.id] < CPU_PER_TASK or not _allowed(n, project.allowed_nodes):
                continue
            server = servers.get((n.id, task.model))
            gpu_index: int | None = None
            if server is not None:
                if server[0] >= server[1]:
                    continue
                gpu_index = None if server[2] < 0 else int(server[2])
            elif spec.needs_gpu:
                for g in n.gpus:
                    room = headroom[n.id, g.index]
                    idle = sorted(
                        (s[4], name)
                        for (nid, name), s in servers.items()
                        if nid == n.id and s[2] == g.index and s[0] == 0 and s[5] == 0
                    )
                    evict = []
                    for _, name in idle:
                        if room >= spec.vram_mib:
                            break
                        room += int(servers[n.id, name][3])
                        evict.append(name)
                    if g.total_vram_mib >= spec.vram_mib and room >= spec.vram_mib:
                        for name in evict:
                            gone = servers.pop((n.id, name))
                            headroom[n.id, g.index] += int(gone[3])
                            evictions.append(
                                Eviction(
                                    node=n.id, model=name, gpu_index=g.index, vram_mib=int(gone[3]), for_task=task.id
                                )
                            )
                        gpu_index = g.index
                        break
                else:
                    continue
            if server is None:
                servers[n.id, task.model] = [
                    0,
                    spec.max_concurrent,
                    -1 if gpu_index is None else gpu_index,
                    spec.vram_mib,
                    snapshot.now,
                    0,
                ]
                if gpu_index is not None:
                    headroom[n.id, gpu_index] -= spec.vram_mib
                loads.append(
                    ModelLoad(
                        node=n.id, model=task.model, gpu_index=gpu_index, vram_mib=spec.vram_mib, for_task=task.id
                    )
                )
            servers[n.id, task.model][0] += 1
            cpus[n.id] -= CPU_PER_TASK
            load[task.project] = load.get(task.project, 0) + 1
            placements.append(
                Placement(
                    task_id=task.id,
                    node=n.id,
                    model=task.model,
                    gpu_index=gpu_index,
                    load_model=server is None,
                    priority=0.0,
                )
            )
            placed = True
            break
        if not placed:
            blocked.add(key)
            waiting[task.id] = wait
    return Decisions(placements=placements, loads=loads, evictions=evictions, waiting=waiting)


# ---------------------------------------------------------------------------------------- simulation


@dataclass
class _Server:
    gpu: int | None
    vram: int
    slots: int
    ready_at: float
    last_used: float
    tasks: set[str] = field(default_factory=set)


@dataclass
class _Run:
    task: QueuedTask
    node: str
    priority: float
    work_from: float
    ends: float
    yield_at: float | None = None
    last_preempted_at: float | None = None


@dataclass
class Result:
    decide_ms: list[tuple[int, float]] = field(default_factory=list)
    utilization: list[float] = field(default_factory=list)
    loads: int = 0
    preemptions: int = 0
    high_waits: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    """Submission to first placement, every task."""
    makespan_s: float = 0.0
    busiest: Snapshot | None = None
    """The snapshot of the cycle with the longest queue."""


def simulate(
    policy: Callable[[Snapshot], Decisions], tasks: list[QueuedTask], work: dict[str, float], tick: float
) -> Result:
    boxes = inventory()
    total_vram = sum(v for _, gpus, _, _ in boxes for _, v in gpus)
    servers: dict[tuple[str, str], _Server] = {}
    arrivals = sorted(tasks, key=lambda t: t.queued_since)
    arrived = 0
    queue: dict[str, QueuedTask] = {}
    high = {t.id for t in tasks if t.priority == 90}
    submitted = {t.id: t.queued_since for t in tasks}
    left = dict(work)
    runs: dict[str, _Run] = {}
    preempted_at: dict[str, float] = {}
    result, now = Result(), 0.0
    while arrived < len(arrivals) or queue or runs:
        while arrived < len(arrivals) and arrivals[arrived].queued_since <= now:
            queue[arrivals[arrived].id] = arrivals[arrived]
            arrived += 1
        for tid, run in list(runs.items()):
            if run.ends <= now or (run.yield_at is not None and run.yield_at <= now):
                server = servers[run.node, run.task.model]
                server.tasks.discard(tid)
                server.last_used = now
                del runs[tid]
                if run.ends > now:  # yielded at a checkpoint: back to the queue with the work left
                    left[tid] = run.ends - max(run.yield_at or now, run.work_from)
                    queue[tid] = run.task.model_copy(update={"queued_since": now})
        nodes = []
        for name, gpus, cpus, labels in boxes:
            mine = [(m, s) for (n, m), s in servers.items() if n == name]
            busy = sum(1 for r in runs.values() if r.node == name)
            gpu_states = [
                GpuState(
                    index=i, name=model, total_vram_mib=v, free_vram_mib=v - sum(s.vram for _, s in mine if s.gpu == i)
                )
                for i, (model, v) in enumerate(gpus)
            ]
            loaded = [
                LoadedModelState(
                    name=m,
                    gpu_index=s.gpu,
                    vram_mib=s.vram,
                    active_requests=0,
                    last_used=s.last_used,
                    slots_max=s.slots,
                )
                for m, s in mine
            ]
            nodes.append(
                NodeState(id=name, cpus_free=cpus - busy * CPU_PER_TASK, gpus=gpu_states, loaded=loaded, labels=labels)
            )
        running = [
            RunningTask.model_construct(
                id=tid,
                project=r.task.project,
                model=r.task.model,
                node=r.node,
                priority=r.priority,
                at_checkpoint=now <= r.work_from or (now - r.work_from) % STEP_S == 0,
                yielding=r.yield_at is not None,
                started_at=r.work_from,
                last_preempted_at=r.last_preempted_at,
            )
            for tid, r in runs.items()
        ]
        snapshot = Snapshot.model_construct(
            now=now, nodes=nodes, models=MODELS, projects=PROJECTS, queued=list(queue.values()), running=running
        )
        started = time.perf_counter()
        decisions = policy(snapshot)
        result.decide_ms.append((len(queue), (time.perf_counter() - started) * 1000))
        if result.busiest is None or len(queue) > len(result.busiest.queued):
            result.busiest = snapshot
        for e in decisions.evictions:
            assert not servers[e.node, e.model].tasks
            del servers[e.node, e.model]
        for ld in decisions.loads:
            spec = MODELS[ld.model]
            servers[ld.node, ld.model] = _Server(
                ld.gpu_index, spec.vram_mib, spec.max_concurrent, now + load_s(ld.model), now
            )
            result.loads += 1
        for p in decisions.placements:
            task = queue.pop(p.task_id)
            server = servers[p.node, p.model]
            server.tasks.add(task.id)
            begin = max(now, server.ready_at)
            runs[task.id] = _Run(
                task, p.node, p.priority, begin, begin + left[task.id], last_preempted_at=preempted_at.get(task.id)
            )
            if task.id in submitted:
                wait = now - submitted.pop(task.id)
                result.waits.append(wait)
                if task.id in high:
                    result.high_waits.append(wait)
        for pre in decisions.preemptions:
            run = runs[pre.task_id]
            elapsed = max(0.0, now - run.work_from)
            run.yield_at = run.work_from + math.ceil(elapsed / STEP_S) * STEP_S
            run.last_preempted_at = preempted_at[pre.task_id] = now
            result.preemptions += 1
        if queue:
            serving = sum(s.vram for s in servers.values() if s.tasks and s.ready_at <= now)
            result.utilization.append(serving / total_vram)
        for s in servers.values():
            if s.tasks:
                s.last_used = now
        result.makespan_s = max([result.makespan_s, *(r.ends for r in runs.values())])
        now += tick
        if len(result.decide_ms) % 100 == 0:
            print(f"  t={now / 3600:5.1f} h queued={len(queue):5d} running={len(runs):4d}", file=sys.stderr)
    return result


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def full_queue_ms(busiest: Snapshot, tasks: list[QueuedTask], repeats: int = 21) -> list[tuple[float, float]]:
    """``decide()`` on the busiest cycle's cluster with every task of the trace that is not running queued."""
    now, running = busiest.now, {t.id for t in busiest.running}
    queued = [
        t if t.queued_since <= now else t.model_copy(update={"queued_since": now}) for t in tasks if t.id not in running
    ]
    snapshot = busiest.model_copy(update={"queued": queued})
    timings: list[tuple[float, float]] = []
    gc.collect()
    gc.freeze()  # as a long-running scheduler would: the simulations' heap is not the policy's cost
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        decide(snapshot)
        timings.append(((time.perf_counter() - started) * 1000, (time.process_time() - cpu) * 1000))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tick", type=float, default=60.0)
    parser.add_argument("--hours", type=float, default=HORIZON_S / 3600, help="arrivals are spread over this long")
    args = parser.parse_args()
    tasks, work = trace(args.tasks, args.seed, args.hours * 3600)
    print("hearth policy:", file=sys.stderr)
    ours = simulate(decide, tasks, work, args.tick)
    print("fifo first-fit:", file=sys.stderr)
    fifo = simulate(fifo_first_fit, tasks, work, args.tick)
    assert ours.busiest is not None
    full = full_queue_ms(ours.busiest, tasks)
    busy_cycles = [ms for queued, ms in ours.decide_ms if queued]
    figures = {
        "tasks": args.tasks,
        "decide_ms_p50": round(statistics.median(wall for wall, _ in full), 2),
        "decide_cpu_ms_p50": round(statistics.median(cpu for _, cpu in full), 2),
        "decide_ms_max": round(max(wall for wall, _ in full), 2),
        "full_queue_tasks": len(ours.busiest.queued) and args.tasks - len(ours.busiest.running),
        "decide_ms_p50_sim": round(statistics.median(busy_cycles), 2),
        "decide_ms_p99_sim": round(_pct(busy_cycles, 0.99), 2),
        "peak_queue_sim": len(ours.busiest.queued),
        "vram_utilization": round(statistics.fmean(ours.utilization), 4),
        "model_loads": ours.loads,
        "preemptions": ours.preemptions,
        "high_priority_wait_s_p50": round(statistics.median(ours.high_waits), 1),
        "wait_s_p50": round(statistics.median(ours.waits), 1),
        "wait_s_max": round(max(ours.waits), 1),
        "makespan_s": round(ours.makespan_s),
        "fifo_vram_utilization": round(statistics.fmean(fifo.utilization), 4),
        "fifo_model_loads": fifo.loads,
        "fifo_high_priority_wait_s_p50": round(statistics.median(fifo.high_waits), 1),
        "fifo_wait_s_p50": round(statistics.median(fifo.waits), 1),
        "fifo_wait_s_max": round(max(fifo.waits), 1),
        "fifo_makespan_s": round(fifo.makespan_s),
    }
    figures["loads_ratio"] = round(fifo.loads / max(1, ours.loads), 2)
    figures["high_wait_ratio"] = round(
        figures["fifo_high_priority_wait_s_p50"] / max(1.0, figures["high_priority_wait_s_p50"]), 2
    )
    figures["load_average_1m"] = round(os.getloadavg()[0], 2)  # this box is shared: wall times include waiting
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
