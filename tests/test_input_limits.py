"""Bounded input: PRD size at submit, PRD files that are not files, and what each cycle re-reads."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from agent.config import ProjectConfig
from agent.events import TaskSubmitted
from agent.prd import MAX_PRD_BYTES, PrdError, Step, TaskPlan, load_prd, parse_prd_text
from agent.runner import TaskSpec
from cluster.scheduling.states import TaskState
from cluster.store import Store


def story_json(n: int, padding: int) -> str:
    stories = ",".join(f'{{"id": "US-{i}", "title": "t", "description": "{"x" * padding}", '
                       f'"acceptanceCriteria": ["ok"], "passes": false}}' for i in range(n))
    return f'{{"name": "big", "userStories": [{stories}]}}'


def test_a_prd_over_the_limit_is_refused_with_the_limit_named(tmp_path: Path) -> None:
    assert len(parse_prd_text(story_json(50, 1000), "ok.json").steps) == 50  # 50 KB is fine
    ten_mb = story_json(1000, 10_000)
    assert len(ten_mb) > 10 * MAX_PRD_BYTES * 0.95
    with pytest.raises(PrdError, match="larger than the 1024 KiB a PRD may be"):
        parse_prd_text(ten_mb, "<request>")
    path = tmp_path / "prd.json"
    path.write_text(ten_mb)
    with pytest.raises(PrdError, match="larger than the 1024 KiB"):
        load_prd(path)


def test_a_fifo_named_as_a_prd_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "prd.json"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            load_prd(fifo)
        except PrdError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "load_prd blocked on a FIFO"
    assert "not a regular file" in str(outcome[0])


def test_active_task_queries_do_not_parse_finished_tasks(tmp_path: Path) -> None:
    """The idle scheduler asks for active tasks every cycle; finished ones (whose spec holds a whole
    PRD) must not be read at all. A finished row with an unreadable spec proves it."""
    store = Store(tmp_path / "hearth.db")
    plan = TaskPlan(name="p", format="prd-json", source="prd.json", steps=[Step(id="S1", title="one")])
    spec = TaskSpec(task_id="pending", project_path="/p", plan=plan, model="scripted:demo", base_commit="0" * 40,
                    config=ProjectConfig(name="p"))
    submitted = TaskSubmitted(task_id="pending", name="n", steps=["S1"], priority=50)
    done = store.create_task(project="p", name="n", priority=50, model="scripted:demo", spec=spec, submitted=submitted)
    store.update_task(done.id, state=TaskState.completed.value)
    store.db.execute("UPDATE tasks SET spec = ? WHERE id = ?", ("{not json", done.id))
    live = store.create_task(project="p", name="n", priority=50, model="scripted:demo", spec=spec, submitted=submitted)
    assert [t.id for t in store.tasks({TaskState.queued, TaskState.running})] == [live.id]
    store.close()
