"""Host-side file helpers the sandbox backends share: copying a workspace, removing entries, names."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

from agent.sandbox.base import SandboxError


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


def git_mount_point(workspace: Path) -> None:
    """Make ``<workspace>/.git`` a plain empty directory to mount the host-private git dir on.

    Whatever a command left there (a file, a symlink, a planted repository) is removed first, never
    followed: the host does not read it, and a mount over a symlink would land where it points.
    """
    target = workspace / ".git"
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not (stat.S_ISDIR(mode) and _is_empty(target)):
        remove_entry(target)
        mode = None
    if mode is None:
        os.mkdir(target, 0o755)


def _is_empty(directory: Path) -> bool:
    with os.scandir(directory) as entries:
        return next(entries, None) is None
