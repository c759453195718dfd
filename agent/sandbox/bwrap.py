"""Bubblewrap backend: each command runs in fresh Linux namespaces with the workspace at /workspace.

What a command sees (built per ``exec``; nothing survives between calls except the workspace):

* ``/usr``, ``/etc`` and the ``/bin``, ``/sbin``, ``/lib*`` entries, read-only, mirrored from the
  host (symlinks stay symlinks). ``/etc/shadow``-style files are masked and ``/etc/ssh`` is empty.
  Nothing else of the host: no ``/root``, ``/home``, ``/work``, ``/run``, ``/var``, ``/sys`` and no
  host ``/tmp`` — a sibling task's workspace is not there to be named.
* ``/workspace``: the host workspace, read-write — the only host path a command can change. The
  task clone's git dir (host-private, ``agent.host_git``) is shown read-only at ``/workspace/.git``.
* A private ``/tmp`` (tmpfs, also ``HOME`` and ``/var/tmp``), fresh ``/proc``, minimal ``/dev``;
  the root itself is read-only, so ``echo x > ../escape`` fails.
* New user, pid, ipc, uts, cgroup and (unless ``network="nat"``) network namespaces; all
  capabilities dropped; nested user namespaces disabled; a new session (no TIOCSTI). When the
  command's shell exits, the pid namespace dies with every process it left behind.
* A clean environment: ``PATH``, ``HOME=/tmp``, ``LANG`` plus what the caller passes (given to the
  command through bwrap, never to the host-side bwrap process).

Limits (``SandboxConfig``) are enforced by a cgroup per sandbox that every ``exec`` joins before
bwrap starts: ``pids.max``, memory (``memory.max`` / ``memory.limit_in_bytes``, swap included) and
CPU quota, through cgroup v2 where its controllers can be delegated and cgroup v1 otherwise. Where
no cgroup is writable, ``prlimit`` sets RLIMIT_NPROC (ignored for root) and RLIMIT_AS (per
process). ``enforcement`` says which mechanism holds each limit on this host. Disk: ``prlimit
--fsize`` (RLIMIT_FSIZE) keeps every file under ``disk_mib``; the runner checks the workspace's
total at each checkpoint (``agent.sandbox.files.check_disk_limit``).

Snapshots are full, immutable copies of the workspace (``.git`` included) under
``$HEARTH_SNAPSHOT_DIR/<name>/<id>``, default ``<workspace>/../.hearth-snapshots/<name>/<id>``. The
first is ``cp -a --reflink=auto`` (copy-on-write where the filesystem allows); later ones hard-link
files unchanged since the previous snapshot and copy the rest. ``restore`` makes the workspace match
the snapshot in place — its directory inode survives, so a registered git worktree stays valid —
removing what is new or changed and copying back what is missing. "Unchanged" is judged by inode
and ctime, which no process can set, never by mtime; the workspace never shares an inode with a
snapshot. Snapshot and restore must not run while a command is running in the same sandbox.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import json
import math
import os
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

from agent.sandbox.base import (
    GUEST_WORKSPACE,
    ExecResult,
    OutputCallback,
    SandboxConfig,
    SandboxCrashed,
    SandboxError,
    SandboxUnavailable,
)
from agent.sandbox.cgroups import SandboxCgroup, pid_namespace
from agent.sandbox.files import git_mount_point, guest_dir, read_inside, safe_name, write_inside
from agent.sandbox.output import OutputEmitter, TailBuffer
from agent.sandbox.snapshots import WorkspaceSnapshots, snapshot_root

TIMEOUT_EXIT_CODE = 124
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ROOT_ENTRIES = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc")
_MASKED_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-")
_MASKED_DIRS = ("/etc/ssh",)
_NAMESPACES = ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup")
# Joins the cgroups named before "--" and becomes the rest: no preexec_fn, which is unsafe in a
# threaded host such as a Ray worker, and no window in which bwrap could fork outside the cgroup.
_JOIN_CGROUPS = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


@functools.cache
def _probe(bwrap: str) -> str | None:
    """Why bwrap cannot sandbox on this host, or None. Run once per binary per process."""
    argv = [bwrap, *_NAMESPACES, "--unshare-net", "--disable-userns", "--ro-bind", "/", "/", "true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} could not run: {exc}"
    if done.returncode != 0:
        return f"{bwrap} cannot create namespaces here (exit {done.returncode}): {done.stderr.strip()}"
    return None


class BwrapSandbox:
    kind = "bwrap"

    def __init__(
        self, workspace: Path, config: SandboxConfig, *, name: str = "", extra_ro_binds: tuple[Path, ...] = (),
        git_dir: Path | None = None,
    ) -> None:
        """``extra_ro_binds``: more host paths (toolchains) to expose read-only at the same place.
        ``git_dir``: the workspace's host-private git dir, shown read-only at ``/workspace/.git``."""
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxUnavailable("bwrap (bubblewrap) is not installed: install it or use another backend")
        if (why := _probe(bwrap)) is not None:
            raise SandboxUnavailable(why)
        if not workspace.is_dir():
            raise SandboxError(f"workspace {workspace} is not a directory")
        self.workspace = workspace.resolve()
        self.config = config
        self.name = name or self.workspace.name
        self._bwrap = bwrap
        self._shell = ["bash", "-lc"] if shutil.which("bash") else ["sh", "-c"]
        self._prlimit = shutil.which("prlimit") is not None
        self._extra_ro_binds = tuple(p.resolve() for p in extra_ro_binds)
        self._git_dir = git_dir.resolve() if git_dir is not None and git_dir.is_dir() else None
        self.snapshot_root = snapshot_root(self.workspace, self.name)
        self._snapshots = WorkspaceSnapshots(self.workspace, self.snapshot_root)
        label = f"hearth-{safe_name(self.name)}-{pid_namespace()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._cgroup = SandboxCgroup.create(label, config)
        self.enforcement = self._enforcement()
        """Per limit ("pids", "memory", "cpu"): how it is enforced — cgroup-v1, cgroup-v2, rlimit, none."""
        self._destroyed = False

    # -- commands --------------------------------------------------------------------------------

    def exec(
        self,
        command: str,
        *,
        timeout_s: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str = ".",
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        self._check_alive()
        guest_cwd = guest_dir(self.workspace, cwd)
        timeout = self.config.exec_timeout_s if timeout_s is None else timeout_s
        status_r, status_w = os.pipe()
        if env and "PATH" in env and self._shell[0] == "bash":  # -l sources /etc/profile, which resets PATH
            command = f"export PATH={shlex.quote(env['PATH'])}; {command}"
        argv = [*self._wrapper(), *self._bwrap_argv(guest_cwd, env or {}, status_w), *self._shell, command]
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env={"PATH": GUEST_PATH, "LANG": "C.UTF-8"}, pass_fds=(status_w,), start_new_session=True,
            )
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        emit = OutputEmitter(on_output)
        assert proc.stdout is not None and proc.stderr is not None
        captures = [_Capture("stdout", proc.stdout, emit), _Capture("stderr", proc.stderr, emit)]
        timed_out = False
        ooms_before = self._cgroup.oom_kills() if self._cgroup is not None else 0
        try:
            if not _wait(proc, timeout):
                timed_out = True
                self._kill(proc)
            for capture in captures:
                capture.thread.join(timeout=10)
            if any(c.thread.is_alive() for c in captures) and self._cgroup is not None:
                self._cgroup.kill()  # cannot happen while pid namespaces hold; last resort if they don't
            status = _read_status(status_r)
        except BaseException:
            self._kill(proc)
            raise
        finally:
            os.close(status_r)
        if self._cgroup is not None and self._cgroup.oom_kills() > ooms_before:
            note = f"[hearth] out of memory: a process was killed at the {self.config.memory_mib} MiB limit\n"
            emit("stderr", note)
            captures[1].note(note)
        stdout, stderr = captures[0].text(), captures[1].text()
        duration_ms = (time.monotonic() - started) * 1000
        emit.reraise()
        if timed_out:
            code = TIMEOUT_EXIT_CODE
        elif "exit-code" in status:
            code = int(status["exit-code"])
        else:
            # bwrap itself failed (a mount it could not make) or was killed from outside.
            last = stderr.strip().splitlines()[-1:] or ["no message"]
            message = f"bwrap sandbox ended without an exit status (bwrap exit {proc.returncode}): {last[0]}"
            raise SandboxCrashed(message, (stdout + stderr)[-4000:])
        return ExecResult(exit_code=code, stdout=stdout, stderr=stderr, timed_out=timed_out,
                          duration_ms=duration_ms)

    def _wrapper(self) -> list[str]:
        argv = []
        if self._cgroup is not None:
            procs = [str(f) for f in self._cgroup.procs_files()]
            argv += ["/bin/sh", "-c", _JOIN_CGROUPS, "hearth-sandbox", *procs, "--"]
        rlimits = [f"--nproc={self.config.pids}"] if self.enforcement["pids"] == "rlimit" else []
        if self.enforcement["memory"] == "rlimit":
            rlimits.append(f"--as={self.config.memory_mib * 2**20}")
        if self._prlimit:  # no file may outgrow the disk limit (the runner checks the total)
            rlimits.append(f"--fsize={self.config.disk_mib * 2**20}")
        return [*argv, "prlimit", *rlimits, "--"] if rlimits else argv

    def _bwrap_argv(self, guest_cwd: str, env: dict[str, str], status_fd: int) -> list[str]:
        argv = [self._bwrap, *_NAMESPACES, "--disable-userns", "--die-with-parent", "--new-session",
                "--cap-drop", "ALL", "--hostname", "sandbox", "--json-status-fd", str(status_fd)]
        if self.config.network != "nat":
            argv.append("--unshare-net")
        for entry in _ROOT_ENTRIES:
            host = Path("/", entry)
            if host.is_symlink():
                argv += ["--symlink", os.readlink(host), str(host)]
            elif host.is_dir():
                argv += ["--ro-bind", str(host), str(host)]
        for path in _MASKED_FILES:
            if os.path.lexists(path):
                argv += ["--ro-bind", "/dev/null", path]
        argv += [arg for path in _MASKED_DIRS if os.path.isdir(path) for arg in ("--tmpfs", path)]
        if self.config.network == "nat":  # resolv.conf often points into /run
            argv += ["--ro-bind-try", "/run/systemd/resolve", "/run/systemd/resolve"]
        for extra in self._extra_ro_binds:
            argv += ["--ro-bind", str(extra), str(extra)]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm",
                 "--size", str(self.config.memory_mib * 2**20), "--tmpfs", "/tmp",
                 "--symlink", "../tmp", "/var/tmp"]
        argv += ["--bind", str(self.workspace), GUEST_WORKSPACE, *self._git_binds(),
                 "--remount-ro", "/", "--chdir", guest_cwd]
        guest_env = {"PATH": GUEST_PATH, "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
                     "HEARTH_SANDBOX": self.kind, **env}
        argv.append("--clearenv")
        for key, value in guest_env.items():
            argv += ["--setenv", key, value]
        return [*argv, "--"]

    def _git_binds(self) -> list[str]:
        """The host-private git dir, read-only at /workspace/.git, so ``git status``/``diff``/``log``
        work inside; commits are made host-side. Never anything named by a file in the workspace:
        a ``.git`` file there is sandbox output, and following it would bind whatever it names."""
        if self._git_dir is None:
            return []
        git_mount_point(self.workspace)
        return ["--ro-bind", str(self._git_dir), f"{GUEST_WORKSPACE}/.git"]

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL bwrap; --die-with-parent takes its pid 1, and the pid namespace dies with it —
        this command's processes only, not those of a concurrent exec in the same sandbox."""
        if proc.returncode is None:  # once reaped, its pid could belong to someone else
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def _enforcement(self) -> dict[str, str]:
        held = self._cgroup.enforced if self._cgroup is not None else {}
        prlimit = shutil.which("prlimit") is not None
        fallback = {"pids": "rlimit" if prlimit and os.getuid() != 0 else "none",
                    "memory": "rlimit" if prlimit else "none", "cpu": "none"}
        return {limit: held.get(limit, fallback[limit]) for limit in ("pids", "memory", "cpu")}

    # -- files -----------------------------------------------------------------------------------

    def read_file(self, path: str) -> str:
        self._check_alive()
        return read_inside(self.workspace, path)

    def write_file(self, path: str, content: str) -> None:
        self._check_alive()
        write_inside(self.workspace, path, content)

    # -- snapshots -------------------------------------------------------------------------------

    def snapshot(self) -> str:
        self._check_alive()
        return self._snapshots.take()

    def restore(self, snapshot_id: str) -> None:
        self._check_alive()
        self._snapshots.restore(snapshot_id)

    def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        if self._cgroup is not None:
            self._cgroup.remove()
        self._snapshots.remove_all()

    def __enter__(self) -> BwrapSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    @property
    def cgroups(self) -> dict[str, Path]:
        """This sandbox's cgroup directories ("v2", or the v1 controller's name → path)."""
        return dict(self._cgroup.dirs) if self._cgroup is not None else {}

    def _check_alive(self) -> None:
        if self._destroyed:
            raise SandboxError(f"sandbox {self.name!r} was destroyed")


