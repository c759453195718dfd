"""Request bodies, and the error responses routes declare (responses are the store's and the
scheduler's own models, as JSON).

Request bodies are strict: ``"priority": true`` is refused, not read as 1. Paths and names may not
hold a NUL byte (no file system takes one); the pattern says so in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("holds a NUL byte, which no file, project or model name can")
    return value


NoNul = Annotated[str, AfterValidator(_no_nul), Field(json_schema_extra={"pattern": r"^[^\x00]*$"})]
"""A string that can name a file or a project: no NUL byte (the schema's pattern says so too)."""


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    project_path: NoNul | None = None
    project: NoNul | None = None
    """Instead of ``project_path``: the name of a project this cluster has run before."""
    prd_path: NoNul | None = None
    """A PRD file, relative to the project or absolute."""
    prd: str | None = None
    """The PRD's text (prd.json, Ralph markdown or beads JSONL); ``prd_path`` then only hints the format."""
    priority: str | int | None = None
    """0-100, or a name (low, normal, high, urgent)."""
    model: NoNul | None = None


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    who: str = "api"
    channel: str = ""
    """The chat channel ``who`` is an id on (``telegram``, ``slack``…), when it comes from a chat."""


class AnswerRequest(_Reply):
    text: str
    question: int | None = None
    """The seq of the ClarificationRequested event this answers (stale or repeated replies are caught)."""


class DecisionRequest(_Reply):
    decision: Literal["approve", "reject"]
    reason: str = ""
    checkpoint: int | None = None
    """The seq of the CheckpointReady event this decides (a second click on the same card acts once)."""
    finish: str = ""
    """On the final checkpoint: keep, merge or push the branch (overrides hearth.toml's [finish] action)."""
    dry_run: bool = False
    """Only check that ``who`` may take this decision now (before a reason dialog opens); decide nothing."""


class PriorityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    priority: str | int
    """0-100, or a name (low, normal, high, urgent)."""


class ErrorDetail(BaseModel):
    """Every refusal but a malformed request (422, FastAPI's list of field errors)."""
    detail: str


WHY = {
    400: "The request is well-formed but Hearth refuses it (the sentence says why)",
    401: "Missing or wrong bearer token",
    403: "The token lacks the right this route needs",
    404: "No such task",
    409: "The request does not fit the task's state",
    410: "What the request names is gone from the head (a deleted blob or repository)",
    503: "The scheduler cannot be reached (it is restarting); retry shortly",
}


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the refusals a route can answer."""
    return {code: {"model": ErrorDetail, "description": WHY[code]} for code in codes}


AUTHED = refusals(401, 403)
"""Every route: a token, with the route's right."""


class ThreadReplyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    who: str
    """The chat user who wrote it (Slack: ``U…``)."""
