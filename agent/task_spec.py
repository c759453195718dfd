"""What a node is given to run a task (``TaskSpec``), and the replies of people it may wait for.

Sent to the task actor and kept in the store (``TaskRow.spec``); ``agent.runner`` re-exports them.
"""

from __future__ import annotations

from pydantic import BaseModel

from agent.config import ProjectConfig
from agent.prd import TaskPlan


class TaskSpec(BaseModel):
    """Everything a node needs to run a task (sent to the task actor)."""

    task_id: str
    project_path: str
    """The project's source as the head knows it (a path on the head or a git URL). Nodes never read
    it: their code comes from the head (``agent.transport``)."""
    plan: TaskPlan
    prd_relpath: str | None = None
    """Where the PRD file lives inside the project, for writing finished steps back; None otherwise."""
    prd_seed: str | None = None
    """The PRD's text when it was not committed at submit: the task branch gets it first."""
    base_branch: str = ""
    """The branch checked out at submit: where ``[finish] action = "merge"`` merges to by default."""
    model: str
    base_commit: str
    config: ProjectConfig


class Decision(BaseModel):
    approve: bool
    reason: str = ""
    who: str = "user"


class Answer(BaseModel):
    text: str
    who: str
