"""agent.processes: alive/stop/stop_session/wait_until on real processes this test starts."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from agent import processes

IGNORE_TERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
               "print('ready', flush=True); time.sleep(600)")


@contextlib.contextmanager
def started(code: str, **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    """A Python child that printed 'ready' (lines before it are left to the caller); killed after."""
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **kwargs) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def _ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen(["true"])
    try:
        assert processes.wait_until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 30)
        assert not processes.alive(child.pid)
    finally:
        child.wait()


def test_a_pid_with_another_create_time_is_not_ours_and_is_never_signalled() -> None:
    with started(IGNORE_TERM) as proc:
        _ready(proc)
        created = processes.created_at(proc.pid)
        assert created is not None and processes.alive(proc.pid, created)
        assert not processes.alive(proc.pid, created - 5)  # what a recycled pid looks like
        assert processes.stop(proc.pid, created - 5, term_s=0) is False
        assert proc.poll() is None


def test_stop_kills_what_ignores_sigterm_and_reaps_our_child() -> None:
    with started(IGNORE_TERM) as proc:
        _ready(proc)
        assert processes.stop(proc.pid, processes.created_at(proc.pid), term_s=0.5, kill_s=10)
        assert not processes.alive(proc.pid)
        assert not psutil.pid_exists(proc.pid)  # reaped: no zombie left behind


def test_stop_session_stops_members_in_other_process_groups() -> None:
    # The leader starts a grandchild in a process group of its own (as Ray's workers are), in the
    # leader's session; stopping the session must stop it too.
    code = (
        "import os, subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {IGNORE_TERM!r}], process_group=0,"
        " stdout=subprocess.PIPE, text=True)\n"
        "child.stdout.readline()\n"
        "print(child.pid, flush=True)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    with started(code, start_new_session=True) as leader:
        assert leader.stdout is not None
        grandchild = int(leader.stdout.readline())
        _ready(leader)
        assert set(processes.session_members(leader.pid)) >= {leader.pid, grandchild}
        processes.stop_session(leader.pid, term_s=1, kill_s=10)
        assert not processes.alive(grandchild)
        assert processes.session_members(leader.pid) == []


def test_wait_until_answers_in_time_gives_up_and_lets_errors_through() -> None:
    started = time.monotonic()
    assert processes.wait_until(lambda: time.monotonic() - started > 0.1, 30, 0.01)
    assert not processes.wait_until(lambda: False, 0.05, 0.01)

    def impossible() -> bool:
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="exited"):
        processes.wait_until(impossible, 30)
