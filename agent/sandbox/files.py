"""Host-side file helpers the sandbox backends share: copying a workspace, removing entries, names."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

from agent.sandbox.base import GUEST_WORKSPACE, SandboxError, resolve_inside


def copy_tree(source: Path, dest: Path) -> None:
    """Copy the contents of ``source`` into the existing ``dest`` (reflinks where possible)."""
    done = subprocess.run(["cp", "-a", "--reflink=auto", f"{source}/.", f"{dest}/"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SandboxError(f"copying {source} to {dest} failed: {done.stderr.strip()}")


def remove_entry(path: Path) -> None:
    """Remove a file, symlink or directory tree; a missing entry is fine."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        remove_tree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_tree(path: Path) -> None:
    """``rm -rf``, including the read-only directories a command may have left behind."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except PermissionError:
        for root, dirs, _ in os.walk(path):
            for d in dirs:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(root, d), 0o700)
        shutil.rmtree(path)


def safe_name(name: str) -> str:
    """``name`` as a fragment of a file, cgroup or image name: [A-Za-z0-9-_.], at most 40 characters."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40].strip("-_.") or "sandbox"


def read_inside(workspace: Path, path: str) -> str:
    """The text of ``path`` in the workspace (host side); a path that leaves it is refused."""
    return resolve_inside(workspace, path).read_text()


def write_inside(workspace: Path, path: str, content: str) -> None:
    """Write ``content`` to ``path`` in the workspace (host side), making parent directories."""
    target = resolve_inside(workspace, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)


def guest_dir(workspace: Path, cwd: str) -> str:
    """``cwd`` (relative to the workspace, or under /workspace) as the guest's path; it must be a
    directory in the workspace."""
    host = resolve_inside(workspace, cwd)
    if not host.is_dir():
        raise SandboxError(f"cwd {cwd!r} is not a directory in the workspace")
    rel = host.relative_to(workspace).as_posix()
    return GUEST_WORKSPACE if rel == "." else f"{GUEST_WORKSPACE}/{rel}"


def worktree_git_dirs(workspace: Path) -> list[Path]:
    """A worktree's ``.git`` is a file naming a git dir elsewhere: that dir and its common dir
    (existing ones, sorted), which a sandbox shows read-only so ``git status``/``log`` work inside."""
    dotgit = workspace / ".git"
    if not dotgit.is_file():
        return []
    text = dotgit.read_text(errors="replace").strip()
    if not text.startswith("gitdir:"):
        return []
    gitdir = (workspace / text.removeprefix("gitdir:").strip()).resolve()
    common = gitdir / "commondir"
    dirs = {gitdir, (gitdir / common.read_text().strip()).resolve() if common.is_file() else gitdir}
    return [d for d in sorted(dirs) if d.is_dir()]
