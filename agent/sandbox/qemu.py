"""QEMU micro-VM sandbox: one VM per sandbox, commands through the QEMU guest agent.

* Boot once per sandbox (per attempt), never per step. Real KVM (``-M microvm -enable-kvm``) is
  used only when ``kvm_intel`` or ``kvm_amd`` is loaded; a ``/dev/kvm`` from ``kvm_pvm`` (nested,
  emulates stock kernels) does not count. Otherwise TCG with ``-M pc`` (``-M microvm`` hangs under
  TCG). The choice is in ``self.accel`` and logged.
* The disk is a qcow2 overlay over the cached base image (``hearth image build``), so ``savevm``
  / ``loadvm`` give whole-machine snapshots (RAM, processes and disk).
* Commands go through qemu-ga over virtio-serial: one ``guest-exec`` (with capture) of the
  guest's static helper ``hearth-exec run`` (deploy/guest-image/hearth-exec.c) plus
  ``guest-exec-status`` polls. The helper runs ``bash -c`` in the ``/sys/fs/cgroup/hearth``
  cgroup (memory, pids and cpu caps) with stdout/stderr in files under ``/run/hearth``, which the
  host tails with ``guest-file-read`` while it runs (that is the streaming: qemu-ga's own capture
  only hands output over once the process has exited). A timeout kills the cgroup
  (``cgroup.kill``), not the VM.
* The workspace is synced, not shared (docs/sandboxes.md has the 9p measurements): before each
  command the host's changes since the last sync go in as sync records through the agent's file
  API (and every ~0.3 s while a command runs); after it the helper reports what the command
  changed (ctime newer than its stamp) in the same captured output, so when ``exec`` returns the
  host workspace matches the guest's ``/workspace``. ``read_file`` / ``write_file`` work on the
  host copy with ``resolve_inside``.
* ``cleanup_stale`` (run at every construction) kills QEMUs and deletes overlays left by dead
  owners; a VM that dies mid-command raises ``SandboxCrashed`` with the last output.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import json
import logging
import math
import os
import re
import secrets
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import platformdirs

from agent.sandbox.base import (
    GUEST_WORKSPACE,
    ExecResult,
    OutputCallback,
    SandboxConfig,
    SandboxCrashed,
    SandboxError,
    SandboxUnavailable,
    resolve_inside,
)
from agent.sandbox.files import read_text_in_workspace, remove_entry, write_text_in_workspace
from agent.sandbox.image import ImageInfo, find_guest_image

log = logging.getLogger("hearth.sandbox.qemu")

QEMU_BIN = "qemu-system-x86_64"
H = "/run/hearth"  # guest control directory (tmpfs)
CGROUP = "/sys/fs/cgroup/hearth"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MEM_RESERVE_MIB = 96  # guest kernel + agent headroom kept out of the task cgroup
OUTPUT_CAP = 32 << 20  # per stream
CHUNK = 1 << 20

CLEAN = "hearth-clean"
HELPER = "/usr/local/sbin/hearth-exec"  # deploy/guest-image/hearth-exec.c, static
_REC = struct.Struct("<BIqI")  # type, mode, mtime_ns, path length; then path, u64 length, data
_U64 = struct.Struct("<Q")
_CLOCK_REALTIME_COARSE = 5  # Linux; file timestamps come from this clock


# ------------------------------------------------------------------------------------------------
# helpers


def default_state_dir() -> Path:
    override = os.environ.get("HEARTH_QEMU_STATE_DIR")
    return Path(override) if override else Path(platformdirs.user_data_dir("hearth")) / "vms"


def detect_accel() -> str:
    """'kvm' only with a real VMX/SVM KVM module loaded; 'tcg' otherwise (HEARTH_QEMU_ACCEL forces)."""
    forced = os.environ.get("HEARTH_QEMU_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    real_kvm = Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists()
    if real_kvm and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "kvm"
    return "tcg"


def _proc_start(pid: int) -> int | None:
    """Start time (clock ticks since boot) of ``pid``, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[19])


def _alive(pid: int, start: int | None) -> bool:
    now = _proc_start(pid)
    if now is None:
        return False
    try:
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    except OSError:
        return False
    return start is None or now == start


