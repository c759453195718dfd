"""The quick-start demo for real: the greeting PRD through Ray, bwrap and the embedded SmolLM2 model.

This is the one test that asserts a real model finishes real work. The demo PRD is designed for a
135M model (files with given words, checked by a script) and the loop's scaffolding (grammar-
constrained tool calls, the check on repeated calls, warmer retries) is what makes it finish.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import git
import pytest
import ray
from tests_support import embedded_model_missing

from agent.project import task_branch
from cluster.scheduler import wait_for
from cluster.store import Store

pytestmark = [pytest.mark.ray, pytest.mark.real_llm]


@pytest.fixture(scope="module", autouse=True)
def embedded_model() -> None:
    missing = embedded_model_missing()
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must have the embedded model (deploy/setup.sh installs it): {missing}")
    if missing:
        pytest.skip(f"embedded model unavailable: {missing}")


def test_the_demo_prd_completes_with_the_embedded_model(scheduler: Any, greeting_project: Path) -> None:
    row = ray.get(scheduler.submit.remote(str(greeting_project), "tasks/prd.json", None, None,
                                          "embedded:smollm2-135m"))
    db_path = Path(scheduler.state_dir) / "hearth.db"

    def state() -> str:
        store = Store(db_path, readonly=True)
        try:
            return store.task(row.id).state.value
        finally:
            store.close()

    assert wait_for(lambda: state() in {"completed", "failed"}, 600, interval_s=1)
    store = Store(db_path, readonly=True)
    try:
        task, events = store.task(row.id), store.events(row.id)
    finally:
        store.close()
    assert task.state.value == "completed", task.message
    assert sum(1 for e in events if e.kind == "agent_action") >= 2  # the model really drove the steps
    branch = task_branch(row.id)
    repo = git.Repo(greeting_project)
    stories = json.loads(repo.git.show(f"{branch}:tasks/prd.json"))["userStories"]
    assert [s["passes"] for s in stories] == [True, True]
    assert "hello" in repo.git.show(f"{branch}:hello.txt").lower()
    assert "goodbye" in repo.git.show(f"{branch}:goodbye.txt").lower()
