"""``hearth.toml``: a project's policy, validated strictly.

Every table is a pydantic model with ``extra="forbid"``, so a typo is an error that names the key
(``hearth.toml: unknown key 'sandbx'``). Field docstrings are the configuration reference; see
docs/configuration.md.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.build import ArtifactsConfig
from agent.finish import FinishConfig
from agent.sandbox.base import SandboxConfig

PRIORITY_NAMES = {"low": 25, "normal": 50, "high": 75, "urgent": 90}


def parse_priority(value: str | int) -> int:
    """``"high"`` → 75, ``"60"`` → 60; anything else is a ValueError naming the accepted forms."""
    if isinstance(value, bool) or not isinstance(value, int | str):  # True is an int to Python, not a priority
        raise ValueError(f"priority {value!r} is neither a number 0-100 nor one of {', '.join(PRIORITY_NAMES)}")
    if isinstance(value, int):
        number = value
    elif value.strip().lower() in PRIORITY_NAMES:
        return PRIORITY_NAMES[value.strip().lower()]
    else:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(
                f"priority {value!r} is neither a number 0-100 nor one of {', '.join(PRIORITY_NAMES)}"
            ) from None
    if not 0 <= number <= 100:
        raise ValueError(f"priority {number} is outside 0-100")
    return number


class BudgetConfig(BaseModel):
    """Limits on one step's agent loop (``[budget]``)."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(default=16, ge=1, description="Model turns per step before it is abandoned.")
    step_wall_s: float = Field(default=900, gt=0, description="Wall-clock seconds per step.")
    max_format_errors: int = Field(
        default=6, ge=1, description="Consecutive malformed replies before the step is abandoned."
    )
    stuck_after: int = Field(
        default=5, ge=2,
        description="Identical tool calls in a row that end the step as stuck (each repeat gets a hint first).",
    )
    model_wait_s: float = Field(
        default=300, ge=0,
        description="Seconds a step waits for its model to come back (a crashed or evicted server is "
        "restarted) before the attempt fails; the step then goes on where it was.",
    )


class NotifyConfig(BaseModel):
    """Where people hear about this project's tasks (``[notify]``), e.g. a Slack channel via OpenClaw."""

    model_config = ConfigDict(extra="forbid")

    channel: str = Field(default="", description="OpenClaw channel, e.g. 'slack' or 'telegram'.")
    target: str = Field(default="", description="Channel target, e.g. '#hearth' or a chat id.")
    ask: list[str] = Field(
        default=[], description="Who a question mentions (Slack: 'slack:U…' ids); empty: the approvers."
    )


class ProjectConfig(BaseModel):
    """The top level of ``hearth.toml``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Project name, unique in the cluster.")
    base_priority: int = Field(default=50, ge=0, le=100, description="Priority of a task that asks for none.")
    max_priority: int = Field(default=80, ge=0, le=100, description="Cap on what a task may ask for.")
    approval: Literal["each-step", "final", "none"] = Field(
        default="none", description="Which checkpoints wait for a person's Approve/Reject."
    )
    approval_timeout_s: float | None = Field(
        default=None, gt=0,
        description="Seconds a checkpoint waits for a decision before approval_timeout_action is taken "
        "(counted from the checkpoint; unset: wait for ever).",
    )
    approval_timeout_action: Literal["approve", "reject", "cancel"] = Field(
        default="approve",
        description="What happens when approval_timeout_s passes: approve (continue), reject (roll back and "
        "redo the step) or cancel the task.",
    )
    model: str = Field(default="embedded:smollm2-135m", description="Default model spec for tasks.")
    check: str = Field(
        default="",
        description="Command that accepts a step (run in the sandbox; $HEARTH_STEP names the story), before "
        "the story's own checks (acceptance criteria like \"`pytest tests/x.py` passes\"). Nothing anywhere: "
        "the model's step_done is accepted on its word; submit warns, and approval cards say so.",
    )
    sandbox: Literal["bwrap", "qemu", "docker"] = Field(default="bwrap", description="Sandbox backend.")
    concurrency: int = Field(default=2, ge=1, description="Tasks of this project that may run at once.")
    max_attempts: int = Field(default=3, ge=1, description="Attempts (placements) before a task fails.")
    checkpoints: bool = Field(
        default=True,
        description="Whether this project's tasks may yield their node at a checkpoint. false: never chosen "
        "as a pre-emption victim (they keep their node until they end); checkpoint commits still happen.",
    )
    allowed_nodes: list[str] = Field(default=[], description="Node ids or labels; empty means any node.")
    approvers: list[str] = Field(default=[], description="Channel user ids allowed to approve or reject.")
    limits: SandboxConfig = Field(default_factory=SandboxConfig, description="Sandbox limits.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Per-step budgets.")
    notify: NotifyConfig = Field(default_factory=NotifyConfig, description="Chat routing.")
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig,
                                       description="Build after each step's check; what to keep.")
    finish: FinishConfig = Field(default_factory=FinishConfig,
                                 description="What happens to the branch at the final approval.")

    @field_validator("max_priority")
    @classmethod
    def _cap_at_least_base(cls, value: int, info: Any) -> int:
        base = info.data.get("base_priority", 0)
        if value < base:
            raise ValueError(f"max_priority {value} is below base_priority {base}")
        return value

    def clip_priority(self, requested: int | None) -> int:
        """The priority a task of this project gets: its request clipped to the cap, else the base."""
        return self.base_priority if requested is None else min(requested, self.max_priority)


class ConfigError(ValueError):
    """A hearth.toml that cannot be used; str() names the file and the key."""


def _describe(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        elif item["type"] == "missing":
            problems.append(f"missing key '{key}'")
        else:
            problems.append(f"key '{key}': {item['msg']}")
    return f"{source}: " + "; ".join(problems)


ConfigModel = TypeVar("ConfigModel", bound=BaseModel)


def parse_toml_config(text: str, model: type[ConfigModel], source: str) -> ConfigModel:
    """``text`` as TOML validated into ``model``; any problem is a ``ConfigError`` naming ``source`` and
    the keys (hearth.toml here, head.toml in cluster/head_config.py)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def parse_config(text: str, source: str = "hearth.toml") -> ProjectConfig:
    return parse_toml_config(text, ProjectConfig, source)


def load_config(project_dir: Path) -> ProjectConfig:
    path = project_dir / "hearth.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run `hearth init {project_dir}` first") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_config(text, str(path))
