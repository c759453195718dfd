"""Processes Hearth starts and stops, by PID, on psutil; and polling until a deadline.

One set of rules for every backend (qemu, docker, dockerd, bwrap, the embedded model server, the
local head): a zombie is dead; a PID is only ours while its create time is the one we recorded
(``created``), so a recycled PID is never signalled; stopping is SIGTERM, a wait, then SIGKILL;
a session (``start_new_session=True``) is stopped member by member, since Ray and shells move
their children into process groups of their own but never out of the session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

import psutil

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, ProcessLookupError)
_SAME_START_S = 0.01  # create times come from clock ticks (1/100 s): equal ticks, same process


def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.05, *,
               backoff: float = 1.0, max_interval_s: float = 1.0) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout_s`` passes; one last look at the end.

    The pause starts at ``interval_s`` and grows by ``backoff`` up to ``max_interval_s`` (poll finely
    at first where most waits are short). An exception from ``predicate`` ends the wait: the way to
    say "this will never happen".
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(max(0.0, min(interval_s, deadline - time.monotonic())))
        interval_s = max(interval_s, min(interval_s * backoff, max_interval_s))
    return bool(predicate())


def find(pid: int | None, created: float | None = None) -> psutil.Process | None:
    """The live process ``pid``; None when it is gone, a zombie, or (``created`` given) a newer
    process that took over the PID."""
    if not pid or pid <= 0:
        return None
    process: psutil.Process | None = None
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        if created is not None and abs(process.create_time() - created) > _SAME_START_S:
            return None
    except _GONE:
        return None
    except psutil.AccessDenied:  # someone else's process: it exists, and that is all we may know
        return process if created is None else None
    return process


def alive(pid: int | None, created: float | None = None) -> bool:
    """Whether ``pid`` runs (zombies are dead) and, with ``created``, is still the same process."""
    return find(pid, created) is not None


def created_at(pid: int) -> float | None:
    """``pid``'s create time, to record beside the PID (None when it is gone)."""
    try:
        return psutil.Process(pid).create_time()
    except (*_GONE, psutil.AccessDenied):
        return None


def command_line(pid: int) -> list[str] | None:
    """``pid``'s argv; None when it is gone or not ours to read."""
    try:
        return psutil.Process(pid).cmdline()
    except (*_GONE, psutil.AccessDenied):
        return None


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child, so it does not stay a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal(pid: int, sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            try:
                os.killpg(pid, sig)
                return
            except ProcessLookupError:  # not a group leader (any more): the process alone
                pass
        os.kill(pid, sig)


def _gone(pid: int, created: float | None) -> bool:
    _reap(pid)
    return not alive(pid, created)


def stop(pid: int | None, created: float | None = None, *, term_s: float = 5.0, kill_s: float = 10.0,
         group: bool = False) -> bool:
    """SIGTERM ``pid`` (its process group with ``group``), wait ``term_s``, then SIGKILL and wait
    ``kill_s``. ``term_s=0`` kills at once. Returns whether it was running; nothing is signalled
    when ``created`` no longer matches."""
    if pid is None or not alive(pid, created):
        return False
    for sig, wait_s in ((signal.SIGTERM, term_s), (signal.SIGKILL, kill_s)):
        if sig == signal.SIGTERM and term_s <= 0:
            continue
        _signal(pid, sig, group)
        if wait_until(lambda: _gone(pid, created), wait_s, 0.01):
            break
    return True


def session_members(sid: int) -> list[int]:
    """Live PIDs of session ``sid`` (zombies left out)."""
    members = []
    for pid in psutil.pids():
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            if os.getsid(pid) == sid and alive(pid):
                members.append(pid)
    return members


def stop_session(sid: int | None, *, term_s: float = 20.0, kill_s: float = 5.0) -> None:
    """Stop ``sid`` (a session leader we started) and every process in its session, by PID:
    SIGTERM to all, wait ``term_s`` for the session to empty, then SIGKILL and wait ``kill_s``."""
    if not alive(sid):
        return
    assert sid is not None

    def empty() -> bool:
        _reap(sid)
        return not session_members(sid)

    for sig, wait_s in ((signal.SIGTERM, term_s), (signal.SIGKILL, kill_s)):
        for member in session_members(sid) or [sid]:
            _signal(member, sig, group=False)
        if wait_until(empty, wait_s, 0.2):
            return


def kill_all(members: Callable[[], list[int]], timeout_s: float = 10.0) -> None:
    """SIGKILL whatever ``members()`` lists until it lists nothing (a fork bomb keeps forking)."""

    def none_left() -> bool:
        pids = members()
        for pid in pids:
            _signal(pid, signal.SIGKILL, group=False)
        return not pids

    wait_until(none_left, timeout_s, 0.01)


def kill_session(sid: int, timeout_s: float = 10.0) -> None:
    """SIGKILL every process of session ``sid`` until none is left."""
    kill_all(lambda: session_members(sid), timeout_s)
