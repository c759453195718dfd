"""Finishing a completed task's branch (``[finish]`` in hearth.toml): keep, merge or push.

Runs where the project's repository is (the head). ``merge`` makes the base branch point at the
task's work: by fast-forward when the base has not moved since the task started, else with a merge
commit (``merge = "merge-commit"`` always makes one). The merge is computed with
``git merge-tree --write-tree`` (no worktree is touched while computing), so a conflict is found
before anything changes and is reported with the conflicting paths — never forced, never half done.
The base is then moved: with ``git merge --ff-only`` in the user's checkout when that branch is
checked out there (so their files follow; git refuses rather than overwrite their local changes),
else with a compare-and-swap ``update-ref``. Tasks finish one at a time on the scheduler, so the
second of two tasks merges on top of the first.

``push`` pushes the task branch to the project's remote, ready for a pull request.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FinishAction = Literal["keep", "merge", "push"]
FINISH_ACTIONS: tuple[str, ...] = ("keep", "merge", "push")
APPEND_ONLY = (".ralph-tui/progress.md",)
"""Files both sides only append to: a conflict in them is merged as the union of the additions."""
IDENTITY = {"GIT_AUTHOR_NAME": "Hearth", "GIT_AUTHOR_EMAIL": "hearth@localhost",
            "GIT_COMMITTER_NAME": "Hearth", "GIT_COMMITTER_EMAIL": "hearth@localhost"}


class FinishConfig(BaseModel):
    """What happens to a task's branch at its final approval (``[finish]``)."""

    model_config = ConfigDict(extra="forbid")

    action: FinishAction = Field(
        default="keep",
        description="keep the branch, merge it into the base branch, or push it to `remote`; a decision "
        "(`hearth approve T-1 --finish merge`, the API, chat) overrides it.",
    )
    merge: Literal["fast-forward", "merge-commit"] = Field(
        default="fast-forward",
        description="fast-forward when the base has not moved (else a merge commit), or always a merge commit.",
    )
    base: str = Field(default="", description="Branch to merge into; empty: the branch checked out at submit.")
    remote: str = Field(default="origin", description="Remote that `push` pushes the task branch to.")


class FinishOutcome(BaseModel):
    action: str
    ok: bool
    message: str
    base: str = ""
    commit: str = ""


class _Git:
    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["git", *args], cwd=self.path, capture_output=True, text=True,
                                env={**os.environ, **IDENTITY})
        if check and result.returncode != 0:
            raise RuntimeError((result.stderr or result.stdout).strip() or f"git {args[0]} failed")
        return result

    def out(self, *args: str) -> str:
        return self.run(*args).stdout.strip()

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.run("merge-base", "--is-ancestor", older, newer, check=False).returncode == 0


def finish_branch(project_path: Path, branch: str, action: str, config: FinishConfig, *, base: str = "",
                  title: str = "") -> FinishOutcome:
    """Keep, merge or push ``branch``; a failure is an outcome with ``ok=False``, never an exception."""
    if action not in FINISH_ACTIONS:
        return FinishOutcome(action=action, ok=False, message=f"unknown finish {action!r}: keep, merge or push")
    git = _Git(project_path)
    try:
        head = git.out("rev-parse", "--verify", f"refs/heads/{branch}")
    except RuntimeError:
        return FinishOutcome(action=action, ok=False, message=f"branch {branch} is not in {project_path}")
    if action == "keep":
        return FinishOutcome(action=action, ok=True, message=f"branch {branch} kept at {head[:10]}", commit=head)
    if action == "push":
        return _push(git, branch, head, config.remote)
    target = config.base or base
    if not target:
        return FinishOutcome(action=action, ok=False, message=(
            "no base branch to merge into: the project was on a detached HEAD at submit and [finish] base is unset"))
    try:
        return _merge(git, branch, head, target, config.merge, title)
    except RuntimeError as exc:
        return FinishOutcome(action=action, ok=False, base=target,
                             message=f"merge of {branch} into {target} refused; nothing changed: {exc}")


