"""The QEMU process: which accelerator, its command line, its run directory, and cleaning up after
owners that died.

Every sandbox writes ``owner.json`` (owner PID and create time, QEMU PID and create time) into its
run directory; ``cleanup_stale`` (run at every construction) kills the QEMU of a run directory whose
owner is gone and deletes the directory. PIDs are checked with their create time
(``agent.processes``), so a recycled PID is never killed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import platformdirs

from agent import processes
from agent.sandbox.base import SandboxConfig, SandboxUnavailable
from agent.sandbox.image import ImageInfo

log = logging.getLogger("hearth.sandbox.qemu")

QEMU_BIN = "qemu-system-x86_64"


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


def qemu_argv(config: SandboxConfig, accel: str, image: ImageInfo, run_dir: Path, sock_dir: Path) -> list[str]:
    """The QEMU command line: disk overlay, guest agent and QMP sockets, console log, network."""
    c = config
    smp = max(1, math.ceil(c.cpus))
    append = [image.cmdline, "root=/dev/vda", f"hearth.pids={c.pids}"]
    extra = os.environ.get("HEARTH_QEMU_APPEND", "")  # extra kernel parameters (experiments)
    if extra:
        append.append(extra)
    if c.cpus < smp:
        append.append(f"hearth.cpu_max={int(c.cpus * 100000)},100000")
    if accel == "kvm":
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
    s = sock_dir
    return [
        QEMU_BIN, "-name", f"hearth-{run_dir.name}", *machine,
        "-m", str(c.memory_mib), "-smp", str(smp),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", " ".join(append),
        "-drive", f"file={run_dir / 'overlay.qcow2'},if=none,id=d0,format=qcow2,cache=unsafe",
        "-device", f"virtio-blk-{bus},drive=d0",
        "-device", f"virtio-serial-{bus}",
        "-chardev", f"socket,path={s / 'qga.sock'},server=on,wait=off,id=qga0",
        "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        "-qmp", f"unix:{s / 'qmp.sock'},server=on,wait=off",
        "-serial", f"file:{run_dir / 'console.log'}",
        *net,
    ]


def write_owner(run_dir: Path, name: str, qemu_pid: int | None = None, sock_dir: Path | None = None) -> None:
    """Record who owns ``run_dir`` (and its QEMU), atomically, for ``cleanup_stale``."""
    me = os.getpid()
    meta: dict[str, object] = {"owner_pid": me, "owner_created": processes.created_at(me), "name": name}
    if qemu_pid is not None:
        meta.update(qemu_pid=qemu_pid, qemu_created=processes.created_at(qemu_pid), sock_dir=str(sock_dir))
    tmp = run_dir / "owner.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, run_dir / "owner.json")


def new_run_dir(state_dir: Path, name: str) -> tuple[Path, Path]:
    """A fresh run directory for sandbox ``name``, and where its sockets go: in it, or under /tmp when
    that path would pass AF_UNIX's length limit."""
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:24] or "vm"
    run_dir = state_dir / f"{label}-{uuid.uuid4().hex[:8]}"
    run_dir.mkdir()
    sock_dir = run_dir
    if len(str(sock_dir / "qmp.sock")) > 100:  # AF_UNIX path limit
        sock_dir = Path(f"/tmp/hearth-qemu-{run_dir.name[-8:]}")
        sock_dir.mkdir(exist_ok=True)
    write_owner(run_dir, name)
    return run_dir, sock_dir


def start_qemu(argv: list[str], image: ImageInfo, run_dir: Path, sock_dir: Path, name: str) -> subprocess.Popen[bytes]:
    """The run's disk overlay over ``image``, and QEMU started (stderr in qemu.err, its PID recorded).
    When it cannot start, the run's directories go and ``SandboxUnavailable`` says why."""
    try:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk), "-F", "qcow2",
                        str(run_dir / "overlay.qcow2")], check=True, capture_output=True)
        with open(run_dir / "qemu.err", "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    except (OSError, subprocess.CalledProcessError) as e:
        shutil.rmtree(run_dir, ignore_errors=True)
        if sock_dir != run_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)
        raise SandboxUnavailable(f"cannot start qemu: {e}") from e
    (run_dir / "qemu.pid").write_text(str(proc.pid))
    write_owner(run_dir, name, proc.pid, sock_dir)
    return proc


def _kill_leftover_qemu(pid: int, created: float | None) -> bool:
    """SIGKILL ``pid`` if it is still that QEMU; wait until it is gone."""
    argv = processes.command_line(pid) if processes.alive(pid, created) else None
    if not argv or QEMU_BIN not in " ".join(argv):
        return False
    return processes.stop(pid, created, term_s=0, kill_s=10)


def cleanup_stale(state_dir: Path | None = None) -> list[str]:
    """Kill QEMUs and delete run dirs (overlays, snapshots) left by sandboxes whose owner died.

    A run dir whose owning process is gone is stale. Returns the names removed.
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
        if processes.alive(int(meta.get("owner_pid", 0)), meta.get("owner_created")):
            continue
        qpid = meta.get("qemu_pid")
        if qpid and _kill_leftover_qemu(int(qpid), meta.get("qemu_created")):
            log.info("cleanup_stale: killed leftover qemu pid %s (%s)", qpid, d.name)
        sock_dir = str(meta.get("sock_dir", ""))
        if sock_dir.startswith("/tmp/hearth-qemu-"):
            shutil.rmtree(sock_dir, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d.name)
    return removed


def kill_qemu(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL our QEMU child and reap it."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def diagnostics(proc: subprocess.Popen[bytes], run_dir: Path) -> str:
    """The tails of QEMU's stderr and the guest console, and QEMU's exit status: what a boot or
    crash error shows."""
    parts = []
    for f in (run_dir / "qemu.err", run_dir / "console.log"):
        with contextlib.suppress(OSError):
            text = f.read_text(errors="replace").strip()
            if text:
                parts.append(f"{f.name}: {text[-1500:]}")
    if proc.poll() is not None:
        parts.append(f"qemu exit status {proc.returncode}")
    return "\n".join(parts)


def finalize(proc: subprocess.Popen[bytes], run_dir: Path, sock_dir: Path) -> None:
    """Kill QEMU and remove its run (and socket) directory: destroy(), a failed boot, or GC."""
    kill_qemu(proc)
    shutil.rmtree(run_dir, ignore_errors=True)
    if sock_dir != run_dir:
        shutil.rmtree(sock_dir, ignore_errors=True)
