"""Request bodies (responses are the store's and the scheduler's own models, as JSON)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_path: str | None = None
    project: str | None = None
    """Instead of ``project_path``: the name of a project this cluster has run before."""
    prd_path: str | None = None
    """A PRD file, relative to the project or absolute."""
    prd: str | None = None
    """The PRD's text (prd.json, Ralph markdown or beads JSONL); ``prd_path`` then only hints the format."""
    priority: str | int | None = None
    model: str | None = None


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")
    who: str = "api"
    channel: str = ""
    """The chat channel ``who`` is an id on (``telegram``, ``slack``…), when it comes from a chat."""


class AnswerRequest(_Reply):
    text: str
    question: int | None = None
    """The seq of the ClarificationRequested event this answers (stale or repeated replies are caught)."""


class DecisionRequest(_Reply):
    decision: str
    reason: str = ""
    checkpoint: int | None = None
    """The seq of the CheckpointReady event this decides (a second click on the same card acts once)."""
    finish: str = ""
    """On the final checkpoint: keep, merge or push the branch (overrides hearth.toml's [finish] action)."""
    dry_run: bool = False
    """Only check that ``who`` may take this decision now (before a reason dialog opens); decide nothing."""


class PriorityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: str | int


class ThreadReplyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    who: str
    """The chat user who wrote it (Slack: ``U…``)."""
