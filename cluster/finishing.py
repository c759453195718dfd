"""Finishing a completed task's branch on the head: the decision's choice, else hearth.toml's.

The scheduler calls ``finish_task`` once, when a task's last attempt completes and before the
task is marked completed, so two tasks of one project finish in turn and the second merges on top
of the first. The outcome (kept, merged, pushed, or refused with the reason — a conflict is
reported, never forced) is the ``BranchFinished`` event people see.
"""

from __future__ import annotations

from pathlib import Path

from agent.events import BranchFinished, DecisionMade
from agent.finish import FinishConfig, FinishOutcome, finish_branch
from agent.project import task_branch
from agent.runner import TaskSpec
from cluster.repos import is_git_url
from cluster.store import Store


def chosen_action(db: Store, task_id: str, config: FinishConfig) -> str:
    """The final decision's ``finish``, else the project's default."""
    decision = db.last_event(task_id, "decision_made")
    if isinstance(decision, DecisionMade) and decision.approve and decision.finish:
        return decision.finish
    return config.action


def finish_task(db: Store, task_id: str, spec: TaskSpec) -> BranchFinished:
    config = spec.config.finish
    action = chosen_action(db, task_id, config)
    branch = task_branch(task_id)
    if is_git_url(spec.project_path):
        outcome = _finish_at_url(spec.project_path, branch, action)
    else:
        outcome = finish_branch(Path(spec.project_path), branch, action, config, base=spec.base_branch,
                                title=f"Hearth task {task_id}: {spec.plan.name}")
    return BranchFinished(task_id=task_id, branch=branch, **outcome.model_dump())


def _finish_at_url(url: str, branch: str, action: str) -> FinishOutcome:
    """A project given as a git URL has no working tree on the head: its task branch is pushed there
    with every checkpoint, so keep and push are already done; a merge is the remote's to make (a
    pull request), and is refused here with that reason rather than attempted."""
    if action in ("keep", "push"):
        return FinishOutcome(action=action, ok=True,
                             message=f"branch {branch} is at {url} (pushed with each checkpoint)")
    return FinishOutcome(action=action, ok=False, message=(
        f"merge is not done for a project given as a git URL ({url}): the branch {branch} is pushed there, "
        "ready for a pull request"))
