"""Helpers shared by runner-level tests: an in-process controller and a TaskSpec for a project."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import git

from agent.events import Event
from agent.models.scripted import scripted_model
from agent.prd import load_prd
from agent.project import open_project, task_branch, write_config
from agent.runner import Answer, Decision, TaskRunner, TaskSpec
from agent.transport import NodeCode

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


class RecordingController:
    def __init__(self, decisions: list[Decision] | None = None, verdicts: list[str] | None = None) -> None:
        self.events: list[Event] = []
        self.decisions = list(decisions or [])
        self.verdicts = list(verdicts or [])

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def at_checkpoint(self, step_id: str) -> str:
        return self.verdicts.pop(0) if self.verdicts else "continue"

    def await_decision(self, step_id: str) -> Decision:
        return self.decisions.pop(0)

    def await_answer(self, step_id: str, question: str) -> Answer:
        return Answer(text="42", who="bob")

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def spec_for(project_path: Path, **config: object) -> TaskSpec:
    project = open_project(project_path)
    return TaskSpec(
        task_id="T-7", project_path=str(project_path), plan=load_prd(project_path / "tasks" / "prd.json"),
        prd_relpath="tasks/prd.json", model="scripted:demo", base_commit=project.head_commit(),
        config=project.config.model_copy(update=config),
    )


def code_for(spec: TaskSpec, attempt_no: int = 1) -> NodeCode:
    """The attempt's code through a head kept beside the project (``<tmp>/head-state``), called in-process:
    the same mirror, bundles and publishing as the scheduler's, without Ray."""
    from cluster.project_code import InProcessCodeHost, ProjectCode

    project = Path(spec.project_path)
    code = ProjectCode(project.parent / "head-state")
    code.open(spec.project_path)
    host = InProcessCodeHost(code, spec.config.name, spec.project_path, f"{spec.task_id}.{attempt_no}-test")
    return NodeCode(host, project.parent / "node-state" / "repos" / f"{spec.config.name}.git", spec.task_id)


def runner_for(spec: TaskSpec, controller: RecordingController, model: object = None, **kw: object) -> TaskRunner:
    return TaskRunner(spec, attempt_id="T-7.1-aaaaaa", attempt_no=1, controller=controller,
                      model=model or scripted_model("demo"),  # type: ignore[arg-type]
                      workdir=Path(spec.project_path) / ".hearth" / "work" / spec.task_id,
                      code=code_for(spec), **kw)  # type: ignore[arg-type]


def branch_prd(project_path: Path, task_id: str = "T-7") -> dict[str, object]:
    return json.loads(git.Repo(project_path).git.show(f"{task_branch(task_id)}:tasks/prd.json"))




def configure(project: Path, **values: object) -> None:
    """Change the project's hearth.toml and commit it (a task reads the config it was submitted with)."""
    config = open_project(project).config.model_copy(update=values)
    write_config(project, config)
    repo = git.Repo(project)
    repo.git.add("hearth.toml")
    repo.git.commit("-m", "test policy", author="t <t@t>")


def stored_spec(project: str, model: str, steps: dict[str, str] | None = None,
                notify: dict[str, str] | None = None) -> TaskSpec:
    """A task's spec as the store keeps it, for a project that exists nowhere on disk."""
    from agent.config import ProjectConfig
    from agent.prd import Step, TaskPlan

    plan = TaskPlan(name=project, source="<test>", format="prd-json",
                    steps=[Step(id=i, title=t) for i, t in (steps or {}).items()])
    return TaskSpec(task_id="pending", project_path="/nowhere", model=model, base_commit="0" * 40, plan=plan,
                    config=ProjectConfig.model_validate({"name": project, "notify": notify or {}}))


def queued_row(task_id: str, model: str, *, node: str | None = None, project: str = "p") -> Any:
    """A store row for a task of project ``project`` (placed on ``node`` if given, else queued)."""
    from cluster.scheduling.states import TaskState
    from cluster.store import TaskRow

    spec = stored_spec(project, model)

    return TaskRow(id=task_id, number=int(task_id.split("-")[1]), project=project, name=task_id,
                   state=TaskState.placed if node else TaskState.queued, priority=50, model=model,
                   spec=spec, attempts=1 if node else 0, next_step=0,
                   resume_commit=None, resume_node=None, node_id=node, attempt_id=None, waiting_for=None,
                   answer=None, message="", created_at=0.0, updated_at=0.0, queued_since=0.0)


def from_store(scheduler: Any, read: Any) -> Any:
    """``read(store)`` on a read-only view of the scheduler's store, closed afterwards."""
    from cluster.store import Store

    store = Store(Path(scheduler.state_dir) / "hearth.db", readonly=True)
    try:
        return read(store)
    finally:
        store.close()


ADMIN = {"Authorization": "Bearer admin-token"}
"""Headers of the cluster admin's token in ``sidecar_on``'s app."""
PLUGIN = {"Authorization": "Bearer plugin-token"}
"""Headers of the OpenClaw plugin's token in ``sidecar_on``'s app."""


def sidecar_on(scheduler: Any) -> TestClient:
    """The sidecar's API (a TestClient) over this test's Ray scheduler, with the two tokens above."""
    from fastapi.testclient import TestClient

    from cluster.api import create_app
    from cluster.scheduler_client import RaySchedulerClient

    return TestClient(create_app(RaySchedulerClient(scheduler), Path(scheduler.state_dir) / "hearth.db",
                                 "admin-token", plugin_token="plugin-token"))


def embedded_model_missing() -> str | None:
    """Why the embedded model (SmolLM2-135M + node-llama-cpp) cannot run here, or None if it can."""
    from agent.models.base import ModelUnavailable
    from agent.models.embedded_install import default_app_dir, find_node, gguf_path, npm_deps_ready

    try:
        find_node()
        gguf_path("smollm2-135m")
    except ModelUnavailable as exc:
        return str(exc)
    return None if npm_deps_ready(default_app_dir()) else "node-llama-cpp is not installed"
