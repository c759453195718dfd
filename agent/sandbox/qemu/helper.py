"""The guest's exec helper (``hearth-exec``, deploy/guest-image/hearth-exec.c): what one command
hands back and how the host splits it into the command's output and the workspace changes.

The helper writes the command's stdout and stderr, then the sync data, through its own captured
stdout/stderr, and ends stderr with ``<token> <HelperHeader fields…>``; ``HelperFlags`` says which
parts stayed in guest files because they were too big to ride along.
"""

from __future__ import annotations

import base64
import enum
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

from agent.sandbox.base import SandboxError
from agent.sandbox.qemu.guest_agent import OUTPUT_CAP, GuestAgent, OutputTail
from agent.sandbox.qemu.sync import apply_guest_changes

log = logging.getLogger("hearth.sandbox.qemu")

H = "/run/hearth"  # guest control directory (tmpfs)
HELPER = "/usr/local/sbin/hearth-exec"  # static
OUT_SYNC = "/var/lib/hearth/out.sync"


class HelperFlags(enum.IntFlag):
    """Where the parts of a command's result are (bits of the helper's ``flags``)."""

    OUTPUT_IN_FILES = 1  # stdout/stderr too big: read /run/hearth/o<seq> and e<seq>
    SYNC_IN_FILE = 2  # sync records too big: read OUT_SYNC
    LISTING_IN_FILE = 4  # the guest's path listing too big: read /run/hearth/all
    DIR_CHANGED = 8  # a directory changed: a listing of every guest path comes along


class HelperHeader(NamedTuple):
    """The byte lengths the helper reports after its token, in the order it writes them."""

    stdout_len: int  # the command's stdout, at the start of the helper's stdout
    stderr_len: int  # the command's stderr, at the start of the helper's stderr
    inline_sync_len: int  # sync records after the command's stdout
    changed_len: int  # the list of changed paths, after the command's stderr
    listing_len: int  # the listing of every guest path (DIR_CHANGED, not LISTING_IN_FILE)
    skipped_len: int  # paths not synced back (over 256 MiB)
    flags: HelperFlags
    sync_len: int  # the sync records' full length, wherever they are

    @classmethod
    def parse(cls, fields: bytes) -> HelperHeader:
        out, err, inline, changed, listing, skipped, flags, sync = (int(x) for x in fields.split())
        return cls(out, err, inline, changed, listing, skipped, HelperFlags(flags), sync)


def collect(qga: GuestAgent, status: dict[str, Any], token: str, seq: int, tails: list[OutputTail],
            workspace: Path, name: str) -> tuple[str, str, bool]:
    """Split the helper's captured output into the command's output and apply its sync data to
    ``workspace``; returns (stdout, stderr, whether the workspace changed), streaming what the
    tails did not emit yet."""
    out = base64.b64decode(status.get("out-data", ""))
    err = base64.b64decode(status.get("err-data", ""))
    at = err.rfind(token.encode())
    if at < 0:
        for t in tails:
            t.close()
        raise SandboxError(
            f"guest exec helper failed (exit {status.get('exitcode')}): "
            f"{err.decode(errors='replace')[-2000:]} {out.decode(errors='replace')[-500:]}"
        )
    header = HelperHeader.parse(err[at + len(token) :])
    if header.flags & HelperFlags.OUTPUT_IN_FILES:
        user_out = qga.read_file(f"{H}/o{seq}", OUTPUT_CAP)
        user_err = qga.read_file(f"{H}/e{seq}", OUTPUT_CAP)
        qga.write_file(f"{H}/o{seq}", b"")
        qga.write_file(f"{H}/e{seq}", b"")
    else:
        user_out, user_err = out[: header.stdout_len], err[: header.stderr_len]
    stdout = tails[0].finish(user_out)
    stderr = tails[1].finish(user_err)
    p = header.stderr_len
    changed = err[p : p + header.changed_len]
    p += header.changed_len
    listing = err[p : p + header.listing_len]
    p += header.listing_len
    skipped = err[p : p + header.skipped_len]
    if not changed:
        return stdout, stderr, False
    inline = out[header.stdout_len : header.stdout_len + header.inline_sync_len]
    records = qga.read_file(OUT_SYNC) if header.flags & HelperFlags.SYNC_IN_FILE else inline
    if header.sync_len and len(records) != header.sync_len:
        raise SandboxError(f"workspace sync: got {len(records)} of {header.sync_len} bytes")
    guest_paths: set[str] | None = None
    if header.flags & HelperFlags.DIR_CHANGED:
        if header.flags & HelperFlags.LISTING_IN_FILE:
            listing = qga.read_file(f"{H}/all")
        guest_paths = {os.fsdecode(item[2:]) for item in listing.split(b"\0") if len(item) >= 2}
    apply_guest_changes(workspace, records, guest_paths)
    if skipped:
        names = [os.fsdecode(x[2:]) for x in skipped.split(b"\0") if len(x) > 2]
        log.warning("qemu sandbox %s: not synced back (over 256 MiB): %s", name, names)
    return stdout, stderr, True
