"""A project is a git repo with a ``hearth.toml``.

``init_project`` makes or adopts the repo and writes the policy file, Ralph TUI's config and the
``.gitignore`` entries for runtime files. Each task works in its own clone of the project
(``<project>/.hearth/work/<task-id>``) on branch ``hearth/<task-id>`` from the task's base commit; a
clone rather than a worktree because it is self-contained and it is what another node would have.
Its git dir is host-private and every git call on it is hardened (``agent.host_git``): what a step
writes is never run or read as configuration by the host. Every checkpoint is one commit with
``Hearth-Task``/``Hearth-Step``/``Hearth-Attempt`` trailers, pushed back to the project's branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import git
import tomli_w

from agent.config import ProjectConfig, load_config
from agent.host_git import clone_task_repo

RUNTIME_IGNORES = [
    "# Hearth runtime files",
    ".hearth/",
    "*.json.lock",
    "# Ralph TUI runtime files",
    ".ralph-tui/session.json",
    ".ralph-tui/session-meta.json",
    ".ralph-tui/ralph.lock",
    ".ralph-tui/*.tmp",
    ".ralph-tui/iterations/",
    ".ralph-tui/reports/",
    ".ralph-tui/worktrees/",
    ".ralph-tui/images/",
]

RALPH_CONFIG = """# Ralph TUI Configuration (written by hearth init)
configVersion = "2.1"
tracker = "json"
maxIterations = 10
autoCommit = false

[trackerOptions]
path = "tasks/prd.json"
"""

HEARTH_IDENTITY = ("Hearth", "hearth@localhost")


class ProjectError(ValueError):
    pass


@dataclass(frozen=True)
class Project:
    path: Path
    config: ProjectConfig

    @property
    def repo(self) -> git.Repo:
        return git.Repo(self.path)

    def head_commit(self) -> str:
        return self.repo.head.commit.hexsha


def _commit_all(repo: git.Repo, message: str, paths: list[str]) -> None:
    repo.index.add(paths)
    author = git.Actor(*HEARTH_IDENTITY)
    repo.index.commit(message, author=author, committer=author)


def init_project(path: Path, *, name: str | None = None, config: dict[str, object] | None = None) -> Project:
    """Make or adopt a git repo at ``path`` and give it Hearth's files (existing ones are kept)."""
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    try:
        repo = git.Repo(path)
    except git.InvalidGitRepositoryError:
        repo = git.Repo.init(path, initial_branch="main")
    except git.NoSuchPathError as exc:
        raise ProjectError(f"{path}: cannot create the project directory") from exc
    written: list[str] = []
    toml_path = path / "hearth.toml"
    if not toml_path.exists():
        values: dict[str, object] = {"name": name or path.name, **(config or {})}
        ProjectConfig.model_validate(values)  # fail before writing anything
        toml_path.write_text(_hearth_toml(values), encoding="utf-8")
        written.append("hearth.toml")
    ralph = path / ".ralph-tui" / "config.toml"
    if not ralph.exists():
        ralph.parent.mkdir(exist_ok=True)
        ralph.write_text(RALPH_CONFIG, encoding="utf-8")
        written.append(".ralph-tui/config.toml")
    gitignore = path / ".gitignore"
    existing = gitignore.read_text(encoding="utf-8").splitlines() if gitignore.exists() else []
    missing = [line for line in RUNTIME_IGNORES if line not in existing]
    if missing:
        prefix = "\n" if existing and existing[-1] != "" else ""
        gitignore.write_text("\n".join(existing) + prefix + "\n".join(missing) + "\n", encoding="utf-8")
        written.append(".gitignore")
    if written or not repo.head.is_valid():
        _commit_all(repo, "hearth init", written or [".gitignore"])
    return Project(path, load_config(path))


def _hearth_toml(values: dict[str, object]) -> str:
    header = "# Hearth project policy. Reference: docs/configuration.md\n"
    return header + tomli_w.dumps(values)


def open_project(path: Path) -> Project:
    path = path.resolve()
    try:
        git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise ProjectError(f"{path}: not a git repository; run `hearth init {path}`") from None
    return Project(path, load_config(path))


def task_branch(task_id: str) -> str:
    return f"hearth/{task_id}"


def prepare_workspace(project_path: Path, task_id: str, base_commit: str, workdir: Path) -> git.Repo:
    """A fresh clone at ``workdir`` on ``hearth/<task-id>`` at ``base_commit`` (step 0 state).

    Anything already there (a previous attempt's clone) is discarded: a new attempt starts clean.
    The clone's git dir is host-private and shares no object with the project (``agent.host_git``).
    """
    repo = clone_task_repo(str(project_path), workdir)
    repo.git.checkout("-B", task_branch(task_id), base_commit)
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", HEARTH_IDENTITY[0])
        cfg.set_value("user", "email", HEARTH_IDENTITY[1])
    return repo


def checkpoint_commit(repo: git.Repo, *, task_id: str, step_id: str, attempt_id: str, message: str) -> str:
    """Commit everything in the workspace as one checkpoint; returns the commit id.

    A step that changed nothing still gets a commit (``--allow-empty``) so every checkpoint has an
    id to roll back to and to show in the approval card.
    """
    repo.git.add("-A")
    body = f"{message}\n\nHearth-Task: {task_id}\nHearth-Step: {step_id}\nHearth-Attempt: {attempt_id}\n"
    repo.git.commit("--allow-empty", "--no-verify", "-m", body)
    return repo.head.commit.hexsha


def publish_branch(repo: git.Repo, task_id: str) -> None:
    """Push the task branch to the project repo (forced: a restarted attempt rewrites it)."""
    branch = task_branch(task_id)
    repo.git.push("--force", "origin", f"{branch}:{branch}")


def reset_workspace(repo: git.Repo, commit: str, keep: list[str] | None = None) -> None:
    """Back to ``commit`` exactly, except ``keep``: build outputs a resumed attempt builds on."""
    repo.git.reset("--hard", commit)
    excluded = [arg for path in (keep or []) for arg in ("-e", "/" + path.strip("/"))]
    repo.git.clean("-fdx", "-e", ".hearth-home", *excluded)


def diff_summary(repo: git.Repo, old: str, new: str) -> tuple[str, list[str]]:
    stat = repo.git.diff("--stat", old, new)
    files = [line for line in repo.git.diff("--name-only", old, new).splitlines() if line]
    return stat, files


def checkpoint_commits(project_path: Path, task_id: str, base_commit: str) -> list[tuple[str, str]]:
    """(commit id, subject) of the task branch's checkpoints, oldest first."""
    repo = git.Repo(project_path)
    branch = task_branch(task_id)
    try:
        commits = list(repo.iter_commits(f"{base_commit}..{branch}"))
    except git.GitCommandError:
        return []
    return [(c.hexsha, str(c.summary)) for c in reversed(commits)]


__all__ = [
    "Project",
    "ProjectError",
    "checkpoint_commit",
    "checkpoint_commits",
    "diff_summary",
    "init_project",
    "open_project",
    "prepare_workspace",
    "publish_branch",
    "reset_workspace",
    "task_branch",
]


def write_config(path: Path, config: ProjectConfig) -> None:
    """Rewrite hearth.toml from a config object (used by tests and `hearth init --set`)."""
    data = config.model_dump(exclude_defaults=True)
    data["name"] = config.name
    (path / "hearth.toml").write_text(_hearth_toml(data), encoding="utf-8")
