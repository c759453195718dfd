"""The build after a step's check: ``[artifacts]`` in hearth.toml.

When the check passes, the build command runs in the sandbox (``make dist``, ``npm run build``…),
the kept paths are packed, and, if the project has a Dockerfile, an image is built from the tree
the checkpoint will commit by the node's Docker engine (the engine's socket never enters the
sandbox). Any failure — a missing or timed-out command, a kept path that is absent, a symlink out
of the workspace, one over ``max_bytes``, a failing Dockerfile — fails the step's acceptance with
its output, as a failing check does: the model is told and tries again. Nothing of a failed build
is kept: the step's staging directory is emptied before each build.

At the checkpoint, ``publish`` sends the staged artifacts to the task's ``ArtifactSink`` (the
head's content-addressed store) and returns their references for the approval card.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agent.artifacts import ArtifactError, ArtifactRef, ArtifactSink, StagedArtifact, pack
from agent.image_artifact import ImageConfig, build_image
from agent.sandbox.base import Sandbox


class ArtifactsConfig(BaseModel):
    """What a step leaves besides its commit (``[artifacts]``)."""

    model_config = ConfigDict(extra="forbid")

    build: str = Field(default="", description="Command run in the sandbox after the check passes; empty: none.")
    paths: list[str] = Field(default=[], description="Workspace paths to keep after the build (dist/, site/…).")
    build_timeout_s: float = Field(default=600, gt=0, description="Seconds the build command may take.")
    max_bytes: int = Field(default=1 << 30, gt=0, description="Largest artifact kept (bytes; default 1 GiB).")
    image: ImageConfig = Field(default_factory=ImageConfig, description="The optional Docker image.")

    @property
    def enabled(self) -> bool:
        return bool(self.build or self.paths or self.image.dockerfile)


@dataclass
class BuildOutcome:
    ok: bool
    output: str
    """The build's output tail, or the problem (naming the artifact)."""
    staged: list[StagedArtifact] = field(default_factory=list)
    duration_s: float = 0.0


def _tail(text: str, limit: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


class StepBuilder:
    """Builds and stages one task's artifacts step by step (node side)."""

    def __init__(self, config: ArtifactsConfig, *, project: str, task_id: str, workspace: Path,
                 staging: Path) -> None:
        self.config = config
        self.project = project
        self.task_id = task_id
        self.workspace = workspace
        self.staging = staging
        """Node-local, outside the workspace, so ``git clean -fdx`` on a reset never touches it."""
        self.last: dict[str, BuildOutcome] = {}

    def build(self, sandbox: Sandbox, step_id: str) -> BuildOutcome:
        """Build, pack and (maybe) make the image; ``ok=False`` with the problem when anything fails."""
        started = time.monotonic()
        out_dir = self.staging / step_id
        shutil.rmtree(out_dir, ignore_errors=True)
        outcome = self._build(sandbox, step_id, out_dir)
        outcome.duration_s = round(time.monotonic() - started, 3)
        if not outcome.ok:
            shutil.rmtree(out_dir, ignore_errors=True)  # nothing half-kept
        self.last[step_id] = outcome
        return outcome

    def _build(self, sandbox: Sandbox, step_id: str, out_dir: Path) -> BuildOutcome:
        cfg, output = self.config, ""
        if cfg.build:
            result = sandbox.exec(cfg.build, timeout_s=cfg.build_timeout_s, env={"HEARTH_STEP": step_id})
            output = result.tail()
            if result.timed_out:
                return BuildOutcome(False, f"build `{cfg.build}` timed out after {cfg.build_timeout_s:g} s\n{output}")
            if not result.ok:
                hint = " (command not found)" if result.exit_code == 127 else ""
                return BuildOutcome(False, f"build `{cfg.build}` failed with exit code {result.exit_code}{hint}\n"
                                           f"{output}")
        staged: list[StagedArtifact] = []
        try:
            for relpath in cfg.paths:
                staged.append(pack(self.workspace, relpath, out_dir, max_bytes=cfg.max_bytes))
            if cfg.image.dockerfile:
                image, log = build_image(self.workspace, cfg.image, tag=self.image_tag(step_id), out_dir=out_dir,
                                         max_bytes=cfg.max_bytes)
                staged.append(image)
                output = _tail(f"{output}\n{log}")
        except ArtifactError as exc:
            return BuildOutcome(False, f"{exc}\n{output}".strip())
        return BuildOutcome(True, _tail(output), staged)

    def image_tag(self, step_id: str) -> str:
        """The template filled in; the repository lower-cased and both parts cleaned as Docker needs."""
        filled = self.config.image.tag.format(project=self.project, task=self.task_id, step=step_id)
        repo, colon, tag = filled.rpartition(":")
        if not colon or "/" in tag:
            repo, tag = filled, "latest"
        repo = re.sub(r"[^a-z0-9._/:-]+", "-", repo.lower()).strip("-.") or "hearth"
        tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", tag).lstrip("-.")[:128] or "latest"
        return f"{repo}:{tag}"

    def publish(self, step_id: str, sink: ArtifactSink) -> list[ArtifactRef]:
        """Send the step's staged artifacts to ``sink``; their references, in the configured order."""
        outcome = self.last.pop(step_id, None)
        if outcome is None or not outcome.ok:
            return []
        refs = [sink.store(item) for item in outcome.staged]
        shutil.rmtree(self.staging / step_id, ignore_errors=True)
        return refs
