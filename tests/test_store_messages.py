"""A task's message describes its current state: it goes when the state changes (unless a new one is given)."""

from __future__ import annotations

from pathlib import Path

from tests_support import stored_spec

from agent.events import TaskSubmitted
from cluster.scheduling.states import TaskState
from cluster.store import Store


def test_a_finished_task_keeps_no_stale_waiting_message(tmp_path: Path) -> None:
    store = Store(tmp_path / "hearth.db")
    spec = stored_spec("p", "scripted:demo", {"A": "a"})
    row = store.create_task(project="p", name="n", priority=50, model="scripted:demo", spec=spec,
                            submitted=TaskSubmitted(task_id="pending", name="n", steps=["A"], priority=50))
    store.update_task(row.id, message="project 'p' is at its limit of 1 tasks")
    store.set_state(row.id, TaskState.placed)
    store.set_state(row.id, TaskState.running)
    assert store.task(row.id).message == ""
    store.set_state(row.id, TaskState.failed, message="gave up after 3 attempts")
    assert store.task(row.id).message == "gave up after 3 attempts"
    store.close()
