"""The behaviour every Sandbox backend owes, as plain functions over a factory.

A backend's test module runs them all::

    @pytest.mark.parametrize("check", CONTRACT, ids=lambda c: c.__name__)
    def test_contract(check, tmp_path):
        check(make_sandbox, tmp_path)

``make_sandbox(workspace, config)`` returns a fresh sandbox over ``workspace``; each check destroys
what it makes. Checks only use the protocol plus host-side inspection of the workspace and of host
processes, so they hold for namespaces, containers and VMs alike. Commands assume a POSIX shell
with coreutils, git and python3 in the sandbox.
"""

from __future__ import annotations

import hashlib
import resource
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.sandbox.base import ExecResult, Sandbox, SandboxConfig, SandboxError, SandboxEscape

SandboxFactory = Callable[[Path, SandboxConfig], Sandbox]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


@contextmanager
def opened(make: SandboxFactory, workspace: Path, config: SandboxConfig | None = None) -> Iterator[Sandbox]:
    workspace.mkdir(parents=True, exist_ok=True)
    sandbox = make(workspace, config or SandboxConfig(exec_timeout_s=30))
    try:
        yield sandbox
    finally:
        sandbox.destroy()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def host_processes_mentioning(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ok(result: ExecResult) -> ExecResult:
    assert result.ok, result.tail()
    return result


# -- commands ------------------------------------------------------------------------------------


def check_exec_exit_codes_and_streams(make: SandboxFactory, tmp: Path) -> None:
    with opened(make, tmp / "ws") as sb:
        result = sb.exec("echo out; echo err >&2; exit 3")
        assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
        assert not result.ok and not result.timed_out
        assert ok(sb.exec("true")).stdout == ""


def check_exec_env_and_cwd(make: SandboxFactory, tmp: Path) -> None:
    with opened(make, tmp / "ws") as sb:
        sb.write_file("sub/dir/f.txt", "content")
        assert ok(sb.exec('printf %s "$GREETING"', env={"GREETING": "hello world"})).stdout == "hello world"
        path = "/workspace/bin:/usr/local/bin:/usr/bin:/bin"
        assert ok(sb.exec('printf %s "$PATH"', env={"PATH": path})).stdout == path
        assert ok(sb.exec("pwd; cat f.txt", cwd="sub/dir")).stdout == "/workspace/sub/dir\ncontent"
        assert ok(sb.exec("pwd", cwd="/workspace/sub")).stdout == "/workspace/sub\n"
        ok(sb.exec("echo made > made.txt && echo t > /tmp/t && cat /tmp/t && touch \"$HOME/h\""))
        assert (tmp / "ws" / "made.txt").read_text() == "made\n"
        with pytest.raises(SandboxEscape):
            sb.exec("true", cwd="../")


def check_exec_streams_output_before_the_command_ends(make: SandboxFactory, tmp: Path) -> None:
    with opened(make, tmp / "ws") as sb:
        first_seen = threading.Event()
        seen: list[tuple[str, str]] = []

        def on_output(stream: str, text: str) -> None:
            seen.append((stream, text))
            if "first" in text:
                first_seen.set()

        results: list[ExecResult] = []
        command = "echo first; while [ ! -e release ]; do sleep 0.02; done; echo second"
        runner = threading.Thread(target=lambda: results.append(sb.exec(command, on_output=on_output)))
        runner.start()
        try:
            assert first_seen.wait(20), "no output arrived while the command was running"
            assert not results, "the command ended before it was released"
        finally:
            (tmp / "ws" / "release").touch()
            runner.join(30)
        assert results and results[0].stdout == "first\nsecond\n"
        assert "".join(t for s, t in seen if s == "stdout") == "first\nsecond\n"


def check_timeout_kills_the_command_and_its_children(make: SandboxFactory, tmp: Path) -> None:
    marker = f"100.{uuid.uuid4().int % 10**6:06d}"  # a unique sleep length names our processes
    with opened(make, tmp / "ws") as sb:
        started = time.monotonic()
        result = sb.exec(f"trap '' TERM; (sleep {marker}) & sleep {marker}", timeout_s=1)
        assert time.monotonic() - started < 10
        assert result.timed_out and result.exit_code == 124 and not result.ok
        wait_until(lambda: not host_processes_mentioning(marker), 10, "the timed-out processes to die")
        assert ok(sb.exec("echo still usable")).stdout == "still usable\n"


# -- isolation -----------------------------------------------------------------------------------


def check_host_system_files_are_read_only(make: SandboxFactory, tmp: Path) -> None:
    before = digest(Path("/etc/passwd"))
    with opened(make, tmp / "ws") as sb:
        # Opening for append writes nothing even if it were allowed; creating a file is the real write.
        result = sb.exec(": >> /etc/passwd || exit 1; echo x > /etc/hearth-sandbox-probe")
        assert result.exit_code != 0
        assert ok(sb.exec("head -c 4 /etc/passwd")).stdout == "root"  # readable, for tools that need it
    assert digest(Path("/etc/passwd")) == before
    assert not Path("/etc/hearth-sandbox-probe").exists()


def check_shell_cannot_write_outside_the_workspace(make: SandboxFactory, tmp: Path) -> None:
    name = f"escape-{uuid.uuid4().hex[:8]}"
    with opened(make, tmp / "ws") as sb:
        sb.exec(f"echo x > ../{name}; echo x > ../../{name}; echo x > /{name}; mkdir -p ../{name}d")
    assert not (tmp / name).exists() and not (tmp / f"{name}d").exists()
    assert not (tmp.parent / name).exists() and not Path("/", name).exists()


def check_symlinks_out_of_the_workspace_cannot_be_written(make: SandboxFactory, tmp: Path) -> None:
    outside = tmp / "outside.txt"
    outside.write_text("original")
    hostname_before = digest(Path("/etc/hostname")) if Path("/etc/hostname").exists() else None
    ws = tmp / "ws"
    with opened(make, ws) as sb:
        (ws / "abs-link").symlink_to(outside)
        (ws / "rel-link").symlink_to("../outside.txt")
        (ws / "etc-link").symlink_to("/etc/hostname")
        for link in ("abs-link", "rel-link", "etc-link"):
            with pytest.raises(SandboxEscape):
                sb.write_file(link, "pwned")
            with pytest.raises(SandboxEscape):
                sb.read_file(link)
            assert sb.exec(f"echo pwned > {link}").exit_code != 0
    assert outside.read_text() == "original"
    if hostname_before is not None:
        assert digest(Path("/etc/hostname")) == hostname_before


def check_file_api_rejects_escapes(make: SandboxFactory, tmp: Path) -> None:
    with opened(make, tmp / "ws") as sb:
        sb.write_file("a/b/c.txt", "deep")
        assert sb.read_file("a/b/c.txt") == "deep" and sb.read_file("/workspace/a/b/c.txt") == "deep"
        for bad in ("../x", "a/../../x", "/etc/passwd", "/workspace/../x"):
            with pytest.raises(SandboxEscape):
                sb.write_file(bad, "x")
    assert not (tmp / "x").exists()


def check_other_workspaces_are_invisible(make: SandboxFactory, tmp: Path) -> None:
    other = tmp / "other-task"
    other.mkdir()
    (other / "secret.txt").write_text("other task's secret")
    with opened(make, tmp / "ws") as sb:
        result = sb.exec(f"cat {other}/secret.txt; ls {tmp}; cat ../other-task/secret.txt")
        assert result.exit_code != 0
        assert "secret" not in result.stdout


def check_no_network_by_default(make: SandboxFactory, tmp: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        with opened(make, tmp / "ws", SandboxConfig(network="none", exec_timeout_s=30)) as sb:
            connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)"
            result = sb.exec(f'python3 -c "{connect}" && echo connected', timeout_s=15)
            assert result.exit_code != 0 and "connected" not in result.stdout
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


# -- limits --------------------------------------------------------------------------------------


def check_fork_bomb_is_contained(make: SandboxFactory, tmp: Path) -> None:
    marker = f"bomb-{uuid.uuid4().hex[:8]}"
    config = SandboxConfig(pids=64, exec_timeout_s=30)
    with opened(make, tmp / "ws", config) as sb:
        started = time.monotonic()
        sb.exec(f":(){{ :|:& }};:; sleep 1 # {marker}", timeout_s=8)
        assert time.monotonic() - started < 20
        wait_until(lambda: not host_processes_mentioning(marker), 15, "the fork bomb to be gone")
        assert ok(sb.exec("echo alive")).stdout == "alive\n"


def check_memory_limit_is_enforced(make: SandboxFactory, tmp: Path) -> None:
    config = SandboxConfig(memory_mib=256, exec_timeout_s=60)
    with opened(make, tmp / "ws", config) as sb:
        hog = sb.exec('python3 -c "x = bytearray(2 * 1024**3); print(len(x))"')
        assert hog.exit_code != 0 and not hog.stdout
        ok(sb.exec('python3 -c "x = bytearray(32 * 1024**2)"'))  # well under the cap still works


# -- files the sandbox made, as the host reads them ------------------------------------------------


def _returns_within(what: Callable[[], object], timeout_s: float) -> object:
    """``what()``'s result or exception, failing the test if it has not returned in ``timeout_s``
    (the old read_file on a FIFO blocked the host for ever: the thread is left behind, daemonic)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(what())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"the host blocked for over {timeout_s} s"
    return outcome[0]


def check_file_api_never_blocks_on_a_fifo(make: SandboxFactory, tmp: Path) -> None:
    ws = tmp / "ws"
    with opened(make, ws) as sb:
        ok(sb.exec("mkfifo pipe && mkdir -p d && mkfifo d/pipe2"))
        read = _returns_within(lambda: sb.read_file("pipe"), 60)
        # Refused as a FIFO, or absent on the host (qemu syncs back only files, dirs and links).
        refused = isinstance(read, SandboxError) and "FIFO" in str(read)
        assert refused or isinstance(read, FileNotFoundError), read
        assert _returns_within(lambda: sb.write_file("d/pipe2", "plain\n"), 60) is None
        assert sb.read_file("d/pipe2") == "plain\n"  # the FIFO was replaced, not written through
        assert ok(sb.exec("test -f d/pipe2 && cat d/pipe2")).stdout == "plain\n"


def check_file_api_reads_a_bounded_amount(make: SandboxFactory, tmp: Path) -> None:
    ws = tmp / "ws"
    with opened(make, ws) as sb:
        ok(sb.exec("truncate -s 1G sparse.bin"))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(SandboxError, match=r"larger than|not a regular file"):  # qemu: not synced back
            sb.read_file("sparse.bin")
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grown_mib < 64, f"reading a 1 GiB sparse file grew the host by {grown_mib:.0f} MiB"


def check_file_api_replaces_links_instead_of_writing_through(make: SandboxFactory, tmp: Path) -> None:
    ws, outside = tmp / "ws", tmp / "outside.txt"
    outside.write_text("host file\n")
    with opened(make, ws) as sb:
        ok(sb.exec("mkdir -p real && echo inside > real/f.txt && ln -s real linked"))
        assert sb.read_file("linked/f.txt") == "inside\n"  # links inside the workspace still work
        sb.write_file("linked/f.txt", "changed\n")
        assert (ws / "real" / "f.txt").read_text() == "changed\n"
    assert outside.read_text() == "host file\n"


# -- snapshots -----------------------------------------------------------------------------------


def check_snapshot_restore_reverts_files_and_git(make: SandboxFactory, tmp: Path) -> None:
    ws = tmp / "ws"
    with opened(make, ws) as sb:
        sb.write_file("keep.txt", "v1\n")
        sb.write_file("doomed.txt", "delete me\n")
        ok(sb.exec("git init -q -b main && git add -A && git commit -qm one", env=GIT_ENV))
        head = ok(sb.exec("git rev-parse HEAD")).stdout
        inode = ws.stat().st_ino
        snap = sb.snapshot()

        sb.write_file("keep.txt", "v2\n")
        sb.write_file("new/added.txt", "added\n")
        ok(sb.exec("rm doomed.txt && git add -A && git commit -qm two && git branch extra", env=GIT_ENV))
        assert ok(sb.exec("git rev-parse HEAD")).stdout != head

        sb.restore(snap)
        assert ws.stat().st_ino == inode, "restore must keep the workspace directory itself"
        assert sb.read_file("keep.txt") == "v1\n" and sb.read_file("doomed.txt") == "delete me\n"
        assert not (ws / "new").exists()
        assert ok(sb.exec("git rev-parse HEAD")).stdout == head
        assert ok(sb.exec("git status --porcelain; git branch --list extra")).stdout == ""

        sb.write_file("keep.txt", "v3\n")  # a snapshot can be restored more than once
        sb.restore(snap)
        assert sb.read_file("keep.txt") == "v1\n"


CONTRACT: list[Callable[[SandboxFactory, Path], None]] = [
    check_exec_exit_codes_and_streams,
    check_exec_env_and_cwd,
    check_exec_streams_output_before_the_command_ends,
    check_timeout_kills_the_command_and_its_children,
    check_host_system_files_are_read_only,
    check_shell_cannot_write_outside_the_workspace,
    check_symlinks_out_of_the_workspace_cannot_be_written,
    check_file_api_rejects_escapes,
    check_other_workspaces_are_invisible,
    check_no_network_by_default,
    check_fork_bomb_is_contained,
    check_memory_limit_is_enforced,
    check_file_api_never_blocks_on_a_fifo,
    check_file_api_reads_a_bounded_amount,
    check_file_api_replaces_links_instead_of_writing_through,
    check_snapshot_restore_reverts_files_and_git,
]
