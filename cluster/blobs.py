"""Files a person reads, kept on the head: ``<state>/blobs/<task>/<kind>/<name>``.

Attempts on any box send them through the scheduler (``Scheduler.put_blob``), so a dead box loses
only its in-flight attempt. Kinds in use: ``transcripts`` (one JSON conversation per step and
attempt), ``checks`` (the full output of each check run), ``pending`` (a conversation parked on a
question, read back by the attempt that resumes it, on whichever box). Another kind of file (build
artifacts, say) is one more kind name: no new code here.

Writes are atomic (temp file + rename); names are checked so no write can leave the task's folder.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

KIND = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
TASK = re.compile(r"^T-[0-9]+$")


class BlobNameError(ValueError):
    """A task id, kind or name that would not stay a plain file under the task's folder."""


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, task_id: str, kind: str, name: str) -> Path:
        if not TASK.match(task_id):
            raise BlobNameError(f"task id {task_id!r} is not of the form T-<number>")
        if not KIND.match(kind):
            raise BlobNameError(f"blob kind {kind!r}: use lowercase letters, digits and dashes")
        if not NAME.match(name) or ".." in name:
            raise BlobNameError(f"blob name {name!r}: use letters, digits, '.', '_' and '-' only")
        return self.root / task_id / kind / name

    def put(self, task_id: str, kind: str, name: str, data: bytes) -> Path:
        target = self.path(task_id, kind, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
        return target

    def get(self, task_id: str, kind: str, name: str) -> bytes | None:
        target = self.path(task_id, kind, name)
        return target.read_bytes() if target.is_file() else None

    def delete(self, task_id: str, kind: str, name: str) -> None:
        self.path(task_id, kind, name).unlink(missing_ok=True)

    def names(self, task_id: str, kind: str) -> list[str]:
        folder = self.path(task_id, kind, "x").parent
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".tmp-"))
