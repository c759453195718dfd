"""Host-side snapshots of a workspace: full copies on disk that share unchanged files.

Used by the bwrap and docker sandboxes (the qemu sandbox keeps the VM's own savevm snapshots, and
a copy of its synced workspace, in agent/sandbox/qemu.py).

* ``take()`` copies the workspace into ``<root>/<id>``; files unchanged since the snapshot the
  workspace last matched are hard-linked from it (snapshots are never written, so they can share
  inodes), the rest is copied with reflinks where the filesystem has them.
* ``restore(id)`` replaces only the entries whose inode or ctime changed since that snapshot was
  taken or restored: ctime cannot be set from user space, so an entry with the same inode and ctime
  still holds the snapshot's content.
* A snapshot is written as ``<id>.partial`` and renamed when complete, so a crash never leaves a
  snapshot that looks whole.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import time
import uuid
from pathlib import Path

from agent.processes import wait_until
from agent.sandbox.base import SandboxError
from agent.sandbox.files import copy_tree, remove_entry, remove_tree

SNAPSHOT_DIR_ENV = "HEARTH_SNAPSHOT_DIR"
"""Where snapshots go (``<dir>/<sandbox name>/``); default: ``.hearth-snapshots`` beside the workspace."""


def snapshot_root(workspace: Path, name: str) -> Path:
    """The directory of a sandbox's snapshots; never inside its workspace."""
    root = os.environ.get(SNAPSHOT_DIR_ENV)
    path = (Path(root) if root else workspace.parent / ".hearth-snapshots") / name
    if path.resolve().is_relative_to(workspace.resolve()):
        raise SandboxError(f"snapshot directory {path} is inside the workspace")
    return path


class WorkspaceSnapshots:
    """The snapshots one sandbox instance made of its workspace (removed by ``remove_all``)."""

    def __init__(self, workspace: Path, root: Path) -> None:
        self.workspace = workspace
        self.root = root
        self._manifests: dict[str, _Manifest] = {}
        """Per snapshot: the workspace as it matched it, so restore copies back only what changed."""
        self._latest: str | None = None
        """The snapshot the workspace last matched: the next snapshot hard-links what is unchanged."""

    def path(self, snapshot_id: str) -> Path:
        return self.root / snapshot_id

    def take(self) -> str:
        snapshot_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        partial = self.root / f"{snapshot_id}.partial"
        partial.mkdir(parents=True)
        manifest = _manifest(self.workspace)  # before the copy: a file changed during it looks changed
        base = self._latest if self._latest and (self.root / self._latest).is_dir() else None
        try:
            if base is None:
                copy_tree(self.workspace, partial)
            else:
                _link_or_copy_tree(self.workspace, partial, manifest, (self.root / base, self._manifests[base]))
            partial.rename(self.root / snapshot_id)  # a crash mid-copy never looks complete
        except BaseException:
            remove_tree(partial)
            raise
        _settle(manifest)
        self._manifests[snapshot_id] = manifest
        self._latest = snapshot_id
        return snapshot_id

    def restore(self, snapshot_id: str) -> None:
        """Make the workspace match the snapshot (one taken by another instance is copied whole)."""
        source = self.root / snapshot_id
        if "/" in snapshot_id or snapshot_id.startswith(".") or not source.is_dir():
            raise SandboxError(f"no snapshot {snapshot_id!r} in {self.root}")
        manifest = self._manifests.get(snapshot_id)
        if manifest is None:
            for child in list(self.workspace.iterdir()):
                remove_entry(child)
            copy_tree(source, self.workspace)
            self._manifests[snapshot_id] = manifest = _manifest(self.workspace)
            _settle(manifest)
        else:
            _restore_changed(self.workspace, source, manifest)
        self._latest = snapshot_id
        with contextlib.suppress(OSError):
            os.chmod(self.workspace, source.stat().st_mode & 0o7777)

    def discard(self, snapshot_id: str) -> None:
        self._manifests.pop(snapshot_id, None)
        if self._latest == snapshot_id:
            self._latest = None
        remove_tree(self.root / snapshot_id)

    def remove_all(self) -> None:
        for snapshot_id in list(self._manifests):
            remove_tree(self.root / snapshot_id)
        self._manifests.clear()
        self._latest = None
        with contextlib.suppress(OSError):
            self.root.rmdir()


# -- the incremental copy ------------------------------------------------------------------------


_Manifest = dict[str, tuple[int, int, int, int]]
"""Workspace entry (relative path) → (inode, ctime_ns, size, mode) when a snapshot was taken."""


def _clock_tick_ns() -> int:
    """One tick of the coarse clock that file ctimes come from (CLOCK_REALTIME_COARSE is 5)."""
    try:
        return int(time.clock_getres(5) * 1e9) + 1_000_000
    except OSError:
        return 20_000_000


