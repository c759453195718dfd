"""Nothing a sandbox writes is run, or read as configuration, by the host's git (agent/host_git.py).

A scripted model (named so: the sandbox and the host's git are the subject) and the step's check
command plant everything git would run: hooks, ``core.fsmonitor``, ``core.hooksPath``, an
``include.path``, a ``.gitattributes`` filter and diff driver, and a nested repository with its own
fsmonitor, hooks and filter. The planted program touches a marker file at a host path; the host
then checkpoints (``git add``/``commit``/``push``/``diff``) as usual. The marker must never appear,
and the user's repository must stay intact (``git fsck``) and its checkout untouched.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import git
import pytest
from tests_support import RecordingController, runner_for, spec_for

from agent.events import TerminationReason
from agent.host_git import clone_task_repo, hardened_git_env, run_git, task_git_dir
from agent.models.scripted import ScriptedChat
from agent.project import prepare_workspace, task_branch
from agent.sandbox import SandboxConfig
from agent.sandbox.bwrap import BwrapSandbox


def plant_script(ws: Path, marker: Path) -> str:
    """Shell that plants every git code-execution vector; each names ``<host ws>/evil.sh``, which
    touches ``marker`` (a host path: a sandbox's own /tmp is private, so only the host can make it)."""
    evil = ws / "evil.sh"
    return f"""set +e
cd /workspace
printf '#!/bin/sh\\ntouch {marker}\\ncat\\n' > evil.sh; chmod +x evil.sh
mkdir -p .git/hooks hooks
for h in post-commit pre-commit pre-push reference-transaction post-checkout post-index-change; do
  cp evil.sh .git/hooks/$h; cp evil.sh hooks/$h
done
git config core.fsmonitor {evil}
git config core.hooksPath {ws}/hooks
git config core.pager {evil}
git config diff.external {evil}
printf '[core]\\n\\tfsmonitor = {evil}\\n' > evil.cfg; git config include.path {ws}/evil.cfg
git config filter.evil.clean {evil}; git config filter.evil.smudge {evil}; git config diff.evil.command {evil}
printf '* filter=evil diff=evil\\n' > .gitattributes
mkdir -p sub && cd sub && git init -q . && echo one > f && git add f \\
  && git -c user.name=a -c user.email=a@a -c core.hooksPath=/dev/null commit -qm one
git config core.fsmonitor {evil}; git config filter.evil.clean {evil}
mkdir -p .git/hooks; for h in post-commit pre-commit post-index-change; do cp ../evil.sh .git/hooks/$h; done
printf '* filter=evil\\n' > .gitattributes; echo two >> f
true
"""


def plant_and_checkpoint(project: Path, sandbox: str, tmp_path: Path) -> tuple[Path, object]:
    ws = project / ".hearth" / "work" / "T-7"
    marker = tmp_path / "ran-on-the-host"
    script = plant_script(ws, marker)
    (tmp_path / "plant.sh").write_text(script)
    spec = spec_for(project, sandbox=sandbox, check=script)  # the check command plants too
    model = ScriptedChat([{"name": "shell", "arguments": {"command": script}},
                          {"name": "write_file", "arguments": {"path": ".git/hooks/post-commit",
                                                               "content": f"#!/bin/sh\ntouch {marker}\n"}}])
    result = runner_for(spec, RecordingController(), model).run()
    return marker, result


def assert_nothing_ran(project: Path, marker: Path, result: object) -> None:
    assert getattr(result, "reason", None) == TerminationReason.completed, getattr(result, "message", result)
    assert not marker.exists(), "sandbox-written git configuration or hooks ran on the host"
    user = git.Repo(project)
    assert len(list(user.iter_commits(f"main..{task_branch('T-7')}"))) == 2  # both checkpoints landed
    assert subprocess.run(["git", "fsck", "--strict"], cwd=project, capture_output=True).returncode == 0
    assert user.active_branch.name == "main" and not user.is_dirty(untracked_files=True)


def test_planted_hooks_and_git_config_never_run_on_the_host_bwrap(greeting_project: Path, tmp_path: Path) -> None:
    marker, result = plant_and_checkpoint(greeting_project, "bwrap", tmp_path)
    assert_nothing_ran(greeting_project, marker, result)


@pytest.mark.docker
def test_planted_hooks_and_git_config_never_run_on_the_host_docker(
    docker_engine: object, greeting_project: Path, tmp_path: Path
) -> None:
    marker, result = plant_and_checkpoint(greeting_project, "docker", tmp_path)
    assert_nothing_ran(greeting_project, marker, result)


@pytest.mark.vm
def test_planted_hooks_and_git_config_never_run_on_the_host_qemu(greeting_project: Path, tmp_path: Path) -> None:
    from agent.sandbox.image import ImageBuildError, build_guest_image

    try:
        build_guest_image()
    except ImageBuildError as exc:
        pytest.skip(f"cannot build the qemu guest image here: {exc}")
    marker, result = plant_and_checkpoint(greeting_project, "qemu", tmp_path)
    assert_nothing_ran(greeting_project, marker, result)


def test_the_task_git_dir_is_outside_the_work_tree_and_read_only_inside(greeting_project: Path) -> None:
    ws = greeting_project / ".hearth" / "work" / "T-1"
    repo = prepare_workspace(greeting_project, "T-1", git.Repo(greeting_project).head.commit.hexsha, ws)
    assert Path(repo.git_dir) == task_git_dir(ws) and not task_git_dir(ws).is_relative_to(ws)
    assert not (ws / ".git").exists()
    with BwrapSandbox(ws, SandboxConfig(), git_dir=task_git_dir(ws)) as sb:
        assert sb.exec("git log --oneline | wc -l").stdout.strip() == "2"
        assert sb.exec("touch .git/config-x || git config core.fsmonitor /bin/true").exit_code != 0


def test_a_dot_git_file_in_the_workspace_never_chooses_a_bind(tmp_path: Path) -> None:
    """A ``.git`` gitfile is sandbox output: naming a host directory in it must not get that
    directory shown inside (the old worktree support followed it)."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("host secret\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".git").write_text(f"gitdir: {secret}\n")
    with BwrapSandbox(ws, SandboxConfig()) as sb:
        assert "host secret" not in sb.exec(f"cat {secret}/key; cat /workspace/.git 2>&1").stdout.replace(
            f"gitdir: {secret}", "")


def test_the_task_clone_shares_no_object_file_with_the_project(greeting_project: Path) -> None:
    ws = greeting_project / ".hearth" / "work" / "T-1"
    repo = prepare_workspace(greeting_project, "T-1", git.Repo(greeting_project).head.commit.hexsha, ws)
    user_objects = {(s.st_dev, s.st_ino) for p in (greeting_project / ".git" / "objects").rglob("*")
                    if p.is_file() and (s := p.stat())}
    task_objects = {(s.st_dev, s.st_ino) for p in (Path(repo.git_dir) / "objects").rglob("*")
                    if p.is_file() and (s := p.stat())}
    assert user_objects and task_objects and not user_objects & task_objects


def test_overwriting_task_objects_cannot_corrupt_the_users_repository(greeting_project: Path) -> None:
    ws = greeting_project / ".hearth" / "work" / "T-1"
    repo = prepare_workspace(greeting_project, "T-1", git.Repo(greeting_project).head.commit.hexsha, ws)
    # What a step would do if it could reach the objects, done here from the host side.
    for obj in (Path(repo.git_dir) / "objects").rglob("*"):
        if obj.is_file():
            os.chmod(obj, 0o644)
            obj.write_bytes(b"garbage")
    assert subprocess.run(["git", "fsck", "--strict"], cwd=greeting_project, capture_output=True).returncode == 0


def test_hardened_git_ignores_a_planted_dot_git_and_its_config(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    run_git(["init", "-q", "-b", "main"], cwd=source)
    (source / "a").write_text("a\n")
    run_git(["add", "a"], cwd=source)
    run_git(["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a"], cwd=source)
    ws = tmp_path / "work" / "T"
    clone_task_repo(str(source), ws)
    marker = tmp_path / "marker"
    planted = ws / ".git"
    subprocess.run(["git", "init", "-q", str(ws)], check=True)  # a whole repository where .git was
    subprocess.run(["git", "-C", str(ws), "config", "core.fsmonitor", f"touch {marker}; false"], check=True)
    run_git(["checkout", "-q", "main"], git_dir=task_git_dir(ws), work_tree=ws)
    run_git(["status", "--porcelain"], git_dir=task_git_dir(ws), work_tree=ws)
    assert not marker.exists() and planted.is_dir()
    env = hardened_git_env()
    assert env["GIT_CONFIG_GLOBAL"] == "/dev/null" and "core.hooksPath" in env.values()
