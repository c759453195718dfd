"""The workspace sync codec: host tree scans, sync records in both directions, snapshot copies.

A sync record is ``<BIqI`` (kind, mode, mtime_ns, path length), the path, a ``<Q`` data length
and the data; kinds: ``x`` delete, ``d`` directory, ``f`` file, ``l`` symlink. The guest side is
``hearth-exec`` (deploy/guest-image/hearth-exec.c); nothing here follows a symlink.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.sandbox.files import remove_entry

_REC = struct.Struct("<BIqI")  # type, mode, mtime_ns, path length; then path, u64 length, data
_U64 = struct.Struct("<Q")
_CLOCK_REALTIME_COARSE = 5  # Linux; file timestamps come from this clock

Entry = tuple  # ('d', mode) | ('f', size, mtime_ns, mode) | ('l', target)


def _walk(root: Path) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative path, path, lstat) of every entry under ``root``, never following a symlink."""
    stack = [("", str(root))]
    while stack:
        rel, path = stack.pop()
        try:
            it = os.scandir(path)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                r = f"{rel}{e.name}"
                if stat.S_ISDIR(st.st_mode):
                    stack.append((r + "/", e.path))
                yield r, e.path, st


def scan_workspace(root: Path) -> dict[str, Entry]:
    """Every entry under ``root`` (not following symlinks), keyed by its relative path."""
    out: dict[str, Entry] = {}
    for r, path, st in _walk(root):
        if stat.S_ISLNK(st.st_mode):
            out[r] = ("l", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[r] = ("d", stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            out[r] = ("f", st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return out


def _safe_rel(name: str) -> str | None:
    name = name.removeprefix("./").rstrip("/")
    if not name or name.startswith("/"):
        return None
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return name


def _ensure_dir(root: Path, rel: str) -> Path:
    """Create ``root/rel`` as real directories, replacing anything (symlinks!) in the way."""
    cur = root
    if not rel:
        return cur
    for part in rel.split("/"):
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur)
            continue
        if not stat.S_ISDIR(st.st_mode):  # a file or a symlink (never followed)
            os.unlink(cur)
            os.mkdir(cur)
    return cur


def encode_records(root: Path, baseline: dict[str, Entry], current: dict[str, Entry]) -> bytes:
    """Sync records taking the guest from ``baseline`` to ``current`` (deletions first)."""
    out = bytearray()

    def rec(kind: str, mode: int, mtime_ns: int, rel: str, data: bytes) -> None:
        path = os.fsencode(rel)
        out.extend(_REC.pack(ord(kind), mode, mtime_ns, len(path)))
        out.extend(path)
        out.extend(_U64.pack(len(data)))
        out.extend(data)

    deleted = sorted(p for p, e in baseline.items() if p not in current or current[p][0] != e[0])
    top: list[str] = []
    for p in deleted:  # a deleted directory takes its children with it
        if not top or not p.startswith(top[-1] + "/"):
            top.append(p)
    for p in top:
        rec("x", 0, 0, p, b"")
    for p in sorted(p for p, e in current.items() if baseline.get(p) != e):
        e = current[p]
        try:
            if e[0] == "d":
                rec("d", e[1], 0, p, b"")
            elif e[0] == "l":
                rec("l", 0o777, 0, p, os.fsencode(e[1]))
            else:
                rec("f", e[3], e[2], p, (root / p).read_bytes())
        except OSError:
            continue
    return bytes(out)


def decode_records(data: bytes) -> list[tuple[str, int, int, str, bytes]]:
    """(kind, mode, mtime_ns, path, data) of each sync record."""
    out = []
    i = 0
    while i + _REC.size <= len(data):
        kind, mode, mtime_ns, plen = _REC.unpack_from(data, i)
        i += _REC.size
        path = os.fsdecode(data[i : i + plen])
        i += plen
        (dlen,) = _U64.unpack_from(data, i)
        i += _U64.size
        out.append((chr(kind), mode, mtime_ns, path, data[i : i + dlen]))
        i += dlen
    return out


def apply_guest_changes(root: Path, records: bytes, guest_paths: set[str] | None) -> None:
    """Apply what the guest changed to the host workspace, never following a symlink.

    ``records``: the changed files and symlinks; ``guest_paths``: every path that exists in the
    guest (sent when a directory changed): host paths missing from it are deleted, directories
    missing on the host are created.
    """
    if guest_paths is not None:
        host = scan_workspace(root)
        for hp in sorted(host, key=lambda p: p.count("/")):
            if hp not in guest_paths:
                remove_entry(root / hp)
    for kind, mode, mtime_ns, name, data in decode_records(records):
        rel = _safe_rel(name)
        if rel is None:
            continue
        parent_rel, _, base = rel.rpartition("/")
        parent = _ensure_dir(root, parent_rel)
        target = parent / base
        if kind == "l":
            link = os.fsdecode(data)
            try:
                if os.readlink(target) == link:
                    continue
            except OSError:
                pass
            remove_entry(target)
            os.symlink(link, target)
        elif kind == "f":
            mode &= 0o7777
            try:
                st = os.lstat(target)
                if stat.S_ISREG(st.st_mode) and st.st_size == len(data) and target.read_bytes() == data:
                    if stat.S_IMODE(st.st_mode) != mode:
                        os.chmod(target, mode)
                    continue
                if not stat.S_ISREG(st.st_mode):
                    remove_entry(target)
            except FileNotFoundError:
                pass
            tmp = parent / f".{base}.hearth-{uuid.uuid4().hex[:8]}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, mode)
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
            os.replace(tmp, target)
    if guest_paths is not None:
        for rel in sorted(guest_paths):
            safe = _safe_rel(rel)
            if safe and not os.path.lexists(root / safe):
                with contextlib.suppress(OSError):
                    _ensure_dir(root, safe)  # directories the command created (files came above)


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)


def identity(root: Path) -> dict[str, tuple[Any, ...]]:
    """Per entry: what tells that it was touched since (inode and ctime; ctime cannot be set)."""
    out: dict[str, tuple[Any, ...]] = {}
    for r, _, st in _walk(root):
        if stat.S_ISDIR(st.st_mode):
            out[r] = ("d", st.st_ino, st.st_mode)
        else:
            out[r] = (stat.S_IFMT(st.st_mode), st.st_ino, st.st_ctime_ns, st.st_mode)
    return out


def tick() -> None:
    """Wait for the coarse clock to move, so a change right after gets a ctime of its own."""
    time.sleep(time.clock_getres(_CLOCK_REALTIME_COARSE) + 0.001)


def restore_tree(ws: Path, copy: Path, recorded: dict[str, tuple[Any, ...]]) -> None:
    """Make ``ws`` match ``copy``, touching only what changed since ``recorded`` was taken."""
    current = identity(ws)
    for rel in sorted(current, key=lambda p: p.count("/")):
        if recorded.get(rel) != current[rel]:
            remove_entry(ws / rel)
    for rel in sorted(recorded):
        src, dst = copy / rel, ws / rel
        if os.path.lexists(dst):
            continue
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            shutil.copytree(src, dst, symlinks=True)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst, follow_symlinks=False)