def _kill_pid(pid: int, start: int | None, must_contain: str = "", timeout: float = 10.0) -> bool:
    """SIGKILL ``pid`` if it is still the process that started at ``start``; wait until it is gone."""
    if not _alive(pid, start):
        return False
    if must_contain:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        if must_contain not in cmd:
            return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _alive(pid, start) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)
    return True


def cleanup_stale(state_dir: Path | None = None) -> list[str]:
    """Kill QEMUs and delete run dirs (overlays, snapshots) left by sandboxes whose owner died.

    Every sandbox writes ``owner.json`` (owner pid + start time, QEMU pid + start time) into its
    run dir; a run dir whose owning process is gone is stale. Returns the names removed.
    """
    state_dir = state_dir or default_state_dir()
    removed: list[str] = []
    if not state_dir.is_dir():
        return removed
    for d in state_dir.iterdir():
        if not d.is_dir():
            continue
        meta_path = d / "owner.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            # Half-created (the owner died between mkdir and owner.json): stale after a minute.
            with contextlib.suppress(OSError):
                if time.time() - d.stat().st_mtime > 60:
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d.name)
            continue
        if _alive(int(meta.get("owner_pid", 0)), meta.get("owner_start")):
            continue
        qpid = meta.get("qemu_pid")
        if qpid and _kill_pid(int(qpid), meta.get("qemu_start"), must_contain=QEMU_BIN):
            log.info("cleanup_stale: killed leftover qemu pid %s (%s)", qpid, d.name)
        sock_dir = str(meta.get("sock_dir", ""))
        if sock_dir.startswith("/tmp/hearth-qemu-"):
            shutil.rmtree(sock_dir, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d.name)
    return removed


class _Dead(Exception):
    """QEMU exited or the agent channel closed."""


