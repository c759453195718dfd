"""The scheduling policy, driven through ``decide()`` with hand-built snapshots: no Ray, no clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cluster.scheduling.policy import PolicyConfig, decide, effective_priority, feasible, urgency
from cluster.scheduling.types import (
    Decisions,
    GpuState,
    LoadedModelState,
    ModelSpec,
    NodeState,
    ProjectPolicy,
    QueuedTask,
    RunningTask,
    Snapshot,
    WaitReason,
)

NOW = 10_000.0
MODELS = {
    "small": ModelSpec(vram_mib=8_000, max_concurrent=2),
    "mid": ModelSpec(vram_mib=12_000, max_concurrent=2),
    "big": ModelSpec(vram_mib=20_000, max_concurrent=2),
    "huge": ModelSpec(vram_mib=40_000, max_concurrent=1),
    "embedded:smollm2-135m": ModelSpec(vram_mib=0, max_concurrent=2, needs_gpu=False),
}


def server(name: str, gpu: int | None = 0, active: int = 0, last_used: float = 0.0) -> LoadedModelState:
    spec = MODELS[name]
    return LoadedModelState(
        name=name,
        gpu_index=gpu if spec.needs_gpu else None,
        vram_mib=spec.vram_mib,
        active_requests=active,
        last_used=last_used,
        slots_max=spec.max_concurrent,
    )


def node(
    id: str,
    *totals: int,
    loaded: tuple[LoadedModelState, ...] = (),
    cpus: float = 8,
    alive: bool = True,
    labels: dict[str, str] | None = None,
) -> NodeState:
    gpus = []
    for index, total in enumerate(totals):
        used = sum(s.vram_mib for s in loaded if s.gpu_index == index)
        gpus.append(GpuState(index=index, name="RTX", total_vram_mib=total, free_vram_mib=total - used))
    return NodeState(id=id, alive=alive, cpus_free=cpus, gpus=gpus, loaded=list(loaded), labels=labels or {})


def queued(id: str, model: str = "small", project: str = "p", priority: int | None = None, **kw: Any) -> QueuedTask:
    return QueuedTask(id=id, project=project, model=model, priority=priority, queued_since=kw.pop("since", NOW), **kw)


def running(id: str, on: str, model: str = "small", priority: float = 50, **kw: Any) -> RunningTask:
    return RunningTask(
        id=id, project=kw.pop("project", "p"), model=model, node=on, priority=priority, started_at=0.0, **kw
    )


def snap(
    nodes: list[NodeState],
    queue: Sequence[QueuedTask] = (),
    run: Sequence[RunningTask] = (),
    projects: dict[str, ProjectPolicy] | None = None,
) -> Snapshot:
    return Snapshot(
        now=NOW,
        nodes=nodes,
        models=MODELS,
        projects=projects or {"p": ProjectPolicy(max_concurrent=100)},
        queued=list(queue),
        running=list(run),
    )


def only_placement(decisions: Decisions) -> tuple[str, str, bool]:
    assert len(decisions.placements) == 1, decisions
    p = decisions.placements[0]
    return p.task_id, p.node, p.load_model


# ------------------------------------------------------------------------------------- worked examples


def test_prefers_a_node_where_the_model_is_already_loaded() -> None:
    nodes = [node("a", 24_000), node("b", 24_000, loaded=(server("small"),))]
    decisions = decide(snap(nodes, [queued("t1")], [running("r1", "b")]))
    assert only_placement(decisions) == ("t1", "b", False)
    assert decisions.loads == [] and decisions.evictions == []


def test_loads_where_free_vram_fits_best() -> None:
    full = node("a", 48_000, loaded=(server("small"),))
    nodes = [full, node("big-box", 48_000), node("snug", 24_000, 12_000)]
    decisions = decide(snap(nodes, [queued("t1")], [running("r1", "a"), running("r2", "a")]))
    assert only_placement(decisions) == ("t1", "snug", True)
    load = decisions.loads[0]
    assert (load.node, load.gpu_index, load.model, load.vram_mib) == ("snug", 1, "small", 8_000)


def test_evicts_the_least_recently_used_idle_model() -> None:
    loaded = (server("small", last_used=20), server("mid", last_used=10))  # 20,000 of 24,000 used
    nodes = [node("a", 24_000, loaded=loaded)]
    decisions = decide(snap(nodes, [queued("t1", model="mid", priority=90), queued("t2", model="big")]))
    # t1 finds "mid" loaded and idle: no eviction. t2 then needs 20,000: only "small" is still idle,
    # and 4,000 free + 8,000 is not enough, so it waits rather than evict the server t1 now uses.
    assert [p.task_id for p in decisions.placements] == ["t1"]
    assert decisions.evictions == []

    decisions = decide(snap(nodes, [queued("t2", model="big")]))
    assert [(e.model, e.for_task) for e in decisions.evictions] == [("mid", "t2"), ("small", "t2")]

    decisions = decide(snap(nodes, [queued("t3", model="mid")]))  # reuse, never reload
    assert decisions.evictions == [] and only_placement(decisions) == ("t3", "a", False)

    nodes = [node("a", 24_000, loaded=(server("small", last_used=30), server("mid", last_used=10)))]
    decisions = decide(snap(nodes, [queued("t8", model="small", priority=99), queued("t9", model="big")]))
    # t8 reuses "small"; t9 would need both evicted, but "small" is now busy.
    assert only_placement(decisions) == ("t8", "a", False) and decisions.evictions == []


def test_evicts_lru_first_and_only_as_much_as_needed() -> None:
    loaded = (server("small", gpu=0, last_used=30), server("mid", gpu=0, last_used=10))
    nodes = [node("a", 32_000, loaded=loaded)]  # 12,000 free
    decisions = decide(snap(nodes, [queued("t1", model="big")]))  # needs 20,000: evict "mid" only
    assert [e.model for e in decisions.evictions] == ["mid"]
    assert only_placement(decisions) == ("t1", "a", True)

    # A server some queued task wants goes after those nobody wants, however recently used.
    loaded = (server("small", gpu=0, last_used=10), server("mid", gpu=0, last_used=30))
    queue = [queued("t1", model="big", priority=90), queued("t2", model="small", priority=10)]
    decisions = decide(snap([node("a", 32_000, loaded=loaded)], queue))
    assert [e.model for e in decisions.evictions] == ["mid"]
    assert [(p.task_id, p.load_model) for p in decisions.placements] == [("t1", True), ("t2", False)]


def test_never_evicts_a_busy_model() -> None:
    busy_requests = server("mid", active=1, last_used=0)
    busy_task = server("small", last_used=0)
    nodes = [node("a", 24_000, loaded=(busy_requests, busy_task))]
    decisions = decide(snap(nodes, [queued("t1", model="big")], [running("r1", "a", "small", priority=100)]))
    assert decisions.placements == [] and decisions.evictions == [] and decisions.preemptions == []
    assert decisions.waiting["t1"].reason is WaitReason.waiting_for_vram
    assert decisions.waiting["t1"].message == "waiting for VRAM on any node: needs 20000 MiB, largest free 4000 MiB"


def test_project_cap_and_max_concurrent() -> None:
    projects = {"p": ProjectPolicy(base_priority=30, max_priority=40, max_concurrent=2)}
    config = PolicyConfig()
    assert urgency(queued("x", priority=95), projects["p"], config) == 40
    assert urgency(queued("x"), projects["p"], config) == 30
    assert urgency(queued("x", priority=-5), projects["p"], config) == 0

    nodes = [node("a", 48_000)]
    queue = [queued(f"t{i}", priority=95, since=NOW - i) for i in range(3)]
    decisions = decide(snap(nodes, queue, [running("r1", "a", "mid")], projects))
    assert [p.task_id for p in decisions.placements] == ["t2"]  # oldest first at equal priority
    assert decisions.placements[0].priority == pytest.approx(40 + 2 / 300)  # + aging: 1 point per 300 s
    assert {decisions.waiting[t].reason for t in ("t0", "t1")} == {WaitReason.project_limit}
    assert "limit of 2" in decisions.waiting["t0"].message


def test_allowed_nodes_by_id_and_by_label() -> None:
    nodes = [node("a", 24_000), node("b", 24_000), node("c", 24_000, labels={"tier": "lab"})]
    projects = {"by-id": ProjectPolicy(allowed_nodes=["b"]), "by-label": ProjectPolicy(allowed_nodes=["tier=lab"])}
    queue = [queued("t1", project="by-id"), queued("t2", project="by-label")]
    placed = {p.task_id: p.node for p in decide(snap(nodes, queue, projects=projects)).placements}
    assert placed == {"t1": "b", "t2": "c"}

    dead = [node("a", 24_000), node("b", 24_000, alive=False)]
    decisions = decide(snap(dead, [queued("t1", project="by-id")], projects=projects))
    assert decisions.waiting["t1"].reason is WaitReason.no_node


def test_infeasible_requests_say_what_is_missing() -> None:
    nodes = [node("a", 24_000, 24_000), node("b", 48_000), node("nas")]
    projects = {"p": ProjectPolicy(), "home": ProjectPolicy(allowed_nodes=["a", "nas"]), "x": ProjectPolicy()}
    s = snap(nodes, projects=projects)
    assert feasible(queued("t", model="big", project="home"), s) is None
    assert feasible(queued("t", model="embedded:smollm2-135m", project="home"), s) is None
    huge = feasible(queued("t", model="huge", project="home"), s)
    assert huge == (
        "no node can ever serve it: huge needs 40000 MiB of VRAM on one GPU; the largest GPU on the nodes "
        "project 'home' may use has 24000 MiB (a GPU 0, RTX); b could, but project 'home' may not use them"
    )
    # Two 24 GB GPUs do not make one 48 GB GPU: a model lives on one GPU.
    s2 = snap([node("a", 24_000, 24_000)])
    assert "largest GPU in the cluster has 24000 MiB" in (feasible(queued("t", model="huge"), s2) or "")
    assert "unknown model 'gpt-9'" in (feasible(queued("t", model="gpt-9"), s) or "")
    assert feasible(queued("t", project="nope"), s) == "unknown project 'nope'"
    nowhere = {"p": ProjectPolicy(allowed_nodes=["z"])}
    assert "none of them is in the cluster" in (feasible(queued("t"), snap(nodes, projects=nowhere)) or "")

    decisions = decide(
        snap(nodes, [queued("t1", model="huge", project="home"), queued("t2", model="gpt-9")], projects=projects)
    )
    assert decisions.waiting["t1"].reason is WaitReason.infeasible
    assert decisions.waiting["t2"].reason is WaitReason.infeasible


def test_cpu_model_needs_no_gpu_and_prefers_cpu_only_nodes() -> None:
    nodes = [node("gpu-box", 24_000), node("nas", cpus=4)]
    decisions = decide(snap(nodes, [queued("t1", model="embedded:smollm2-135m")]))
    placement = decisions.placements[0]
    assert (placement.node, placement.gpu_index, placement.load_model) == ("nas", None, True)
    no_cpu = [node("nas", cpus=0.5)]
    decisions = decide(snap(no_cpu, [queued("t1", model="embedded:smollm2-135m")]))
    assert decisions.waiting["t1"].reason is WaitReason.waiting_for_cpu


def test_resumed_task_goes_first_and_home_to_its_snapshot() -> None:
    nodes = [node("a", 24_000, loaded=(server("small"),)), node("b", 24_000)]
    queue = [
        queued("fresh", priority=80, since=NOW - 3000),
        queued("resumed", priority=50, resumed_after_answer=True, preferred_node="b"),
    ]
    decisions = decide(snap(nodes, queue, [running("r1", "a")]))
    # "resumed" (50 + 50 bonus) outranks "fresh" (80 + 10 of aging) and goes to b, its snapshot's node,
    # although a has the model loaded; "fresh" then takes a's free slot.
    assert [(p.task_id, p.node, p.load_model) for p in decisions.placements] == [
        ("resumed", "b", True),
        ("fresh", "a", False),
    ]
    assert decisions.priorities == {"fresh": 90.0, "resumed": 100.0}


def test_aging_formula_and_config_validation() -> None:
    config = PolicyConfig(aging_s=30, resume_bonus=20, priority_ceiling=150)
    project = ProjectPolicy(base_priority=10)
    task = queued("t", since=0.0)
    assert effective_priority(task, project, 0.0, config) == 10
    assert effective_priority(task, project, 300.0, config) == 20  # +1 per 30 s
    assert effective_priority(task, project, 1e9, config) == 150  # capped at the ceiling
    with pytest.raises(ValidationError, match="priority_ceiling"):
        PolicyConfig(priority_ceiling=120, resume_bonus=50)
    with pytest.raises(ValidationError, match="aging"):
        PolicyConfig.model_validate({"aging": 5})


# ---------------------------------------------------------------------------------------- pre-emption


def patient(id: str, **kw: Any) -> QueuedTask:
    """A task that has waited past ``preempt_after_s``, so it may ask others to yield."""
    return queued(id, since=NOW - 300, **kw)


def _crowded() -> list[NodeState]:
    # One 32 GB GPU: "small" (8,000) + "big" (20,000) + 4,000 free.
    return [node("b", 32_000, loaded=(server("small"), server("big")))]


def test_preemption_picks_the_lowest_victim_whose_release_helps() -> None:
    run = [running("low", "b", "small", priority=20), running("mid-task", "b", "big", priority=40)]
    decisions = decide(snap(_crowded(), [patient("urgent", model="mid", priority=90)], run))
    # Freeing "small" (low, 8,000) + the 4,000 free fits "mid" (12,000); so would freeing "big", but
    # its task has the higher priority. The urgent task waits; nothing is placed around it.
    assert [(p.task_id, p.for_task, p.node) for p in decisions.preemptions] == [("low", "urgent", "b")]
    assert decisions.waiting["urgent"].reason is WaitReason.waiting_for_preemption
    assert decisions.placements == [] and decisions.evictions == []

    decisions = decide(snap(_crowded(), [patient("urgent", model="embedded:smollm2-135m", priority=90)], run))
    assert decisions.preemptions == [] and len(decisions.placements) == 1  # fits as is: nobody disturbed

    # Just queued: give natural turnover preempt_after_s (120 s) first.
    decisions = decide(snap(_crowded(), [queued("urgent", model="mid", priority=90, since=NOW - 60)], run))
    assert decisions.preemptions == [] and decisions.waiting["urgent"].reason is WaitReason.waiting_for_vram


def test_preemption_respects_margin_cooldown_and_uselessness() -> None:
    nodes = [node("b", 32_000, loaded=(server("small"), server("big")))]
    want = [patient("urgent", model="mid", priority=90)]

    close = [running("low", "b", "small", priority=85), running("other", "b", "big", priority=85)]
    assert decide(snap(nodes, want, close)).preemptions == []  # 90 - 85 is within the margin

    cooling = [
        running("low", "b", "small", priority=20, last_preempted_at=NOW - 60),
        running("other", "b", "big", priority=30),
    ]
    decisions = decide(snap(nodes, want, cooling))
    assert [p.task_id for p in decisions.preemptions] == ["other"]  # "low" was pre-empted a minute ago

    both_cooling = [
        running("low", "b", "small", priority=20, last_preempted_at=NOW - 60),
        running("other", "b", "big", priority=30, last_preempted_at=NOW - 599),
    ]
    assert decide(snap(nodes, want, both_cooling)).preemptions == []
    cooled = [running("low", "b", "small", priority=20, last_preempted_at=NOW - 600)]
    decisions = decide(
        snap(
            [node("b", 32_000, loaded=(server("small"), server("big")))],
            want,
            [*cooled, running("other", "b", "big", priority=95)],
        )
    )
    assert [p.task_id for p in decisions.preemptions] == ["low"]

    # Releasing the only low task would leave 12,000 MiB: not enough for "big" (20,000). Nobody moves.
    useless = [running("low", "b", "small", priority=20), running("vip", "b", "big", priority=95)]
    decisions = decide(snap(nodes, [patient("urgent", model="big", priority=90)], useless))
    big_full = [running("vip2", "b", "big", priority=95)]
    decisions = decide(snap(nodes, [patient("urgent", model="mid", priority=90)], [*useless[1:], *big_full]))
    assert decisions.preemptions == []


def test_preemption_never_evicts_others_for_a_second_copy_of_a_served_model() -> None:
    nodes = [node("a", 24_000, loaded=(server("small"),)), node("b", 16_000, loaded=(server("mid"),))]
    busy = [
        running("vip1", "a", priority=95),
        running("vip2", "a", priority=95),
        running("low", "b", "mid", priority=5),
    ]
    decisions = decide(snap(nodes, [patient("urgent", priority=90)], busy))
    # "small" is served on a (both slots held by higher tasks); freeing b's "mid" would allow a second
    # "small" server, but that reload is not worth it: the task waits for a slot on a.
    assert decisions.preemptions == [] and decisions.waiting["urgent"].reason is WaitReason.waiting_for_slot
    cheap = [running("vip1", "a", priority=95), running("low-small", "a", priority=30), busy[2]]
    decisions = decide(snap(nodes, [patient("urgent", priority=90)], cheap))
    assert [p.task_id for p in decisions.preemptions] == ["low-small"]


def test_victim_at_a_checkpoint_is_preferred_and_nobody_is_ever_killed() -> None:
    nodes = [node("a", 24_000, loaded=(server("small"),))]
    run = [
        running("mid-step", "a", "small", priority=20),
        running("at-checkpoint", "a", "small", priority=20, at_checkpoint=True),
    ]
    decisions = decide(snap(nodes, [patient("urgent", priority=90)], run))  # "small" full: needs one slot
    assert [(p.task_id, p.at_checkpoint) for p in decisions.preemptions] == [("at-checkpoint", True)]

    decisions = decide(snap(nodes, [patient("urgent", priority=90)], [*run[:1], running("x", "a", priority=99)]))
    assert [(p.task_id, p.at_checkpoint) for p in decisions.preemptions] == [("mid-step", False)]
    # The only thing the policy can say about a running task is "please yield at your next checkpoint".
    assert set(Decisions.model_fields) == {"placements", "loads", "evictions", "preemptions", "waiting", "priorities"}


def test_yielding_victims_are_waited_for_and_their_gpu_is_held() -> None:
    nodes = [node("b", 32_000, loaded=(server("small"), server("big")))]
    run = [running("low", "b", "small", priority=20), running("other", "b", "big", priority=95)]
    queue = [patient("urgent", model="mid", priority=90), queued("filler", model="embedded:smollm2-135m")]
    first = decide(snap(nodes, queue, run))
    assert [p.task_id for p in first.preemptions] == ["low"]
    # Next cycle: "low" is yielding. Nobody else is asked; the 4,000 MiB left stay held for "urgent".
    yielding = [running("low", "b", "small", priority=20, yielding=True), run[1]]
    second = decide(snap(nodes, [queue[0], queued("tiny", model="small", priority=10)], yielding))
    assert second.preemptions == [] and second.placements == []
    assert second.waiting["urgent"].message == "waiting for low to yield at a checkpoint on b"


# ------------------------------------------------------------------------------------------ properties

_GPU_SIZES = st.sampled_from([8_000, 24_000, 32_000, 48_000])
_GPU_MODELS = ["small", "mid", "big", "huge"]


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    nodes, run = [], []
    for n in range(draw(st.integers(1, 4))):
        nid = f"n{n}"
        count = draw(st.sampled_from([0, 1, 1, 1, 2, 2]))
        totals = draw(st.lists(_GPU_SIZES, min_size=count, max_size=count))
        loaded: list[LoadedModelState] = []
        names = st.sampled_from([*_GPU_MODELS, "embedded:smollm2-135m"])
        for name in draw(st.lists(names, min_size=len(totals), unique=True)):
            spec = MODELS[name]
            gpu = None
            if spec.needs_gpu:
                fits = [
                    i
                    for i, t in enumerate(totals)
                    if t - sum(s.vram_mib for s in loaded if s.gpu_index == i) >= spec.vram_mib
                ]
                if not fits:
                    continue
                gpu = draw(st.sampled_from(fits))
            loaded.append(
                server(
                    name, gpu=gpu or 0, active=draw(st.sampled_from([0, 0, 0, 1])), last_used=draw(st.floats(0, NOW))
                )
            )
            for k in range(min(spec.max_concurrent, draw(st.sampled_from([0, 0, 1, 2])))):
                run.append(
                    running(
                        f"{nid}-{name}-{k}",
                        nid,
                        name,
                        priority=draw(st.integers(0, 150)),
                        project=draw(st.sampled_from(["p", "q"])),
                        yielding=draw(st.booleans()),
                        at_checkpoint=draw(st.booleans()),
                        last_preempted_at=draw(st.none() | st.floats(NOW - 2_000, NOW)),
                    )
                )
        nodes.append(
            node(
                nid,
                *totals,
                loaded=tuple(loaded),
                cpus=draw(st.sampled_from([0.5, 2, 8, 8])),
                alive=draw(st.sampled_from([True, True, True, False])),
            )
        )
    queue = [
        queued(
            f"q{i}",
            model=draw(st.sampled_from(["small", "mid", "mid", "big", "big", *MODELS])),
            project=draw(st.sampled_from(["p", "q"])),
            priority=draw(st.none() | st.integers(0, 100)),
            since=draw(st.floats(0, NOW)),
            resumed_after_answer=draw(st.booleans()),
            preferred_node=draw(st.none() | st.just("n0")),
        )
        for i in range(draw(st.integers(1, 20)))
    ]
    projects = {
        "p": ProjectPolicy(max_concurrent=draw(st.sampled_from([2, 8, 30]))),
        "q": ProjectPolicy(
            max_priority=60,
            max_concurrent=draw(st.sampled_from([2, 8, 30])),
            allowed_nodes=draw(st.lists(st.sampled_from([n.id for n in nodes]), max_size=2)),
        ),
    }
    return snap(nodes, queue, run, projects)


@settings(max_examples=60, deadline=None)
@given(snapshots())
def test_one_cycle_never_overcommits_and_only_preempts_what_runs(s: Snapshot) -> None:
    config = PolicyConfig()
    d = decide(s, config)
    alive = {n.id: n for n in s.nodes if n.alive}
    evicted = {(e.node, e.model) for e in d.evictions}
    # VRAM: per GPU, servers kept + servers loaded <= total, and never more than NVML says is free.
    for n in alive.values():
        for g in n.gpus:
            kept = sum(m.vram_mib for m in n.loaded if m.gpu_index == g.index and (n.id, m.name) not in evicted)
            freed = sum(e.vram_mib for e in d.evictions if e.node == n.id and e.gpu_index == g.index)
            added = sum(ld.vram_mib for ld in d.loads if ld.node == n.id and ld.gpu_index == g.index)
            assert kept + added <= g.total_vram_mib
            assert added <= g.free_vram_mib + freed
    # Slots: per server, tasks already on it + placed on it <= its slots.
    on_server = Counter((t.node, t.model) for t in s.running)
    placed = Counter((p.node, p.model) for p in d.placements)
    for (nid, model), count in placed.items():
        loaded = next((m for m in alive[nid].loaded if m.name == model and (nid, model) not in evicted), None)
        slots = loaded.slots_max if loaded else MODELS[model].max_concurrent
        assert on_server[(nid, model)] * (loaded is not None) + count <= slots
        assert (loaded is None) == any(ld.node == nid and ld.model == model for ld in d.loads)
    # Evictions only of idle servers; every queued task is placed once or has a reason.
    for nid, model in evicted:
        assert on_server[(nid, model)] == 0
        assert next(m for m in alive[nid].loaded if m.name == model).active_requests == 0
    ids = [p.task_id for p in d.placements]
    assert len(ids) == len(set(ids)) and set(ids) | set(d.waiting) == {t.id for t in s.queued}
    assert not set(ids) & set(d.waiting)
    # Projects stay within max_concurrent and allowed_nodes.
    for name, project in s.projects.items():
        now_running = sum(t.project == name and t.node in alive for t in s.running)
        new = [p for p in d.placements if next(t for t in s.queued if t.id == p.task_id).project == name]
        assert len(new) == 0 or now_running + len(new) <= project.max_concurrent
        assert all(not project.allowed_nodes or p.node in project.allowed_nodes for p in new)
    # Pre-emption names only running, non-yielding, cooled-down tasks, below the waiter by the margin.
    by_id = {t.id: t for t in s.running}
    waiters = {t.id: t for t in s.queued}
    for p in d.preemptions:
        victim, waiter = by_id[p.task_id], waiters[p.for_task]
        assert victim.node in alive and not victim.yielding and p.for_task not in ids
        assert victim.last_preempted_at is None or s.now - victim.last_preempted_at >= config.preempt_cooldown_s
        assert urgency(waiter, s.projects[waiter.project], config) - victim.priority > config.preempt_margin
        assert s.now - waiter.queued_since >= config.preempt_after_s
    assert len({p.task_id for p in d.preemptions}) == len(d.preemptions)


@settings(max_examples=20, deadline=None)
@given(
    arrival_s=st.sampled_from([10.0, 20.0]),
    duration_s=st.sampled_from([30.0, 60.0]),
    slots=st.integers(1, 3),
    aging_s=st.sampled_from([0.5, 1.0, 2.0]),
    low=st.integers(0, 40),
)
def test_no_starvation_under_a_steady_stream_of_high_priority_work(
    arrival_s: float, duration_s: float, slots: int, aging_s: float, low: int
) -> None:
    """One GPU busy with a backlog of priority-90 tasks, more arriving faster than it can serve them,
    and a few low tasks queued at t=0.

    A low task outranks every high task that arrived more than (90 - low) * aging_s after it, so at
    most that many arrivals (plus the other low tasks) go before it; each slot turns over every
    ``duration_s``. Pre-emptions (none are expected: aged tasks run at their aged priority) requeue.
    """
    config = PolicyConfig(aging_s=aging_s)
    models = {"m": ModelSpec(vram_mib=10_000, max_concurrent=slots)}
    projects = {"p": ProjectPolicy(max_concurrent=100)}
    lows = [QueuedTask(id=f"low{i}", project="p", model="m", priority=low, queued_since=0.0) for i in range(3)]
    backlog = [
        QueuedTask(id=f"early{i}", project="p", model="m", priority=90, queued_since=0.0) for i in range(2 * slots)
    ]
    queue: dict[str, QueuedTask] = {t.id: t for t in [*backlog, *lows]}
    active: dict[str, tuple[RunningTask, float]] = {}
    placed_at: dict[str, float] = {}
    ahead = len(backlog) + (90 - low) * aging_s / arrival_s + len(lows)
    bound = (ahead / slots + 2) * duration_s + 2 * arrival_s
    now, step, arrivals = 0.0, min(arrival_s, duration_s) / 2, 0
    while now <= bound + duration_s and not all(t.id in placed_at for t in lows):
        while arrivals * arrival_s <= now:
            t = QueuedTask(id=f"hi{arrivals}", project="p", model="m", priority=90, queued_since=arrivals * arrival_s)
            queue[t.id], arrivals = t, arrivals + 1
        for tid, (_, end) in list(active.items()):
            if end <= now:
                del active[tid]
        loaded = [LoadedModelState(name="m", gpu_index=0, vram_mib=10_000, slots_max=slots)] if active else []
        gpu = GpuState(index=0, total_vram_mib=16_000, free_vram_mib=16_000 - 10_000 * bool(active))
        s = Snapshot(
            now=now,
            nodes=[NodeState(id="a", cpus_free=8 - len(active), gpus=[gpu], loaded=loaded)],
            models=models,
            projects=projects,
            queued=list(queue.values()),
            running=[r for r, _ in active.values()],
        )
        d = decide(s, config)
        for p in d.placements:
            task = queue.pop(p.task_id)
            placed_at.setdefault(task.id, now)
            active[task.id] = (
                RunningTask(id=task.id, project="p", model="m", node="a", priority=p.priority, started_at=now),
                now + duration_s,
            )
        for pre in d.preemptions:  # yield at once and come back to the queue
            victim, _ = active.pop(pre.task_id)
            queue[victim.id] = QueuedTask(
                id=victim.id, project="p", model="m", priority=low if "low" in victim.id else 90, queued_since=now
            )
        now += step
    for t in lows:
        assert t.id in placed_at and placed_at[t.id] <= bound, (placed_at, bound)
    assert min(placed_at[t.id] for t in lows) >= duration_s  # they did have to wait for the backlog


def test_duplicate_queued_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        decide(snap([node("a", 24_000)], [queued("t1"), queued("t1", model="mid")]))


def test_a_cpu_model_preempts_for_a_task_slot_and_only_at_a_checkpoint() -> None:
    from cluster.scheduling.policy import PolicyConfig, decide
    from cluster.scheduling.types import ModelSpec, NodeState, ProjectPolicy, QueuedTask, RunningTask, Snapshot

    cpu = ModelSpec(vram_mib=0, max_concurrent=64, needs_gpu=False)
    snap = Snapshot(
        now=100, nodes=[NodeState(id="w", cpus_free=0)],
        models={"embedded:a": cpu, "embedded:b": cpu},
        projects={"p": ProjectPolicy(base_priority=50, max_priority=100, max_concurrent=4)},
        queued=[QueuedTask(id="high", project="p", model="embedded:a", priority=90, queued_since=99)],
        running=[RunningTask(id="low", project="p", model="embedded:b", node="w", priority=20, started_at=90)])
    decisions = decide(snap, PolicyConfig(preempt_after_s=0))
    assert [(p.task_id, p.for_task) for p in decisions.preemptions] == [("low", "high")]
    assert not decisions.placements  # the slot frees only when "low" reaches its checkpoint
    # Within the margin nobody is disturbed.
    close = snap.model_copy(update={"queued": [snap.queued[0].model_copy(update={"priority": 25})]})
    assert not decide(close, PolicyConfig(preempt_after_s=0)).preemptions
