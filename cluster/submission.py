"""A submission checked before anything is stored: the project opens (fetched into the head's mirror
from its directory on the head or its git URL), the PRD parses and has work left, the priority and
model are valid. Every problem is a ``SubmitError`` naming it. Blocking (git): run it in a thread."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import NamedTuple

from agent.config import ProjectConfig, parse_priority
from agent.events import TaskSubmitted
from agent.models import ModelError, split_spec
from agent.models.scripted import scripted_model
from agent.prd import PrdError, TaskPlan, parse_prd_text
from agent.runner import TaskSpec
from cluster.errors import SubmitError
from cluster.project_code import OpenedProject, ProjectCode


class Submission(NamedTuple):
    config: ProjectConfig
    spec: TaskSpec
    """``task_id`` is "pending": the store numbers the task."""
    submitted: TaskSubmitted
    priority: int


def prepare_submission(code: ProjectCode, project_path: str, prd_path: str | None, prd_text: str | None,
                       priority: str | int | None, model: str | None) -> Submission:
    for name, value in (("project_path", project_path), ("prd_path", prd_path), ("model", model)):
        if value is not None and "\x00" in value:
            raise SubmitError(f"{name} holds a NUL byte; no file or model name can")
    try:  # every node gets the project's code from the head's mirror, never from this path
        project = code.open(project_path)
    except ValueError as exc:
        raise SubmitError(str(exc)) from None
    config = project.config
    plan, prd_relpath = _plan(code, project, prd_path, prd_text)
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
    local = project.local_path
    # Only a project that is a path on the head has a working tree that may hold an uncommitted PRD
    # and a checked-out branch; a URL project's PRD is read from its commit and merges go to its default.
    seed = uncommitted_prd(local, prd_relpath) if local is not None and prd_text is None else None
    spec = TaskSpec(task_id="pending", project_path=project.source, plan=plan, prd_relpath=prd_relpath,
                    prd_seed=seed, base_branch=checked_out_branch(local) if local is not None else "",
                    model=model, base_commit=project.base_commit, config=config)
    submitted = TaskSubmitted(task_id="pending", name=plan.name, steps=[s.id for s in plan.steps], priority=wanted)
    return Submission(config, spec, submitted, wanted)


def _plan(code: ProjectCode, project: OpenedProject, prd_path: str | None, prd_text: str | None
          ) -> tuple[TaskPlan, str | None]:
    """The PRD's plan, and its path inside the project when it is a file there."""
    try:
        if prd_text is not None:
            return parse_prd_text(prd_text, source="<request>", filename_hint=prd_path or ""), None
        if prd_path is None:
            raise SubmitError("give a PRD: a path (prd_path) or its text (prd_text)")
        return code.read_prd(project, prd_path)
    except PrdError as exc:
        raise SubmitError(str(exc)) from None


def uncommitted_prd(project: Path, relpath: str | None) -> str | None:
    """The PRD's text when the project's HEAD does not hold it as it is on disk (else None): the task
    branch then gets it as its first commit, so a fresh ``ralph-tui create-prd`` output just works."""
    if relpath is None:
        return None
    data = (project / relpath).read_bytes()
    committed = subprocess.run(["git", "show", f"HEAD:{relpath}"], cwd=project, capture_output=True)
    return None if committed.returncode == 0 and committed.stdout == data else data.decode("utf-8")


def checked_out_branch(project: Path) -> str:
    """The branch checked out in the project ("" on a detached HEAD): where a merge goes by default."""
    done = subprocess.run(["git", "symbolic-ref", "--short", "-q", "HEAD"], cwd=project, capture_output=True,
                          text=True)
    return done.stdout.strip() if done.returncode == 0 else ""
