"""The scheduler's side of "code goes through the head": projects opened from a path or a URL,
commits bundled for nodes, checkpoints taken and published, files a person reads kept.

Everything here is blocking git and file work; the scheduler calls it through
``asyncio.to_thread`` so its event loop keeps serving. cluster/repos.py holds the mirrors and
cluster/blobs.py the files; this module is the seam between them and the scheduler's decisions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from agent.config import ConfigError, ProjectConfig, parse_config
from agent.prd import PrdError, TaskPlan, load_prd, parse_prd_text
from agent.project import ProjectError, open_project
from agent.transport import TransferError
from cluster.blobs import BlobStore
from cluster.repos import HeadRepos, ProjectSourceError, PublishError, attempt_key, attempt_ref_name, is_git_url


@dataclass(frozen=True)
class OpenedProject:
    """A project as the head sees it at submit time."""

    source: str
    """A path on the head or a git URL: where its code comes from and where task branches go."""
    config: ProjectConfig
    base_commit: str
    local_path: Path | None
    """The project's directory when ``source`` is a path on the head; None for a URL."""


class ProjectCode:
    def __init__(self, state_dir: Path) -> None:
        self.repos = HeadRepos(state_dir / "repos")
        self.blobs = BlobStore(state_dir / "blobs")
        self._scratch = state_dir / "repos" / ".incoming"

    # submit ------------------------------------------------------------------------------------
    def open(self, source: str) -> OpenedProject:
        """Read the project's policy and fetch its code into the head's mirror. Raises ValueError
        (ProjectError, ConfigError, ProjectSourceError) with a sentence naming the project and cause."""
        if not is_git_url(source):
            project = open_project(Path(source))
            head = self.repos.refresh(project.config.name, str(project.path))
            return OpenedProject(str(project.path), project.config, head, project.path)
        scratch = self._scratch / (hashlib.sha256(source.encode()).hexdigest()[:16] + ".git")
        scratch.parent.mkdir(parents=True, exist_ok=True)
        commit = HeadRepos.fetch_source_head(source, scratch)
        text = HeadRepos.read_scratch_file(scratch, commit, "hearth.toml")
        if text is None:
            raise ProjectError(f"{source}: no hearth.toml at its HEAD; run `hearth init` in a clone and push it")
        config = parse_config(text, f"{source}:hearth.toml")
        head = self.repos.refresh(config.name, source)
        return OpenedProject(source, config, head, None)

    def read_prd(self, opened: OpenedProject, prd_path: str) -> tuple[TaskPlan, str | None]:
        """The PRD at ``prd_path`` and its path inside the project (for writing ``passes`` back).

        A path project's PRD is read from its directory (as the user sees it); a URL project's from
        the commit the task starts from."""
        if opened.local_path is not None:
            path = Path(prd_path)
            path = path if path.is_absolute() else opened.local_path / path
            plan = load_prd(path)
            inside = path.resolve().is_relative_to(opened.local_path)
            return plan, str(path.resolve().relative_to(opened.local_path)) if inside else None
        relpath = prd_path.lstrip("/")
        text = self.repos.read_file(opened.config.name, opened.base_commit, relpath)
        if text is None:
            raise PrdError(f"{opened.source}:{relpath}", f"no such file at {opened.base_commit[:12]}")
        return parse_prd_text(text, f"{opened.source}:{relpath}", filename_hint=relpath), relpath

    # attempts -----------------------------------------------------------------------------------
    def bundle(self, project: str, commit: str, have: list[str]) -> bytes:
        return self.repos.bundle(project, commit, have)

    def take_checkpoint(self, project: str, attempt_id: str, commit: str, bundle: bytes) -> None:
        """Keep the checkpoint in the mirror under the attempt's ref (raises TransferError)."""
        task_id = attempt_id.split(".", 1)[0]
        self.repos.receive(project, task_id, attempt_key(attempt_id), commit, bundle)

    def publish(self, project: str, source: str, task_id: str) -> None:
        """Update ``hearth/<task>`` (and the attempt refs) in the project's source (raises PublishError)."""
        self.repos.publish(project, source, task_id)

    def kept_ref(self, project: str, attempt_id: str) -> str:
        """The ref that keeps the attempt's commits, '' if it sent no checkpoint."""
        task_id = attempt_id.split(".", 1)[0]
        ref = attempt_ref_name(task_id, attempt_key(attempt_id))
        return ref if ref in self.repos.attempt_refs(project, task_id) else ""


__all__ = ["ConfigError", "InProcessCodeHost", "OpenedProject", "ProjectCode", "ProjectSourceError", "PublishError",
           "TransferError"]


class InProcessCodeHost:
    """``agent.transport.CodeHost`` for one attempt, calling ``ProjectCode`` directly: the runner's
    tests and bench/transfer.py's baseline use it where there is no Ray in between."""

    def __init__(self, code: ProjectCode, project: str, source: str, attempt_id: str) -> None:
        self.code, self.project, self.source = code, project, source
        self.attempt_id, self.task_id = attempt_id, attempt_id.split(".", 1)[0]

    def bundle(self, commit: str, have: list[str]) -> bytes:
        return self.code.bundle(self.project, commit, have)

    def checkpoint(self, commit: str, bundle: bytes) -> None:
        self.code.take_checkpoint(self.project, self.attempt_id, commit, bundle)
        try:
            self.code.publish(self.project, self.source, self.task_id)
        except PublishError as exc:
            raise TransferError(str(exc)) from None

    def put_blob(self, kind: str, name: str, data: bytes) -> None:
        self.code.blobs.put(self.task_id, kind, name, data)

    def get_blob(self, kind: str, name: str) -> bytes | None:
        return self.code.blobs.get(self.task_id, kind, name)
