"""``QemuSandbox``: the Sandbox protocol on one QEMU VM (the package docstring tells how it works).

Boot, snapshots (``savevm``/``loadvm``), ``reset`` for the contract pool, and ``exec``: sync the
host's changes in, run the command through the exec helper, stream its output, sync the guest's
changes back.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import subprocess
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

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
from agent.sandbox.files import read_inside, write_inside
from agent.sandbox.image import ImageInfo, find_guest_image
from agent.sandbox.qemu.guest_agent import QMP, AgentDead, GuestAgent, OutputTail
from agent.sandbox.qemu.helper import HELPER, H, collect
from agent.sandbox.qemu.machine import (
    QEMU_BIN,
    cleanup_stale,
    default_state_dir,
    detect_accel,
    diagnostics,
    finalize,
    kill_qemu,
    new_run_dir,
    qemu_argv,
    start_qemu,
)
from agent.sandbox.qemu.sync import Entry, copy_tree, encode_records, identity, restore_tree, scan_workspace, tick

log = logging.getLogger("hearth.sandbox.qemu")

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MEM_RESERVE_MIB = 96  # guest kernel + agent headroom kept out of the task cgroup
CLEAN = "hearth-clean"


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

        self.run_dir, sock_dir = new_run_dir(self.state_dir, name)
        self._sock_dir = sock_dir
        self.overlay = self.run_dir / "overlay.qcow2"
        self.console_log = self.run_dir / "console.log"

        t0 = time.monotonic()
        self.proc = start_qemu(self.qemu_argv(), self.image, self.run_dir, sock_dir, name)
        self.pid = self.proc.pid
        self._finalizer = weakref.finalize(self, finalize, self.proc, self.run_dir, sock_dir)
        log.info("qemu sandbox %s: accel=%s (%s), pid %d", self.run_dir.name, self.accel,
                 "-M microvm -enable-kvm" if self.accel == "kvm" else "TCG -M pc", self.pid)
        try:
            self._qmp = QMP(sock_dir / "qmp.sock", self._qemu_alive)
            self._qga = GuestAgent(sock_dir / "qga.sock", self._qemu_alive)
            self._qga.sync(boot_timeout_s)
            self.boot_to_agent_s = time.monotonic() - t0
            if resettable:  # a clean point (empty /workspace) that reset() goes back to
                self._setup(b"")
                self._save(CLEAN)
            self._initial_sync()
        except (AgentDead, TimeoutError, SandboxError, OSError) as e:
            detail = diagnostics(self.proc, self.run_dir)
            self._finalizer()  # kills qemu, removes the run dir
            raise SandboxUnavailable(f"qemu sandbox failed to boot: {e}\n{detail}") from e
        self.boot_s = time.monotonic() - t0
        log.info("qemu sandbox %s: agent up in %.2f s, ready in %.2f s (accel=%s)", self.run_dir.name,
                 self.boot_to_agent_s, self.boot_s, self.accel)

    # -- process plumbing -----------------------------------------------------------------------
    def qemu_argv(self) -> list[str]:
        return qemu_argv(self.config, self.accel, self.image, self.run_dir, self._sock_dir)

    def _qemu_alive(self) -> bool:
        return self.proc.poll() is None

    def _crashed(self, what: str, last_output: str = "",
                 cause: BaseException | None = None) -> SandboxCrashed:
        detail = diagnostics(self.proc, self.run_dir)
        self._dead = f"{what}: {cause}" if cause else what
        kill_qemu(self.proc)
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
        rc, out, err = self._qga.run([HELPER, "setup", str(MEM_RESERVE_MIB)], 600)
        if rc != 0:
            raise SandboxError(f"guest setup failed ({rc}): {err or out}")

    def _save(self, tag: str) -> None:
        try:
            out = self._qmp.hmp(f"savevm {tag}")
        except AgentDead as e:
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
        except AgentDead as e:
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
                with contextlib.suppress(SandboxError, AgentDead):
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
            except AgentDead as e:
                raise self._crashed("during reset", cause=e) from e

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
            tails: list[OutputTail] = []
            try:
                current = scan_workspace(self.workspace)
                records = encode_records(self.workspace, self._baseline, current)
                if records:
                    self._qga.write_file(f"{H}/in.sync", records)
                seq = self._seq
                token = f"HEARTH-{secrets.token_hex(12)}"
                tails = [OutputTail(self._qga, f"{H}/o{seq}", "stdout", on_output),
                         OutputTail(self._qga, f"{H}/e{seq}", "stderr", on_output)]
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
                stdout, stderr, changed = collect(self._qga, st, token, seq, tails, self.workspace,
                                                  self.run_dir.name)
                if changed:
                    self._baseline = scan_workspace(self.workspace)
            except AgentDead as e:
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
            rc, out, err = self._qga.run([HELPER, "apply"], 120)
            if rc != 0:
                raise SandboxError(f"workspace sync into the guest failed ({rc}): {err or out}")
            self._baseline = current
        return scan_s

    def read_file(self, path: str) -> str:
        return read_inside(self.workspace, path)

    def write_file(self, path: str, content: str) -> None:
        write_inside(self.workspace, path, content)

    def snapshot(self) -> str:
        """savevm (RAM, processes, disk) into the overlay + a copy of the host workspace."""
        with self._lock:
            self._check_usable()
            sid = f"hearth{len(self._snapshots) + 1}-{uuid.uuid4().hex[:6]}"
            copy = self.run_dir / "snapshots" / sid
            copy.parent.mkdir(exist_ok=True)
            copy_tree(self.workspace, copy)
            try:
                self._save(sid)
            except BaseException:
                shutil.rmtree(copy, ignore_errors=True)
                raise
            tick()
            self._snapshots[sid] = {"seq": self._seq, "baseline": dict(self._baseline), "copy": copy,
                                    "identity": identity(self.workspace)}
            return sid

    def restore(self, snapshot_id: str) -> None:
        """loadvm, and the host workspace back to its copy (in place: the directory's inode stays)."""
        with self._lock:
            self._check_usable()
            snap = self._snapshots.get(snapshot_id)
            if snap is None:
                raise SandboxError(f"unknown snapshot {snapshot_id!r}")
            self._load(snapshot_id)
            restore_tree(self.workspace, snap["copy"], snap["identity"])
            tick()
            snap["identity"] = identity(self.workspace)
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
                    kill_qemu(self.proc)
            for ch in (getattr(self, "_qmp", None), getattr(self, "_qga", None)):
                if ch is not None:
                    ch.ch.close()
            self._finalizer()

    def __enter__(self) -> QemuSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
