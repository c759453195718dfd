"""Finishing a task's branch with real git: fast-forward, merge commits, conflicts, two tasks, push."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.finish import FinishConfig, finish_branch

ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
       "PATH": "/usr/bin:/bin"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=ENV).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "a.txt").write_text("a\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "base")
    return path


def task_commit(repo: Path, branch: str, name: str, text: str, start: str = "main") -> str:
    """A task branch from ``start`` with one commit writing ``name`` (the user's checkout stays put)."""
    git(repo, "branch", branch, start)
    worktree = repo.parent / f"wt-{branch.replace('/', '-')}"
    git(repo, "worktree", "add", "-q", str(worktree), branch)
    (worktree / name).write_text(text)
    git(worktree, "add", "-A")
    git(worktree, "commit", "-qm", f"{branch}: {name}")
    head = git(worktree, "rev-parse", "HEAD")
    git(repo, "worktree", "remove", str(worktree))
    return head


def test_merge_fast_forwards_the_checked_out_base_and_its_files(repo: Path) -> None:
    head = task_commit(repo, "hearth/T-1", "b.txt", "b\n")
    outcome = finish_branch(repo, "hearth/T-1", "merge", FinishConfig(), base="main")
    assert outcome.ok and "fast-forward" in outcome.message
    assert git(repo, "rev-parse", "main") == head and (repo / "b.txt").read_text() == "b\n"
    assert git(repo, "status", "--porcelain") == ""


def test_two_tasks_from_the_same_base_merge_in_turn(repo: Path) -> None:
    first = task_commit(repo, "hearth/T-1", "b.txt", "b\n")
    second = task_commit(repo, "hearth/T-2", "c.txt", "c\n")
    assert finish_branch(repo, "hearth/T-1", "merge", FinishConfig(), base="main").ok
    outcome = finish_branch(repo, "hearth/T-2", "merge", FinishConfig(), base="main")
    assert outcome.ok and "merge commit" in outcome.message
    parents = git(repo, "rev-list", "--parents", "-n", "1", "main").split()[1:]
    assert parents == [first, second]  # the second merge sees the first
    assert (repo / "b.txt").exists() and (repo / "c.txt").exists()


def test_a_conflict_is_reported_and_nothing_changes(repo: Path) -> None:
    task_commit(repo, "hearth/T-1", "a.txt", "one\n")
    task_commit(repo, "hearth/T-2", "a.txt", "two\n")
    assert finish_branch(repo, "hearth/T-1", "merge", FinishConfig(), base="main").ok
    before = git(repo, "rev-parse", "main")
    outcome = finish_branch(repo, "hearth/T-2", "merge", FinishConfig(), base="main")
    assert not outcome.ok and "conflicts in a.txt" in outcome.message
    assert git(repo, "rev-parse", "main") == before and git(repo, "status", "--porcelain") == ""
    assert (repo / "a.txt").read_text() == "one\n"


def test_merge_commit_style_and_a_base_not_checked_out(repo: Path) -> None:
    git(repo, "branch", "release")
    head = task_commit(repo, "hearth/T-1", "b.txt", "b\n")
    outcome = finish_branch(repo, "hearth/T-1", "merge", FinishConfig(merge="merge-commit", base="release"))
    assert outcome.ok and outcome.base == "release"
    assert git(repo, "rev-list", "--parents", "-n", "1", "release").split()[2] == head
    assert git(repo, "rev-parse", "main") != git(repo, "rev-parse", "release")  # main left alone


def test_local_changes_in_the_way_refuse_the_merge(repo: Path) -> None:
    task_commit(repo, "hearth/T-1", "a.txt", "task\n")
    (repo / "a.txt").write_text("my unsaved edit\n")
    before = git(repo, "rev-parse", "main")
    outcome = finish_branch(repo, "hearth/T-1", "merge", FinishConfig(), base="main")
    assert not outcome.ok and "nothing changed" in outcome.message
    assert git(repo, "rev-parse", "main") == before and (repo / "a.txt").read_text() == "my unsaved edit\n"


def test_push_to_the_remote_and_keep(repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    git(repo, "remote", "add", "origin", str(remote))
    head = task_commit(repo, "hearth/T-1", "b.txt", "b\n")
    assert finish_branch(repo, "hearth/T-1", "keep", FinishConfig()).ok
    outcome = finish_branch(repo, "hearth/T-1", "push", FinishConfig())
    assert outcome.ok and git(remote, "rev-parse", "hearth/T-1") == head
    failed = finish_branch(repo, "hearth/T-1", "push", FinishConfig(remote="nowhere"))
    assert not failed.ok and "push of hearth/T-1 to nowhere failed" in failed.message
    assert not finish_branch(repo, "hearth/T-9", "merge", FinishConfig(), base="main").ok


def test_two_tasks_appending_to_the_progress_file_merge_with_both_entries(repo: Path) -> None:
    (repo / ".ralph-tui").mkdir()
    (repo / ".ralph-tui" / "progress.md").write_text("# Progress\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "progress")
    task_commit(repo, "hearth/T-1", ".ralph-tui/progress.md", "# Progress\n## T-1 entry\n")
    task_commit(repo, "hearth/T-2", ".ralph-tui/progress.md", "# Progress\n## T-2 entry\n")
    assert finish_branch(repo, "hearth/T-1", "merge", FinishConfig(), base="main").ok
    outcome = finish_branch(repo, "hearth/T-2", "merge", FinishConfig(), base="main")
    assert outcome.ok, outcome.message
    assert (repo / ".ralph-tui" / "progress.md").read_text() == "# Progress\n## T-1 entry\n## T-2 entry\n"