_CLOCK_TICK_NS = _clock_tick_ns()


def _manifest(root: Path, start: str = "") -> _Manifest:
    """lstat of every entry under ``root/start`` (and of ``start`` itself), parents before children."""
    entries: _Manifest = {}
    top = str(root)
    if start:
        st = os.lstat(os.path.join(top, start))
        entries[start] = (st.st_ino, st.st_ctime_ns, st.st_size, st.st_mode)
        if not stat.S_ISDIR(st.st_mode):
            return entries
    pending = [start]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(top, rel)) as scan:
            for entry in scan:
                st = entry.stat(follow_symlinks=False)
                child = f"{rel}/{entry.name}" if rel else entry.name
                entries[child] = (st.st_ino, st.st_ctime_ns, st.st_size, st.st_mode)
                if stat.S_ISDIR(st.st_mode):
                    pending.append(child)
    return entries


def _link_or_copy_tree(
    workspace: Path, dest: Path, manifest: _Manifest, previous: tuple[Path, _Manifest]
) -> None:
    """Snapshot ``workspace`` into ``dest``, hard-linking files unchanged since the ``previous``
    snapshot was taken or restored (snapshots are never written, so they can share inodes) and
    copying the rest."""
    base, base_manifest = previous
    src_top, dest_top, base_top = str(workspace), str(dest), str(base)
    to_copy: list[str] = []
    dirs: list[str] = []
    for rel, entry in manifest.items():  # parents before children
        if stat.S_ISDIR(entry[3]):
            os.mkdir(os.path.join(dest_top, rel))
            dirs.append(rel)
            continue
        if stat.S_ISREG(entry[3]) and base_manifest.get(rel) == entry:  # untrusted entries have inode -1
            try:
                os.link(os.path.join(base_top, rel), os.path.join(dest_top, rel))
                continue
            except OSError:
                pass  # gone from base, link limit, another filesystem: copy it
        to_copy.append(rel)
    _copy_entries(workspace, dest, to_copy)
    as_root = os.geteuid() == 0
    for rel in [*reversed(dirs), ""]:  # after filling, which changes their mtimes
        src, dst = os.path.join(src_top, rel), os.path.join(dest_top, rel)
        shutil.copystat(src, dst, follow_symlinks=False)
        if as_root:
            st = os.lstat(src)
            os.chown(dst, st.st_uid, st.st_gid)


def _copy_entries(source: Path, dest: Path, rels: list[str]) -> None:
    """``cp -a`` of these entries of ``source`` to the same relative paths under ``dest``."""
    for batch in range(0, len(rels), 500):
        done = subprocess.run(
            ["cp", "-a", "--reflink=auto", "--parents", "-t", str(dest), "--", *rels[batch:batch + 500]],
            cwd=source, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SandboxError(f"copying from {source} to {dest} failed: {done.stderr.strip()}")


def _restore_changed(workspace: Path, source: Path, manifest: _Manifest) -> None:
    """Make ``workspace`` match the snapshot ``source`` by replacing only what changed since it was
    taken. ctime cannot be set from user space, so an entry whose inode and ctime are unchanged
    still holds the snapshot's content, whatever its mtime says."""
    current = _manifest(workspace)
    gone: set[str] = set()
    for rel, now in current.items():
        if rel.rpartition("/")[0] in gone:
            gone.add(rel)
            continue
        then = manifest.get(rel)
        if then is not None and stat.S_ISDIR(now[3]) and now[0] == then[0] and stat.S_ISDIR(then[3]):
            if now[3] != then[3]:
                os.chmod(workspace / rel, stat.S_IMODE(then[3]))
            continue
        if then != now:
            remove_entry(workspace / rel)
            gone.add(rel)
    missing: list[str] = []
    absent: set[str] = set()
    for rel in manifest:  # parents before children: copy a missing directory whole
        if rel.rpartition("/")[0] in absent:
            absent.add(rel)
        elif rel in gone or rel not in current:
            absent.add(rel)
            missing.append(rel)
    _copy_entries(source, workspace, missing)
    for rel in missing:  # the copies are new inodes; record them so the next restore keeps them
        manifest.update(_manifest(workspace, rel))
    _settle(manifest)


def _settle(manifest: _Manifest) -> None:
    """Return once the clock is past every recorded ctime, so that any later change to an entry
    gets a different ctime; a ctime the clock does not pass (it went backwards) is never trusted."""
    newest = max((entry[1] for entry in manifest.values()), default=0)
    wait_until(lambda: time.time_ns() > newest + _CLOCK_TICK_NS, 0.2, 0.002)
    horizon = time.time_ns() - _CLOCK_TICK_NS
    for rel, (_, ctime_ns, size, mode) in manifest.items():
        if ctime_ns >= horizon:
            manifest[rel] = (-1, ctime_ns, size, mode)