def _push(git: _Git, branch: str, head: str, remote: str) -> FinishOutcome:
    try:
        git.out("push", remote, f"refs/heads/{branch}:refs/heads/{branch}")
    except RuntimeError as exc:
        return FinishOutcome(action="push", ok=False, message=f"push of {branch} to {remote} failed: {exc}")
    return FinishOutcome(action="push", ok=True, commit=head,
                         message=f"pushed {branch} to {remote}, ready for a pull request")


def _merge(git: _Git, branch: str, head: str, base: str, style: str, title: str) -> FinishOutcome:
    try:
        old = git.out("rev-parse", "--verify", f"refs/heads/{base}")
    except RuntimeError:
        return FinishOutcome(action="merge", ok=False, base=base, message=f"base branch {base} does not exist")
    if git.is_ancestor(head, old):
        return FinishOutcome(action="merge", ok=True, base=base, commit=old,
                             message=f"{branch} is already in {base}; nothing to do")
    if style == "fast-forward" and git.is_ancestor(old, head):
        new, how = head, "fast-forward"
    else:
        merged = git.run("merge-tree", "--write-tree", "--name-only", old, head, check=False)
        tree = merged.stdout.split("\n", 1)[0].strip()
        if merged.returncode == 1:
            lines = merged.stdout.strip().splitlines()
            paths = [line for line in lines[1:] if line and not line.startswith(("Auto-merging", "CONFLICT"))]
            conflicts = sorted(set(paths)) or lines[1:]
            if conflicts and set(conflicts) <= set(APPEND_ONLY):
                tree = _union(git, tree, old, head, conflicts)
            else:
                return FinishOutcome(action="merge", ok=False, base=base, message=(
                    f"merge of {branch} into {base} has conflicts in {', '.join(conflicts)}; nothing changed "
                    f"(the branch is kept; merge it by hand)"))
        elif merged.returncode != 0:
            raise RuntimeError(merged.stderr.strip())
        message = f"Merge branch '{branch}' into {base}" + (f"\n\n{title}" if title else "")
        new = git.out("commit-tree", tree, "-p", old, "-p", head, "-m", message)
        how = "merge commit"
    _move_base(git, base, old, new)
    return FinishOutcome(action="merge", ok=True, base=base, commit=new,
                         message=f"merged {branch} into {base} ({how}, now {new[:10]})")


def _union(git: _Git, tree: str, old: str, head: str, paths: list[str]) -> str:
    """``tree`` with each append-only file merged as the union of both sides' additions (two tasks
    from one base both append to .ralph-tui/progress.md: keeping both entries is the right merge)."""
    base = git.out("merge-base", old, head)
    with tempfile.TemporaryDirectory(prefix="hearth-union-") as tmp:
        index = {**os.environ, **IDENTITY, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        subprocess.run(["git", "read-tree", tree], cwd=git.path, env=index, check=True, capture_output=True)
        for path in paths:
            sides = []
            for name, rev in (("ours", old), ("base", base), ("theirs", head)):
                side = Path(tmp) / name
                side.write_bytes(subprocess.run(["git", "show", f"{rev}:{path}"], cwd=git.path,
                                                capture_output=True).stdout)
                sides.append(str(side))
            merged = subprocess.run(["git", "merge-file", "-p", "--union", *sides], cwd=git.path,
                                    capture_output=True).stdout
            blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=git.path, input=merged,
                                  capture_output=True, check=True).stdout.decode().strip()
            subprocess.run(["git", "update-index", "--cacheinfo", f"100644,{blob},{path}"], cwd=git.path,
                           env=index, check=True, capture_output=True)
        return subprocess.run(["git", "write-tree"], cwd=git.path, env=index, check=True, capture_output=True,
                              text=True).stdout.strip()


def _move_base(git: _Git, base: str, old: str, new: str) -> None:
    bare = git.out("rev-parse", "--is-bare-repository") == "true"
    current = git.run("symbolic-ref", "-q", "HEAD", check=False).stdout.strip()
    if not bare and current == f"refs/heads/{base}":
        # The user's checkout is on the base: move it with git so their files follow (git refuses
        # rather than overwrite local changes, and then nothing has moved).
        git.out("merge", "--ff-only", "--no-edit", new)
    else:
        git.out("update-ref", "-m", "hearth finish: merge", f"refs/heads/{base}", new, old)