# -- output --------------------------------------------------------------------------------------


class _Capture:
    """Reads one pipe on a thread as data arrives; keeps the last OUTPUT_CAP_CHARS characters."""

    def __init__(self, stream: str, pipe: IO[bytes], emit: OutputEmitter) -> None:
        self._stream, self._pipe, self._emit = stream, pipe, emit
        self._buffer = TailBuffer()
        self.thread = threading.Thread(target=self._run, name=f"bwrap-{stream}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with self._pipe:
            while chunk := self._pipe.read1(65536):  # type: ignore[attr-defined]
                self._add(decoder.decode(chunk))
        self._add(decoder.decode(b"", final=True))

    def _add(self, text: str) -> None:
        if text:
            self._emit(self._stream, text)
            self._buffer.add(text)

    def note(self, text: str) -> None:
        self._buffer.add(text)

    def text(self) -> str:
        return self._buffer.text()


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for ``proc`` to exit; False on timeout. A pidfd wakes the moment it exits, where
    ``Popen.wait(timeout)`` polls with growing sleeps and adds up to tens of ms per command."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(min(math.ceil(max(timeout, 0) * 1000), 2**31 - 1)):
            return False
    finally:
        os.close(pidfd)
    proc.wait()
    return True


def _read_status(fd: int) -> dict[str, Any]:
    """Merge the JSON documents bwrap wrote to --json-status-fd (child-pid, then exit-code)."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            data += chunk
    merged: dict[str, Any] = {}
    text, decoder, pos = data.decode(errors="replace"), json.JSONDecoder(), 0
    while (pos := _skip_space(text, pos)) < len(text):
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        if isinstance(doc, dict):
            merged.update(doc)
    return merged


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos
