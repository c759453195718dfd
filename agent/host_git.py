"""Git as the host runs it on a task's clone: nothing a sandbox wrote is ever run or read as config.

A sandbox's output is hostile (docs/security.md). Git runs code named by its configuration (hooks,
``core.fsmonitor``, filter and diff drivers, ``core.sshCommand``, pagers, ``include.path``…), so a
host ``git add``/``commit`` in a repository whose ``.git`` a sandbox could write would run the
sandbox's code on the host, outside every limit. Two rules stop it:

* **The git dir is host-private.** A task's clone is split: the work tree (``<work>/<task-id>``)
  is what the sandbox sees and writes; the git dir (``<work>/<task-id>.git``, ``task_git_dir``) is
  never inside it. bwrap and docker show it read-only at ``/workspace/.git`` so ``git status``/
  ``diff``/``log`` work inside; qemu syncs only the work tree. Whatever a sandbox leaves at
  ``<work tree>/.git`` (or at ``sub/.git``) is never read by the host as a repository.
* **Every host git call on a task clone runs with ``hardened_git_env``** — through ``run_git``
  or the GitPython repo ``open_task_repo`` returns: ``GIT_DIR``/``GIT_WORK_TREE`` named
  explicitly (no discovery of a planted ``.git``), no system or global config, and command-line
  config (which outranks every file) that turns off hooks, fsmonitor, submodule recursion and
  the ``ext::`` transport. Command-line config also reaches the git processes git starts in a
  nested repository (it is not asked to: submodule recursion is off), so a repository the sandbox
  planted cannot switch them back on. (The receiving side of a push into the user's repository
  runs with that repository's own config: it is the user's, not the sandbox's.)

What ``.gitattributes`` in the work tree can still name is harmless: a filter or diff driver
only runs if some config defines it, and the only config read is the private one Hearth wrote.
The clone shares no object file with the repository it came from (``--no-local``): a hard link
would let a write to the task's objects corrupt the user's repository.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import git

from agent.sandbox.files import remove_tree

HARDENED_CONFIG: dict[str, str] = {
    "core.hooksPath": "/dev/null",
    "core.fsmonitor": "false",
    "core.pager": "cat",
    "core.attributesFile": "/dev/null",
    "diff.ignoreSubmodules": "all",
    "status.submoduleSummary": "false",
    "submodule.recurse": "false",
    "fetch.recurseSubmodules": "false",
    "push.recurseSubmodules": "no",
    "protocol.ext.allow": "never",
    "gc.auto": "0",
    "maintenance.auto": "false",
}
"""Config given on the command line (``GIT_CONFIG_COUNT``): it outranks every config file, and git
passes it on to the git processes it starts (a nested repository's status included)."""

_INHERITED_GIT_VARS_DROPPED = ("GIT_CONFIG_PARAMETERS", "GIT_CONFIG", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                               "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE",
                               "GIT_EXTERNAL_DIFF", "GIT_DIFF_OPTS")


def task_git_dir(work_tree: Path) -> Path:
    """Where the host keeps the git dir of the task clone whose work tree is ``work_tree``."""
    work_tree = Path(os.path.abspath(work_tree))
    return work_tree.with_name(work_tree.name + ".git")


def hardened_git_env(git_dir: Path | None = None, work_tree: Path | None = None) -> dict[str, str]:
    """The environment every host git call on a task clone runs with (merged over the host's own)."""
    env = {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_SYSTEM": "/dev/null",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_PAGER": "cat",
        "GIT_NO_REPLACE_OBJECTS": "1",
        "GIT_CONFIG_COUNT": str(len(HARDENED_CONFIG)),
    }
    for i, (key, value) in enumerate(HARDENED_CONFIG.items()):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    if git_dir is not None:
        env["GIT_DIR"] = str(git_dir)
    if work_tree is not None:
        env["GIT_WORK_TREE"] = str(work_tree)
    return env


def run_git(args: Sequence[str], *, git_dir: Path | None = None, work_tree: Path | None = None,
            cwd: Path | None = None) -> str:
    """Run ``git ARGS`` hardened (see the module docstring); its stdout, or ``git.GitCommandError``."""
    env = {k: v for k, v in os.environ.items()
           if k not in _INHERITED_GIT_VARS_DROPPED and not k.startswith("GIT_CONFIG_")}
    env.update(hardened_git_env(git_dir, work_tree))
    argv = ["git", *args]
    done = subprocess.run(argv, cwd=cwd or work_tree or git_dir or "/", env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise git.GitCommandError(argv, done.returncode, done.stderr, done.stdout)
    return done.stdout


def clone_task_repo(source: str, work_tree: Path) -> git.Repo:
    """A clone of ``source`` with its work tree at ``work_tree`` (left empty: nothing checked out)
    and its git dir host-private at ``task_git_dir(work_tree)``; both replace what was there."""
    work_tree = Path(os.path.abspath(work_tree))
    git_dir = task_git_dir(work_tree)
    remove_tree(work_tree)
    remove_tree(git_dir)
    work_tree.parent.mkdir(parents=True, exist_ok=True)
    # --no-local: objects come through a pack, never hard links into the user's repository.
    run_git(["clone", "--quiet", "--no-local", "--no-checkout", f"--separate-git-dir={git_dir}", "--",
             source, str(work_tree)], cwd=work_tree.parent)
    # The gitfile goes: the host never looks in the work tree for its repository. No core.worktree
    # either: the host names the work tree on every call, and a sandbox that is shown the git dir
    # read-only at /workspace/.git must find its work tree at /workspace, not at a host path.
    (work_tree / ".git").unlink()
    (git_dir / "info").mkdir(exist_ok=True)
    with (git_dir / "info" / "exclude").open("a", encoding="utf-8") as exclude:  # saved tool output
        exclude.write("\n.hearth/\n")
    return open_task_repo(work_tree)


def open_task_repo(work_tree: Path) -> git.Repo:
    """The GitPython repo of a task clone, every command it runs hardened; raises
    ``git.InvalidGitRepositoryError`` when there is no private git dir for ``work_tree``."""
    work_tree = Path(os.path.abspath(work_tree))
    git_dir = task_git_dir(work_tree)
    if not (git_dir / "HEAD").is_file():
        raise git.InvalidGitRepositoryError(f"{work_tree}: no task clone (no {git_dir})")
    repo = git.Repo(str(git_dir))
    # GitPython would take the git dir's parent for the work tree (no core.worktree, see above):
    # name the real one, and give the command wrapper the odb shares the hardened environment.
    repo._working_tree_dir = str(work_tree)
    repo.working_dir = str(work_tree)
    repo.git._working_dir = str(work_tree)
    repo.git.update_environment(**hardened_git_env(git_dir, work_tree))
    return repo


def remove_task_repo(work_tree: Path) -> None:
    """Delete a task clone: its work tree and its private git dir."""
    remove_tree(Path(work_tree))
    remove_tree(task_git_dir(Path(work_tree)))
