"""Where pre-emption can take effect: only at a checkpoint the victim will still reach.

Policy and snapshot are pure (hand-built rows and events, no Ray); the lifecycle edges go through the
real store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_policy import _crowded, patient, running, snap

from agent.config import ProjectConfig
from agent.events import StepCompleted, StepStarted, TaskSubmitted
from agent.prd import Step, TaskPlan
from agent.runner import TaskSpec
from cluster.scheduling.policy import decide
from cluster.scheduling.snapshot import build_snapshot, step_progress
from cluster.scheduling.states import S, TaskState, transition
from cluster.store import Store, TaskRow


def test_a_task_that_cannot_yield_is_never_the_victim() -> None:
    run = [running("low", "b", "small", priority=20, can_yield=False), running("mid-task", "b", "big", priority=40)]
    decisions = decide(snap(_crowded(), [patient("urgent", model="mid", priority=90)], run))
    # "low" would be the cheapest victim, but it has no checkpoint left: the next one is asked instead.
    assert [p.task_id for p in decisions.preemptions] == ["mid-task"]
    alone = [running("low", "b", "small", priority=20, can_yield=False)]
    decisions = decide(snap(_crowded(), [patient("urgent", model="mid", priority=90)], alone))
    assert decisions.preemptions == []


def row(steps: int, next_step: int = 0, **config: object) -> TaskRow:
    plan = TaskPlan(name="p", format="prd-json", source="prd.json",
                    steps=[Step(id=f"S{i}", title=f"step {i}") for i in range(steps)])
    spec = TaskSpec(task_id="T-1", project_path="/p", plan=plan, model="scripted:demo", base_commit="0" * 40,
                    config=ProjectConfig(name="p", **config))
    return TaskRow(id="T-1", number=1, project="p", name="p", state=TaskState.running, priority=50,
                   model="scripted:demo", spec=spec, attempts=1, next_step=next_step, resume_commit=None,
                   resume_node=None, node_id="n1", attempt_id="T-1.1-a", waiting_for=None, answer=None,
                   message="", created_at=0.0, updated_at=0.0, queued_since=0.0)


def snapshot_task(task: TaskRow, last: object) -> tuple[bool, bool]:
    progress = {task.id: step_progress(task, last)}  # type: ignore[arg-type]
    nodes = {"n1": {"NodeID": "n1", "Alive": True, "Resources": {"CPU": 4}}}
    [running_task] = build_snapshot(0.0, nodes, {}, [], [task], {}, progress).running
    return running_task.at_checkpoint, running_task.can_yield


def test_the_snapshot_says_where_a_running_task_can_yield() -> None:
    task = row(steps=2)
    started = StepStarted(task_id="T-1", attempt_id="a", step_id="S0", title="", index=0, total=2)
    last_started = StepStarted(task_id="T-1", attempt_id="a", step_id="S1", title="", index=1, total=2)
    finished = StepCompleted(task_id="T-1", attempt_id="a", step_id="S0", commit="c", turns=1, duration_s=1)
    assert snapshot_task(task, started) == (False, True)  # mid-step, a checkpoint ahead
    assert snapshot_task(task, finished) == (True, True)  # between steps: yields at once
    assert snapshot_task(task, last_started) == (False, False)  # its last step: nothing to yield at
    assert snapshot_task(row(steps=2, checkpoints=False), started) == (False, False)  # declared
    assert snapshot_task(row(steps=1), None) == (False, False)  # a one-step task never reaches one


@pytest.mark.parametrize("asks", [S.waiting_input, S.awaiting_approval])
def test_a_task_asked_to_yield_may_still_ask_a_person(tmp_path: Path, asks: TaskState) -> None:
    assert transition(S.yielding, asks) == asks
    store = Store(tmp_path / "hearth.db")
    submitted = TaskSubmitted(task_id="pending", name="n", steps=["S0"], priority=50)
    task = store.create_task(project="p", name="n", priority=50, model="scripted:demo",
                             spec=row(steps=2).spec, submitted=submitted)
    for state in (S.placed, S.running, S.yielding, asks):
        store.set_state(task.id, state)
    assert store.task(task.id).state == asks
    store.close()
