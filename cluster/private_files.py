"""Files only the user who runs Hearth may read: the state dir, its tokens, the store.

Each is created private from its first moment (``os.open`` with the mode, never write-then-chmod), so
no other user can ever catch a token in a window; the modes hold under any umask.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` (and missing parents), the leaf made 0700 when this creates it."""
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=PRIVATE_DIR_MODE)
            os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode passes through the umask; 0700 is the point
    return path


def _open_new(path: Path) -> int:
    """A new file at ``path``, 0600 from creation (FileExistsError if there is one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    os.fchmod(fd, PRIVATE_FILE_MODE)  # only ever narrows what the umask left
    return fd


def create_private_file(path: Path) -> None:
    """Make an empty 0600 ``path`` if none exists (e.g. before SQLite opens it: its -wal and -shm files
    then take the same mode)."""
    with contextlib.suppress(FileExistsError):
        os.close(_open_new(path))


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, atomically, through a 0600 file beside it."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    with os.fdopen(_open_new(partial), "w") as handle:
        handle.write(text)
    partial.replace(path)


def ensure_token_file(path: Path) -> str:
    """The token in ``path``, made (random, 0600 from its first moment) if missing.

    ``O_EXCL`` on the final name: two processes starting at once agree on one token.
    """
    try:
        fd = _open_new(path)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()
