"""A submission checked before anything is stored: the project opens, the PRD parses and has work
left, the priority and model are valid. Every problem is a ``SubmitError`` naming it."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from agent.config import ProjectConfig, parse_priority
from agent.events import TaskSubmitted
from agent.models import ModelError, split_spec
from agent.models.scripted import scripted_model
from agent.prd import PrdError, TaskPlan, load_prd, parse_prd_text
from agent.project import Project, ProjectError, open_project
from agent.runner import TaskSpec
from cluster.errors import SubmitError


class Submission(NamedTuple):
    config: ProjectConfig
    spec: TaskSpec
    """``task_id`` is "pending": the store numbers the task."""
    submitted: TaskSubmitted
    priority: int


def prepare_submission(project_path: str, prd_path: str | None, prd_text: str | None,
                       priority: str | int | None, model: str | None) -> Submission:
    for name, value in (("project_path", project_path), ("prd_path", prd_path), ("model", model)):
        if value is not None and "\x00" in value:
            raise SubmitError(f"{name} holds a NUL byte; no file or model name can")
    try:
        project = open_project(Path(project_path))
    except (ProjectError, ValueError) as exc:
        raise SubmitError(str(exc)) from None
    config = project.config
    plan, prd_relpath = _plan(project, prd_path, prd_text)
    try:
        wanted = config.clip_priority(None if priority is None else parse_priority(priority))
    except ValueError as exc:
        raise SubmitError(str(exc)) from None
    model = model or config.model
    try:
        runtime, name = split_spec(model)
        if runtime == "scripted":
            scripted_model(name)
    except ModelError as exc:
        raise SubmitError(str(exc)) from None
    if not plan.steps:
        raise SubmitError(f"{plan.source}: every story already passes; nothing to do")
    spec = TaskSpec(task_id="pending", project_path=str(project.path), plan=plan, prd_relpath=prd_relpath,
                    model=model, base_commit=project.head_commit(), config=config)
    submitted = TaskSubmitted(task_id="pending", name=plan.name, steps=[s.id for s in plan.steps], priority=wanted)
    return Submission(config, spec, submitted, wanted)


def _plan(project: Project, prd_path: str | None, prd_text: str | None) -> tuple[TaskPlan, str | None]:
    """The PRD's plan, and its path inside the project when it is a file there."""
    try:
        if prd_text is not None:
            return parse_prd_text(prd_text, source="<request>", filename_hint=prd_path or ""), None
        if prd_path is None:
            raise SubmitError("give a PRD: a path (prd_path) or its text (prd_text)")
        path = Path(prd_path)
        path = path if path.is_absolute() else project.path / path
        plan = load_prd(path)
    except PrdError as exc:
        raise SubmitError(str(exc)) from None
    inside = path.resolve().is_relative_to(project.path)
    return plan, str(path.resolve().relative_to(project.path)) if inside else None