class _Channel:
    """Newline-delimited JSON over a unix socket, with a liveness check while waiting."""

    def __init__(self, path: Path, alive: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                break
            except OSError:
                s.close()
                if not alive():
                    raise _Dead(f"qemu exited before {path.name} was up") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        s.setblocking(False)
        self.sock = s
        self.alive = alive
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise _Dead(f"agent channel closed: {e}") from e
        finally:
            self.sock.setblocking(False)

    def readline(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer")
            r, _, _ = select.select([self.sock], [], [], min(left, 0.25))
            if not r:
                if not self.alive():
                    raise _Dead("qemu exited")
                continue
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError as e:
                raise _Dead(f"channel error: {e}") from e
            if not chunk:
                raise _Dead("channel closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _QMP:
    def __init__(self, path: Path, alive: Callable[[], bool], timeout: float = 30) -> None:
        self.ch = _Channel(path, alive, timeout)
        self.ch.readline(timeout)  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, execute: str, timeout: float = 60, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        self.ch.send(json.dumps(msg).encode() + b"\n")
        while True:
            r = json.loads(self.ch.readline(timeout))
            if "event" in r:
                continue
            if "error" in r:
                raise SandboxError(f"qmp {execute}: {r['error'].get('desc', r['error'])}")
            return r.get("return")

    def hmp(self, line: str, timeout: float = 120) -> str:
        out = self.cmd("human-monitor-command", timeout=timeout, **{"command-line": line})
        return str(out or "")


class _AgentError(SandboxError):
    pass


class _QGA:
    """qemu-ga client. A request that timed out leaves the stream out of step: resync first."""

    def __init__(self, path: Path, alive: Callable[[], bool]) -> None:
        self.ch = _Channel(path, alive, 30)
        self.synced = False
        self._token = int(time.time()) % 1_000_000

    def sync(self, timeout: float, attempt_s: float = 0.25) -> None:
        """guest-sync-delimited until the agent answers (boot wait, after loadvm, after a timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            self._token += 1
            token = self._token
            self.ch.send(b"\xff" + json.dumps({"execute": "guest-sync-delimited",
                                                "arguments": {"id": token}}).encode() + b"\n")
            until = min(deadline, time.monotonic() + attempt_s)
            try:
                while True:
                    line = self.ch.readline(max(0.0, until - time.monotonic()))
                    line = line[line.rfind(b"\xff") + 1 :]
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(r, dict) and r.get("return") == token:
                        self.synced = True
                        return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"guest agent did not answer within {timeout:.0f} s") from None
                attempt_s = min(attempt_s * 1.5, 2.0)

    def call(self, execute: str, timeout: float = 60, **arguments: Any) -> Any:
        if not self.synced:
            self.sync(timeout)
        msg: dict[str, Any] = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        self.ch.send(json.dumps(msg).encode() + b"\n")
        try:
            while True:
                line = self.ch.readline(timeout).lstrip(b"\xff")
                if not line.strip():
                    continue
                r = json.loads(line)
                if "error" in r:
                    raise _AgentError(f"guest agent {execute}: {r['error'].get('desc', r['error'])}")
                return r.get("return")
        except TimeoutError:
            self.synced = False
            raise

    # file API -------------------------------------------------------------------------------
    def read_file(self, path: str, limit: int = 1 << 30) -> bytes:
        try:
            h = self.call("guest-file-open", path=path, mode="r")
        except _AgentError:
            return b""
        out = bytearray()
        try:
            while len(out) < limit:
                r = self.call("guest-file-read", handle=h, count=4 << 20)
                if r.get("count"):
                    out += base64.b64decode(r["buf-b64"])
                if r.get("eof") or not r.get("count"):
                    break
        finally:
            self.call("guest-file-close", handle=h)
        return bytes(out)

    def write_file(self, path: str, data: bytes) -> None:
        h = self.call("guest-file-open", path=path, mode="w")
        try:
            for i in range(0, len(data), CHUNK):
                chunk = base64.b64encode(data[i : i + CHUNK]).decode()
                args: dict[str, Any] = {"handle": h, "buf-b64": chunk}
                self.call("guest-file-write", **args)
        finally:
            self.call("guest-file-close", handle=h)


class _Tail:
    """Streams a guest file that the command appends to (opened lazily: the helper creates it)."""

    def __init__(self, qga: _QGA, path: str, stream: str, on_output: OutputCallback | None) -> None:
        self.qga = qga
        self.path = path
        self.stream = stream
        self.on_output = on_output
        self.handle: int | None = None
        self.pos = 0
        self.eof = False
        self.parts: list[str] = []
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def poll(self) -> None:
        if self.handle is None:
            try:
                self.handle = int(self.qga.call("guest-file-open", path=self.path, mode="r"))
            except _AgentError:
                return  # not created yet
        while self.pos < OUTPUT_CAP:
            if self.eof:  # fread's EOF is sticky: seek to clear it
                self.qga.call("guest-file-seek", handle=self.handle, offset=self.pos, whence="set")
            r = self.qga.call("guest-file-read", handle=self.handle, count=1 << 20)
            n = int(r.get("count", 0))
            self.eof = bool(r.get("eof"))
            if n:
                self.feed(base64.b64decode(r["buf-b64"]))
            if n < (1 << 20):
                return

    def feed(self, data: bytes, final: bool = False) -> None:
        self.pos += len(data)
        text = self.decoder.decode(data, final=final)
        if text:
            self.parts.append(text)
            if self.on_output:
                self.on_output(self.stream, text)

    def finish(self, full: bytes) -> str:
        """``full``: the whole output (from the helper); emits what was not streamed yet."""
        self.feed(full[self.pos :], final=True)
        self.close()
        return "".join(self.parts)

    def close(self) -> None:
        if self.handle is not None:
            with contextlib.suppress(SandboxError, TimeoutError):
                self.qga.call("guest-file-close", handle=self.handle)
            self.handle = None

    def text(self) -> str:
        return "".join(self.parts)


# ------------------------------------------------------------------------------------------------
# host-side workspace bookkeeping

Entry = tuple  # ('d', mode) | ('f', size, mtime_ns, mode) | ('l', target)


def scan_workspace(root: Path) -> dict[str, Entry]:
    """Every entry under ``root`` (not following symlinks), keyed by its relative path."""
    out: dict[str, Entry] = {}
    stack = [("", str(root))]
    while stack:
        rel, path = stack.pop()
        try:
            it = os.scandir(path)
        except OSError:
            continue
        with it:
            for e in it:
                r = f"{rel}{e.name}"
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    out[r] = ("l", os.readlink(e.path))
                elif stat.S_ISDIR(st.st_mode):
                    out[r] = ("d", stat.S_IMODE(st.st_mode))
                    stack.append((r + "/", e.path))
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


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)


def _identity(root: Path) -> dict[str, tuple[Any, ...]]:
    """Per entry: what tells that it was touched since (inode and ctime; ctime cannot be set)."""
    out: dict[str, tuple[Any, ...]] = {}
    stack = [("", str(root))]
    while stack:
        rel, path = stack.pop()
        try:
            it = os.scandir(path)
        except OSError:
            continue
        with it:
            for e in it:
                r = f"{rel}{e.name}"
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    out[r] = ("d", st.st_ino, st.st_mode)
                    stack.append((r + "/", e.path))
                else:
                    out[r] = (stat.S_IFMT(st.st_mode), st.st_ino, st.st_ctime_ns, st.st_mode)
    return out


def _tick() -> None:
    """Wait for the coarse clock to move, so a change right after gets a ctime of its own."""
    time.sleep(time.clock_getres(_CLOCK_REALTIME_COARSE) + 0.001)


def _restore_tree(ws: Path, copy: Path, recorded: dict[str, tuple[Any, ...]]) -> None:
    """Make ``ws`` match ``copy``, touching only what changed since ``recorded`` was taken."""
    current = _identity(ws)
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


# ------------------------------------------------------------------------------------------------
# the sandbox


class QemuSandbox:
    """A QEMU micro-VM per sandbox; see the module docstring."""

    kind = "qemu"

    def __init__(
        self,
        workspace: Path,
        config: SandboxConfig | None = None,
        *,
        name: str = "",
        image: ImageInfo | None = None,
        state_dir: Path | None = None,
        boot_timeout_s: float = 180.0,
        keep_background: bool = False,
        resettable: bool = False,
    ) -> None:
        self.workspace = Path(workspace).resolve()
        if not self.workspace.is_dir():
            raise SandboxError(f"workspace {self.workspace} is not a directory")
        self.config = config or SandboxConfig()
        self.name = name
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cleanup_stale(self.state_dir)
        if shutil.which(QEMU_BIN) is None or shutil.which("qemu-img") is None:
            raise SandboxUnavailable(
                f"{QEMU_BIN}/qemu-img not found: run `hearth image build` (installs qemu-system-x86 and "
                "qemu-utils) or apt-get install qemu-system-x86 qemu-utils"
            )
        found = image or find_guest_image()
        if found is None or not found.disk.is_file():
            raise SandboxUnavailable("no qemu guest image for the current recipe: run `hearth image build`")
        self.image: ImageInfo = found
        self.accel = detect_accel()
        self.keep_background = keep_background
        """False (default, like bwrap): what a command leaves running is killed when it ends.
        True: background processes live on between commands (and come back with a restore)."""
        self._resettable = resettable
        self._lock = threading.RLock()
        self._dead: str | None = None
        self._destroyed = False
        self._seq = 0
        self._snapshots: dict[str, dict[str, Any]] = {}
        self._baseline: dict[str, Entry] = {}

        label = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:24] or "vm"
        self.run_dir = self.state_dir / f"{label}-{uuid.uuid4().hex[:8]}"
        self.run_dir.mkdir()
        sock_dir = self.run_dir
        if len(str(sock_dir / "qmp.sock")) > 100:  # AF_UNIX path limit
            sock_dir = Path(f"/tmp/hearth-qemu-{self.run_dir.name[-8:]}")
            sock_dir.mkdir(exist_ok=True)
        self._sock_dir = sock_dir
        self.overlay = self.run_dir / "overlay.qcow2"
        self.console_log = self.run_dir / "console.log"
        me = os.getpid()
        self._write_owner({"owner_pid": me, "owner_start": _proc_start(me), "name": name})

        t0 = time.monotonic()
        try:
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.image.disk), "-F", "qcow2",
                 str(self.overlay)],
                check=True, capture_output=True,
            )
            argv = self.qemu_argv()
            with open(self.run_dir / "qemu.err", "wb") as err:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=err)
        except (OSError, subprocess.CalledProcessError) as e:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            if sock_dir != self.run_dir:
                shutil.rmtree(sock_dir, ignore_errors=True)
            raise SandboxUnavailable(f"cannot start qemu: {e}") from e
        self.pid = self.proc.pid
        (self.run_dir / "qemu.pid").write_text(str(self.pid))
        self._write_owner({"owner_pid": me, "owner_start": _proc_start(me), "name": name,
                           "qemu_pid": self.pid, "qemu_start": _proc_start(self.pid),
                           "sock_dir": str(sock_dir)})
        self._finalizer = weakref.finalize(self, _finalize, self.proc, self.run_dir, sock_dir)
        log.info("qemu sandbox %s: accel=%s (%s), pid %d", self.run_dir.name, self.accel,
                 "-M microvm -enable-kvm" if self.accel == "kvm" else "TCG -M pc", self.pid)
        try:
            self._qmp = _QMP(sock_dir / "qmp.sock", self._qemu_alive)
            self._qga = _QGA(sock_dir / "qga.sock", self._qemu_alive)
            self._qga.sync(boot_timeout_s)
            self.boot_to_agent_s = time.monotonic() - t0
            if resettable:  # a clean point (empty /workspace) that reset() goes back to
                self._setup(b"")
                self._save(CLEAN)
            self._initial_sync()
        except (_Dead, TimeoutError, SandboxError, OSError) as e:
            detail = self._diagnostics()
            self._finalizer()  # kills qemu, removes the run dir
            raise SandboxUnavailable(f"qemu sandbox failed to boot: {e}\n{detail}") from e
        self.boot_s = time.monotonic() - t0
        log.info("qemu sandbox %s: agent up in %.2f s, ready in %.2f s (accel=%s)", self.run_dir.name,
                 self.boot_to_agent_s, self.boot_s, self.accel)

    # -- process plumbing -----------------------------------------------------------------------
    def qemu_argv(self) -> list[str]:
        c = self.config
        smp = max(1, math.ceil(c.cpus))
        append = [self.image.cmdline, "root=/dev/vda", f"hearth.pids={c.pids}"]
        extra = os.environ.get("HEARTH_QEMU_APPEND", "")  # extra kernel parameters (experiments)
        if extra:
            append.append(extra)
        if c.cpus < smp:
            append.append(f"hearth.cpu_max={int(c.cpus * 100000)},100000")
        if self.accel == "kvm":
            machine = ["-M", "microvm", "-enable-kvm", "-cpu", "host"]
            bus = "device"
        else:
            machine = ["-M", "pc", "-accel", "tcg", "-cpu", "max"]
            bus = "pci"
        if c.network == "nat":
            append.append("hearth.net=nat")
            net = ["-nic", f"user,model=virtio-net-{bus},restrict=off"]
        else:
            net = ["-nic", "none"]
        s = self._sock_dir
        return [
            QEMU_BIN, "-name", f"hearth-{self.run_dir.name}", *machine,
            "-m", str(c.memory_mib), "-smp", str(smp),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", " ".join(append),
            "-drive", f"file={self.overlay},if=none,id=d0,format=qcow2,cache=unsafe",
            "-device", f"virtio-blk-{bus},drive=d0",
            "-device", f"virtio-serial-{bus}",
            "-chardev", f"socket,path={s / 'qga.sock'},server=on,wait=off,id=qga0",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-qmp", f"unix:{s / 'qmp.sock'},server=on,wait=off",
            "-serial", f"file:{self.console_log}",
            *net,
        ]

    def _write_owner(self, meta: dict[str, Any]) -> None:
        tmp = self.run_dir / "owner.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.run_dir / "owner.json")

    def _qemu_alive(self) -> bool:
        return self.proc.poll() is None

    def _diagnostics(self) -> str:
        parts = []
        for f in (self.run_dir / "qemu.err", self.console_log):
            with contextlib.suppress(OSError):
                text = f.read_text(errors="replace").strip()
                if text:
                    parts.append(f"{f.name}: {text[-1500:]}")
        if self.proc.poll() is not None:
            parts.append(f"qemu exit status {self.proc.returncode}")
        return "\n".join(parts)

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def _crashed(self, what: str, last_output: str = "",
                 cause: BaseException | None = None) -> SandboxCrashed:
        detail = self._diagnostics()
        self._dead = f"{what}: {cause}" if cause else what
        self._kill()
        msg = f"qemu sandbox {self.run_dir.name} died {what}"
        if detail:
            msg += f"\n{detail}"
        return SandboxCrashed(msg, last_output=last_output)

    def _check_usable(self) -> None:
        if self._destroyed:
            raise SandboxError("sandbox was destroyed")
        if self._dead:
            raise SandboxCrashed(f"qemu sandbox is dead ({self._dead})")
        if not self._qemu_alive():
            raise self._crashed("between commands")

    # -- workspace sync -------------------------------------------------------------------------
    def _initial_sync(self) -> None:
        current = scan_workspace(self.workspace)
        self._setup(encode_records(self.workspace, {}, current))
        self._baseline = current
        self._seq = 0

    def _setup(self, records: bytes) -> None:
        if records:
            self._qga.write_file(f"{H}/in.sync", records)
        rc, out, err = self._run_raw([HELPER, "setup", str(MEM_RESERVE_MIB)], 600)
        if rc != 0:
            raise SandboxError(f"guest setup failed ({rc}): {err or out}")

    def _save(self, tag: str) -> None:
        try:
            out = self._qmp.hmp(f"savevm {tag}")
        except _Dead as e:
            raise self._crashed("during savevm", cause=e) from e
        if out.strip():
            raise SandboxError(f"savevm failed: {out.strip()}")

    def _load(self, tag: str) -> None:
        try:
            out = self._qmp.hmp(f"loadvm {tag}")
            if out.strip():
                raise SandboxError(f"loadvm failed: {out.strip()}")
            self._qga.synced = False
            self._qga.sync(60, attempt_s=0.1)
            # the guest clock resumes from the snapshot's time: the next command's helper
            # moves it forward (HOST_TIME_NS), cheaper than guest-set-time (which runs hwclock)
        except _Dead as e:
            raise self._crashed("during loadvm", cause=e) from e
        except TimeoutError as e:
            raise self._crashed("after loadvm (agent silent)", cause=e) from e

    def reset(self, workspace: Path | None = None) -> None:
        """Back to the VM as it was right after boot, over ``workspace`` (default: the same one).

        Needs ``resettable=True``. Lets a pool keep VMs booted and hand them to the next attempt
        in about a second instead of a new boot; the snapshots of the previous use are dropped.
        """
        with self._lock:
            self._check_usable()
            if not self._resettable:
                raise SandboxError("reset() needs a sandbox created with resettable=True")
            for sid, snap in list(self._snapshots.items()):
                with contextlib.suppress(SandboxError, _Dead):
                    self._qmp.hmp(f"delvm {sid}")
                shutil.rmtree(snap["copy"], ignore_errors=True)
            self._snapshots.clear()
            self._load(CLEAN)
            if workspace is not None:
                ws = Path(workspace).resolve()
                if not ws.is_dir():
                    raise SandboxError(f"workspace {ws} is not a directory")
                self.workspace = ws
            try:
                self._initial_sync()
            except _Dead as e:
                raise self._crashed("during reset", cause=e) from e

    def _run_raw(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        """A plain guest-exec with captured output (internal commands)."""
        pid = self._qga.call("guest-exec", path=argv[0], arg=argv[1:], **{"capture-output": True})["pid"]
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            st = self._qga.call("guest-exec-status", pid=pid)
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
                return int(st.get("exitcode", -1)), out, err
            if time.monotonic() > deadline:
                raise TimeoutError(f"guest command {argv!r} did not finish")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    def sync(self) -> None:
        """Make host and guest workspaces agree now (``exec`` already does this around every
        command; call it after background processes in the guest wrote files)."""
        self.exec(":", timeout_s=120)

    # -- the Sandbox protocol -------------------------------------------------------------------
    def exec(
        self,
        command: str,
        *,
        timeout_s: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str = ".",
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        timeout = float(timeout_s if timeout_s is not None else self.config.exec_timeout_s)
        host_cwd = resolve_inside(self.workspace, cwd)
        rel_cwd = host_cwd.relative_to(self.workspace).as_posix()
        guest_cwd = GUEST_WORKSPACE if rel_cwd == "." else f"{GUEST_WORKSPACE}/{rel_cwd}"
        full_env = {"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
                    "USER": "root", "HEARTH_SANDBOX": "qemu"}
        full_env.update(env or {})
        with self._lock:
            self._check_usable()
            t0 = time.monotonic()
            tails: list[_Tail] = []
            try:
                current = scan_workspace(self.workspace)
                records = encode_records(self.workspace, self._baseline, current)
                if records:
                    self._qga.write_file(f"{H}/in.sync", records)
                seq = self._seq
                token = f"HEARTH-{secrets.token_hex(12)}"
                tails = [_Tail(self._qga, f"{H}/o{seq}", "stdout", on_output),
                         _Tail(self._qga, f"{H}/e{seq}", "stderr", on_output)]
                argv = ["run", guest_cwd, command, str(seq), token, str(time.time_ns())]
                if self.keep_background:
                    argv.append("keep")
                pid = self._qga.call(
                    "guest-exec", path=HELPER, arg=argv,
                    env=[f"{k}={v}" for k, v in full_env.items()], **{"capture-output": True},
                )["pid"]
                self._baseline = current
                self._seq = seq + 1
                deadline = t0 + timeout
                timed_out = False
                kill_deadline = 0.0
                delay = 0.002
                last_read = last_push = t0
                push_every = 0.25
                while True:
                    st = self._qga.call("guest-exec-status", pid=pid)
                    if st.get("exited"):
                        break
                    now = time.monotonic()
                    if (on_output is not None and now - last_read > 0.02) or now - last_read > 0.5:
                        for t in tails:
                            t.poll()
                        last_read = now
                    if now - last_push > push_every:
                        # host-side changes made while the command runs reach it within ~0.3 s
                        push_every = max(0.25, 20 * self._push_host_changes())
                        last_push = time.monotonic()
                    if not timed_out and now > deadline:
                        timed_out = True
                        kill_deadline = now + 30
                        self._qga.call("guest-exec", path=HELPER, arg=["kill"])
                    elif timed_out and now > kill_deadline:
                        raise self._crashed(
                            f"unresponsive: the command outlived its timeout ({timeout:.0f} s) and the kill",
                            last_output=tails[0].text() + tails[1].text(),
                        )
                    time.sleep(delay)
                    # a status poll costs ~1 ms (no process in the guest): poll finely at first,
                    # since most commands end within a second
                    delay = min(delay * 1.5, 0.008 if now - t0 < 1 else 0.05 if now - t0 < 5 else 0.1)
                stdout, stderr = self._finish(st, token, seq, tails)
            except _Dead as e:
                last = "".join(t.text() for t in tails)
                raise self._crashed(f"mid-command ({command[:80]!r})", last_output=last, cause=e) from e
            except TimeoutError as e:
                last = "".join(t.text() for t in tails)
                if not self._qemu_alive():
                    raise self._crashed("mid-command", last_output=last, cause=e) from e
                raise self._crashed("unresponsive (guest agent stopped answering)", last_output=last,
                                    cause=e) from e
            code = int(st.get("exitcode", -1))
            return ExecResult(
                exit_code=124 if timed_out else code,
                stdout=stdout,
                stderr=stderr,
                timed_out=timed_out,
                duration_ms=(time.monotonic() - t0) * 1000,
            )

    def _push_host_changes(self) -> float:
        """Send host changes since the baseline into the guest now; returns the scan's seconds."""
        t0 = time.monotonic()
        current = scan_workspace(self.workspace)
        scan_s = time.monotonic() - t0
        records = encode_records(self.workspace, self._baseline, current)
        if records:
            self._qga.write_file(f"{H}/in.sync", records)
            rc, out, err = self._run_raw([HELPER, "apply"], 120)
            if rc != 0:
                raise SandboxError(f"workspace sync into the guest failed ({rc}): {err or out}")
            self._baseline = current
        return scan_s

    def _finish(self, st: dict[str, Any], token: str, seq: int, tails: list[_Tail]) -> tuple[str, str]:
        """Split the helper's captured output into the command's output and the sync data."""
        out = base64.b64decode(st.get("out-data", ""))
        err = base64.b64decode(st.get("err-data", ""))
        at = err.rfind(token.encode())
        if at < 0:
            for t in tails:
                t.close()
            raise SandboxError(
                f"guest exec helper failed (exit {st.get('exitcode')}): "
                f"{err.decode(errors='replace')[-2000:]} {out.decode(errors='replace')[-500:]}"
            )
        olen, elen, slen, clen, alen, sklen, flags, synclen = (int(x) for x in err[at + len(token) :].split())
        if flags & 1:  # output too big to ride along: read the files
            user_out = self._qga.read_file(f"{H}/o{seq}", OUTPUT_CAP)
            user_err = self._qga.read_file(f"{H}/e{seq}", OUTPUT_CAP)
            self._qga.write_file(f"{H}/o{seq}", b"")
            self._qga.write_file(f"{H}/e{seq}", b"")
        else:
            user_out, user_err = out[:olen], err[:elen]
        stdout = tails[0].finish(user_out)
        stderr = tails[1].finish(user_err)
        p = elen
        changed = err[p : p + clen]
        p += clen
        listing = err[p : p + alen]
        p += alen
        skipped = err[p : p + sklen]
        if not changed:
            return stdout, stderr
        inline = out[olen : olen + slen]
        records = self._qga.read_file("/var/lib/hearth/out.sync") if flags & 2 else inline
        if synclen and len(records) != synclen:
            raise SandboxError(f"workspace sync: got {len(records)} of {synclen} bytes")
        guest_paths: set[str] | None = None
        if flags & 8:
            if flags & 4:
                listing = self._qga.read_file(f"{H}/all")
            guest_paths = {os.fsdecode(item[2:]) for item in listing.split(b"\0") if len(item) >= 2}
        apply_guest_changes(self.workspace, records, guest_paths)
        if skipped:
            names = [os.fsdecode(x[2:]) for x in skipped.split(b"\0") if len(x) > 2]
            log.warning("qemu sandbox %s: not synced back (over 256 MiB): %s", self.run_dir.name, names)
        self._baseline = scan_workspace(self.workspace)
        return stdout, stderr

    def read_file(self, path: str) -> str:
        return read_text_in_workspace(self.workspace, path)

    def write_file(self, path: str, content: str) -> None:
        write_text_in_workspace(self.workspace, path, content)

    def snapshot(self) -> str:
        """savevm (RAM, processes, disk) into the overlay + a copy of the host workspace."""
        with self._lock:
            self._check_usable()
            sid = f"hearth{len(self._snapshots) + 1}-{uuid.uuid4().hex[:6]}"
            copy = self.run_dir / "snapshots" / sid
            copy.parent.mkdir(exist_ok=True)
            _copy_tree(self.workspace, copy)
            try:
                self._save(sid)
            except BaseException:
                shutil.rmtree(copy, ignore_errors=True)
                raise
            _tick()
            self._snapshots[sid] = {"seq": self._seq, "baseline": dict(self._baseline), "copy": copy,
                                    "identity": _identity(self.workspace)}
            return sid

    def restore(self, snapshot_id: str) -> None:
        """loadvm, and the host workspace back to its copy (in place: the directory's inode stays)."""
        with self._lock:
            self._check_usable()
            snap = self._snapshots.get(snapshot_id)
            if snap is None:
                raise SandboxError(f"unknown snapshot {snapshot_id!r}")
            self._load(snapshot_id)
            _restore_tree(self.workspace, snap["copy"], snap["identity"])
            _tick()
            snap["identity"] = _identity(self.workspace)
            self._baseline = dict(snap["baseline"])
            self._seq = snap["seq"]

    def destroy(self) -> None:
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
            if self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self._qmp.cmd("quit", timeout=5)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._kill()
            for ch in (getattr(self, "_qmp", None), getattr(self, "_qga", None)):
                if ch is not None:
                    ch.ch.close()
            self._finalizer()

    def __enter__(self) -> QemuSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def _finalize(proc: subprocess.Popen[bytes], run_dir: Path, sock_dir: Path) -> None:
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    shutil.rmtree(run_dir, ignore_errors=True)
    if sock_dir != run_dir:
        shutil.rmtree(sock_dir, ignore_errors=True)
