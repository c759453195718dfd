"""hearth.toml validation and the project's git behaviour (real repos)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import git
import pytest

from agent.config import ConfigError, load_config, parse_config, parse_priority
from agent.project import (
    checkpoint_commit,
    init_project,
    open_project,
    prepare_workspace,
    publish_branch,
    task_branch,
)


def test_unknown_key_is_an_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="unknown key 'sandbx'"):
        parse_config('name = "p"\nsandbx = "bwrap"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'limits\.cpu'"):
        parse_config('name = "p"\n[limits]\ncpu = 2\n')


def test_bad_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match="key 'approval'"):
        parse_config('name = "p"\napproval = "sometimes"\n')
    with pytest.raises(ConfigError, match="max_priority 10 is below base_priority 50"):
        parse_config('name = "p"\nmax_priority = 10\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("name = \n")
    with pytest.raises(ConfigError, match="missing key 'name'"):
        parse_config("")
    with pytest.raises(ConfigError, match="key 'approval_timeout_s'"):
        parse_config('name = "p"\napproval_timeout_s = 0\n')
    with pytest.raises(ConfigError, match="key 'approval_timeout_action'"):
        parse_config('name = "p"\napproval_timeout_action = "ignore"\n')


def test_priority_words_numbers_and_cap() -> None:
    assert parse_priority("high") == 75
    assert parse_priority("60") == 60
    with pytest.raises(ValueError, match="neither a number"):
        parse_priority("asap")
    with pytest.raises(ValueError, match="outside 0-100"):
        parse_priority(101)
    config = parse_config('name = "p"\nbase_priority = 40\nmax_priority = 70\n')
    assert config.clip_priority(None) == 40
    assert config.clip_priority(90) == 70


def test_init_makes_a_repo_and_keeps_existing_files(tmp_path: Path) -> None:
    project = init_project(tmp_path / "new", config={"check": "true"})
    repo = git.Repo(project.path)
    assert not repo.is_dirty(untracked_files=True)
    assert project.config.check == "true"
    assert (project.path / ".ralph-tui" / "config.toml").read_text().count('tracker = "json"') == 1
    ignores = (project.path / ".gitignore").read_text().splitlines()
    assert ".hearth/" in ignores and ".ralph-tui/session.json" in ignores
    (project.path / "hearth.toml").write_text('name = "kept"\n')
    repo.git.commit("-am", "custom", author="t <t@t>")
    again = init_project(project.path)
    assert again.config.name == "kept"
    assert (project.path / ".gitignore").read_text().splitlines() == ignores


def test_init_rejects_bad_settings_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        init_project(tmp_path / "bad", config={"sandbox": "chroot"})
    assert not (tmp_path / "bad" / "hearth.toml").exists()


def test_open_project_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a git repository"):
        open_project(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    with pytest.raises(ConfigError, match="hearth init"):
        load_config(tmp_path)


def test_checkpoints_have_trailers_and_reach_the_project_branch(greeting_project: Path) -> None:
    project = open_project(greeting_project)
    base = project.head_commit()
    work = greeting_project / ".hearth" / "work" / "T-1"
    repo = prepare_workspace(greeting_project, "T-1", base, work)
    (work / "hello.txt").write_text("hello\n")
    commit = checkpoint_commit(repo, task_id="T-1", step_id="US-001", attempt_id="T-1.1-abc",
                               message="US-001: Create hello file")
    publish_branch(repo, "T-1")
    upstream = git.Repo(greeting_project)
    assert upstream.commit(task_branch("T-1")).hexsha == commit
    trailers = upstream.git.log("-1", "--format=%(trailers:only)", task_branch("T-1"))
    assert "Hearth-Task: T-1" in trailers and "Hearth-Step: US-001" in trailers
    assert "Hearth-Attempt: T-1.1-abc" in trailers
    # The project's own checkout is untouched: work happens on the task branch only.
    assert upstream.active_branch.name == "main" and not (greeting_project / "hello.txt").exists()
    # A new attempt starts from the base commit, discarding the previous attempt's clone.
    repo = prepare_workspace(greeting_project, "T-1", base, work)
    assert repo.head.commit.hexsha == base and not (work / "hello.txt").exists()
    assert json.loads((work / "tasks" / "prd.json").read_text())["name"] == "Greeting Files"
