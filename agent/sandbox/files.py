"""Host-side file helpers the sandbox backends share: copying a workspace, removing entries, names,
and the one way the host reads or writes a file a sandbox could have made.

Everything in a workspace is sandbox output, so ``read_workspace_file`` / ``write_workspace_file``
never follow a symbolic link (each path component is opened with ``O_NOFOLLOW`` from the
workspace's own descriptor, so a link swapped in at any level is refused, not followed), read
only regular files (a FIFO, socket or device is refused at once instead of blocking the host for
ever), read at most ``READ_LIMIT_BYTES`` (a sparse 1 GiB file costs the host nothing), and write by
replacing the directory entry (a FIFO or a link there is replaced, never written through).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import uuid
from pathlib import Path, PurePosixPath

from agent.sandbox.base import (
    GUEST_WORKSPACE,
    SandboxConfig,
    SandboxDiskFull,
    SandboxError,
    SandboxEscape,
    resolve_inside,
)

READ_LIMIT_BYTES = 4 * 2**20
"""The most the host reads of one file a sandbox wrote (the read_file tool, the PRD write-back)."""


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


_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
          stat.S_IFBLK: "block device", stat.S_IFDIR: "directory", stat.S_IFLNK: "symbolic link"}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "special file")


def _parts(relpath: str) -> tuple[str, ...]:
    parts = tuple(p for p in PurePosixPath(relpath).parts if p != ".")
    if not parts or PurePosixPath(relpath).is_absolute() or ".." in parts:
        raise SandboxEscape(f"{relpath!r} is not a path inside the workspace")
    return parts


def _open_parent(workspace: Path, relpath: str, *, create: bool) -> tuple[int, str]:
    """A descriptor of the directory holding ``relpath`` (reached without following any link), and
    the entry's name in it. The caller closes the descriptor."""
    parts = _parts(relpath)
    fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts[:-1]):
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = "/".join(parts[: i + 1])
                    raise SandboxEscape(f"{relpath}: {where} is a symbolic link or not a directory; "
                                        "the host never follows links in a workspace") from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def read_workspace_file(workspace: Path, relpath: str, *, limit: int = READ_LIMIT_BYTES) -> bytes:
    """The bytes of the regular file ``relpath`` in ``workspace``: no link followed, no FIFO or
    device opened for long, at most ``limit`` bytes (else ``SandboxError`` saying how to read it)."""
    parent, name = _open_parent(workspace, relpath, create=False)
    try:
        try:  # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SandboxEscape(f"{relpath} is a symbolic link; the host never follows links in a "
                                    "workspace") from None
            raise
    finally:
        os.close(parent)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SandboxError(f"{relpath} is a {_kind(info.st_mode)}, not a regular file: not read")
        too_big = SandboxError(f"{relpath} is larger than the {limit // 1024} KiB the host reads of a file; "
                               "read parts of it with shell (head, tail, sed -n, grep)")
        if info.st_size > limit:
            raise too_big
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # it grew while being read
                raise too_big
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_workspace_file(workspace: Path, relpath: str, data: bytes) -> None:
    """Make ``relpath`` in ``workspace`` a regular file holding ``data``, atomically: missing
    directories are made, a link, FIFO or other special file there is replaced (never written
    through), a regular file keeps its permission bits."""
    parent, name = _open_parent(workspace, relpath, create=True)
    try:
        mode = 0o644
        try:
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", relpath)
            if stat.S_ISREG(info.st_mode):
                mode = stat.S_IMODE(info.st_mode)
        except FileNotFoundError:
            pass
        tmp = f".{name[:200]}.hearth-{uuid.uuid4().hex[:8]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                os.fchmod(handle.fileno(), mode)
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise
    finally:
        os.close(parent)


def workspace_relpath(workspace: Path, path: str) -> str:
    """``path`` (as a sandbox tool names it) relative to ``workspace``, links inside the workspace
    resolved once and the result checked to stay inside (``resolve_inside``)."""
    target = resolve_inside(workspace, path)
    rel = target.relative_to(workspace.resolve()).as_posix()
    if rel == ".":
        raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
    return rel


def read_inside(workspace: Path, path: str) -> str:
    """What a backend's ``read_file`` returns: the file's text (invalid UTF-8 replaced), read by
    ``read_workspace_file`` (no link followed, regular files only, bounded)."""
    return read_workspace_file(workspace, workspace_relpath(workspace, path)).decode("utf-8", errors="replace")


def write_inside(workspace: Path, path: str, content: str) -> None:
    """What a backend's ``write_file`` does, through ``write_workspace_file``."""
    write_workspace_file(workspace, workspace_relpath(workspace, path), content.encode("utf-8"))


def guest_dir(workspace: Path, cwd: str) -> str:
    """``cwd`` (relative to the workspace, or under /workspace) as the guest's path; it must be a
    directory in the workspace."""
    host = resolve_inside(workspace, cwd)
    if not host.is_dir():
        raise SandboxError(f"cwd {cwd!r} is not a directory in the workspace")
    rel = host.relative_to(workspace).as_posix()
    return GUEST_WORKSPACE if rel == "." else f"{GUEST_WORKSPACE}/{rel}"


def workspace_disk_bytes(workspace: Path) -> int:
    """Bytes the workspace's files take on disk (allocated blocks: a sparse file counts what it
    really holds, a hard-linked file once); links are not followed."""
    total, seen = 0, set()
    stack = [str(workspace)]
    while stack:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, PermissionError), os.scandir(stack.pop()) as it:
            for entry in it:
                with contextlib.suppress(FileNotFoundError):
                    info = entry.stat(follow_symlinks=False)
                    if (info.st_dev, info.st_ino) in seen:
                        continue
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode):
                        stack.append(entry.path)
    return total


def check_disk_limit(workspace: Path, config: SandboxConfig) -> None:
    """``SandboxDiskFull`` naming the figures when the workspace is over ``config.disk_mib``."""
    used = workspace_disk_bytes(workspace)
    if used > config.disk_mib * 2**20:
        raise SandboxDiskFull(f"the workspace uses {used / 2**20:.0f} MiB of disk, over its "
                              f"{config.disk_mib} MiB limit (limits.disk_mib in hearth.toml)")
