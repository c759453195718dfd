"""The qemu micro-VM backend: real QEMU (TCG here, KVM where kvm_intel/kvm_amd is loaded).

The guest image is built once per session (cached under the user data dir: a cold build is
apt + debootstrap, a couple of minutes; afterwards it is a lookup). Boots are the expensive part
(~6-10 s under TCG), so the module boots few VMs: one long-lived VM for the backend-specific
tests, and for the shared contract a small pool keyed by config whose VMs are handed from one
check to the next with ``reset(workspace)`` (loadvm of the clean post-boot state, ~1 s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_contract import CONTRACT, SandboxFactory, ok, wait_until

from agent.sandbox import SandboxConfig, SandboxCrashed, SandboxError, SandboxEscape, SandboxUnavailable
from agent.sandbox.base import Sandbox
from agent.sandbox.image import ImageBuildError, ImageInfo, build_guest_image
from agent.sandbox.qemu import (
    QEMU_BIN,
    QemuSandbox,
    apply_guest_changes,
    cleanup_stale,
    detect_accel,
)

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="session")
def guest_image() -> ImageInfo:
    try:
        return build_guest_image()
    except ImageBuildError as exc:  # no root / no apt on this host
        pytest.skip(f"cannot build the qemu guest image here: {exc}")


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vms")


@pytest.fixture(scope="module")
def vm(
    guest_image: ImageInfo, state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QemuSandbox]:
    ws = tmp_path_factory.mktemp("vm") / "ws"
    ws.mkdir()
    (ws / "hello.txt").write_text("hello from the host\n")
    sb = QemuSandbox(ws, SandboxConfig(exec_timeout_s=60), name="test-vm", image=guest_image,
                     state_dir=state_dir, keep_background=True)
    yield sb
    sb.destroy()


# -- the shared contract, through a pool of reset-able VMs -----------------------------------------


class _Pooled:
    """What a contract check gets: a pooled VM whose destroy() hands it back instead."""

    def __init__(self, sb: QemuSandbox, idle: list[QemuSandbox]) -> None:
        self._sb = sb
        self._idle = idle
        self.kind = sb.kind

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sb, name)

    def destroy(self) -> None:
        if self._sb._dead or self._sb._destroyed:
            self._sb.destroy()
        else:
            self._idle.append(self._sb)


@pytest.fixture(scope="module")
def pool(guest_image: ImageInfo, state_dir: Path) -> Iterator[SandboxFactory]:
    idle: dict[str, list[QemuSandbox]] = {}
    made: list[QemuSandbox] = []

    def make(workspace: Path, config: SandboxConfig) -> Sandbox:
        key = config.model_dump_json()
        free = idle.setdefault(key, [])
        if free:
            sb = free.pop()
            sb.reset(workspace)
        else:
            sb = QemuSandbox(workspace, config, name="contract", image=guest_image, state_dir=state_dir,
                             resettable=True)
            made.append(sb)
        return _Pooled(sb, free)

    yield make
    for sb in made:
        sb.destroy()


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__.removeprefix("check_"))
def test_contract(
    check: Callable[[SandboxFactory, Path], None], pool: SandboxFactory, tmp_path: Path
) -> None:
    check(pool, tmp_path)


# -- the VM itself -----------------------------------------------------------------------------------


def test_accel_and_boot(vm: QemuSandbox) -> None:
    assert vm.kind == "qemu"
    assert vm.accel == detect_accel()
    real_kvm = Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists()
    assert vm.accel == ("kvm" if real_kvm else "tcg")
    argv = vm.qemu_argv()
    assert ("microvm" in argv) == (vm.accel == "kvm")
    assert argv[argv.index("-nic") + 1] == "none"
    assert argv[argv.index("-m") + 1] == "1024"
    assert vm.boot_s < 60
    assert ok(vm.exec("uname -r")).stdout.strip() == vm.image.kernel_abi


def test_exec_exit_codes_streams_env_cwd(vm: QemuSandbox) -> None:
    r = vm.exec("echo out; echo err >&2; exit 5")
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out) == (5, "out\n", "err\n", False)
    assert ok(vm.exec("cat hello.txt")).stdout == "hello from the host\n"
    assert ok(vm.exec('echo "$A-$B"', env={"A": "1", "B": "two words"})).stdout == "1-two words\n"
    vm.write_file("d1/d2/x.txt", "x")
    assert ok(vm.exec("pwd; ls", cwd="d1/d2")).stdout == "/workspace/d1/d2\nx.txt\n"
    assert vm.exec("kill -9 $$").exit_code == 128 + 9
    with pytest.raises(SandboxEscape):
        vm.exec("true", cwd="../..")


def test_timeout_kills_only_the_command(vm: QemuSandbox) -> None:
    started = time.monotonic()
    r = vm.exec("echo before; sleep 300; echo after", timeout_s=1.5)
    assert r.timed_out and r.exit_code == 124 and r.stdout == "before\n"
    assert time.monotonic() - started < 15
    assert ok(vm.exec("echo still here")).stdout == "still here\n"
    survivors = vm.exec("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -c 'sleep [3]00'")
    assert survivors.stdout.strip() == "0"


def test_output_streams_while_running(vm: QemuSandbox) -> None:
    seen: list[tuple[float, str, str]] = []
    started = time.monotonic()
    r = vm.exec("echo one; sleep 1.5; echo two >&2; sleep 1; echo three",
                on_output=lambda s, t: seen.append((time.monotonic() - started, s, t)))
    assert ok(r).stdout == "one\nthree\n" and r.stderr == "two\n"
    first = next(t for t, _s, text in seen if "one" in text)
    assert first < r.duration_ms / 1000 - 1.0, seen  # "one" arrived well before the end
    assert "".join(t for _, s, t in seen if s == "stdout") == "one\nthree\n"


def test_workspace_sync_both_ways(vm: QemuSandbox) -> None:
    ws = vm.workspace
    (ws / "from_host.txt").write_text("h\n")
    (ws / "gone").mkdir()
    (ws / "gone" / "f").write_text("f")
    ok(vm.exec("cat from_host.txt && ls gone"))
    shutil.rmtree(ws / "gone")
    os.chmod(ws / "from_host.txt", 0o600)
    r = ok(vm.exec("test ! -e gone && stat -c %a from_host.txt; mkdir -p empty/dir; echo g > g.txt; "
                   "chmod +x g.txt; ln -sf g.txt link; rm from_host.txt; printf '\\x00\\xff' > bin"))
    assert r.stdout == "600\n"
    assert (ws / "g.txt").read_text() == "g\n" and os.access(ws / "g.txt", os.X_OK)
    assert (ws / "empty" / "dir").is_dir()
    assert os.readlink(ws / "link") == "g.txt"
    assert not (ws / "from_host.txt").exists()
    assert (ws / "bin").read_bytes() == b"\x00\xff"
    # touch -d / tar -x style changes keep old mtimes; ctime still gives them away
    ok(vm.exec("echo same-size > g.txt && touch -d @1000000000 g.txt"))
    assert (ws / "g.txt").read_text() == "same-size\n"
    # the guest writes a symlink out of the workspace: it arrives as a symlink, never followed
    ok(vm.exec("ln -s /etc/passwd pw"))
    assert os.readlink(ws / "pw") == "/etc/passwd"
    with pytest.raises(SandboxEscape):
        vm.read_file("pw")
    vm.write_file("pw2", "data")
    assert ok(vm.exec("cat pw2")).stdout == "data"


def test_guest_cannot_make_the_host_write_through_symlinks(tmp_path: Path) -> None:
    """Sync records come from an untrusted guest: '..', absolute paths and host symlinks in the
    way must not lead a write out of the workspace."""
    ws = tmp_path / "ws"
    ws.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws / "evil").symlink_to(outside)

    def rec(kind: str, path: str, data: bytes) -> bytes:
        p = path.encode()
        return struct.pack("<BIqI", ord(kind), 0o644, 0, len(p)) + p + struct.pack("<Q", len(data)) + data

    records = b"".join([rec("f", "../x", b"1"), rec("f", "/tmp/x", b"1"), rec("f", "evil/x", b"1"),
                        rec("l", "ok", b"/")])
    apply_guest_changes(ws, records, None)
    assert not (tmp_path / "x").exists() and not list(outside.iterdir())
    assert (ws / "evil").is_dir() and not (ws / "evil").is_symlink()
    assert (ws / "evil" / "x").read_text() == "1"
    assert os.readlink(ws / "ok") == "/"


def test_host_changes_reach_a_running_command(vm: QemuSandbox) -> None:
    results = []
    t = threading.Thread(target=lambda: results.append(
        vm.exec("while [ ! -e go ]; do sleep 0.05; done; cat go", timeout_s=30)))
    t.start()
    time.sleep(0.5)
    (vm.workspace / "go").write_text("went\n")
    t.join(40)
    assert results and ok(results[0]).stdout == "went\n"


def test_snapshot_restore_files_and_processes(vm: QemuSandbox) -> None:
    ws = vm.workspace
    vm.write_file("state.txt", "before\n")
    pid = ok(vm.exec("sleep 1000 >/dev/null 2>&1 & echo $!")).stdout.strip()
    snap = vm.snapshot()
    ok(vm.exec(f"echo after > state.txt; echo new > new.txt; kill {pid}"))
    vm.write_file("host_new.txt", "x")
    assert vm.exec(f"kill -0 {pid}").exit_code != 0
    vm.restore(snap)
    assert vm.read_file("state.txt") == "before\n"
    assert not (ws / "new.txt").exists() and not (ws / "host_new.txt").exists()
    r = ok(vm.exec(f"cat state.txt; ls; kill -0 {pid} && echo running"))
    assert r.stdout.startswith("before\n") and "new.txt" not in r.stdout and r.stdout.endswith("running\n")
    vm.exec(f"kill {pid}")


def test_limits_inside_the_guest(vm: QemuSandbox) -> None:
    r = ok(vm.exec("cat /sys/fs/cgroup/hearth/pids.max /sys/fs/cgroup/hearth/memory.max /proc/self/cgroup"))
    pids, mem, cg = r.stdout.split("\n")[:3]
    assert int(pids) == vm.config.pids
    assert 0 < int(mem) < vm.config.memory_mib * 2**20
    assert cg.endswith("/hearth")
    assert vm.exec("echo x > /etc/probe").exit_code != 0  # the guest root is read-only to tasks


def test_crash_mid_command_raises_promptly(guest_image: ImageInfo, state_dir: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    sb = QemuSandbox(ws, SandboxConfig(), name="crash", image=guest_image, state_dir=state_dir)
    try:
        started = threading.Event()

        def on_output(_stream: str, text: str) -> None:
            if "started" in text:
                started.set()

        def killer() -> None:
            if started.wait(60):
                os.kill(sb.pid, signal.SIGKILL)

        threading.Thread(target=killer, daemon=True).start()
        t0 = time.monotonic()
        with pytest.raises(SandboxCrashed) as info:
            sb.exec("echo started; sleep 120", on_output=on_output)
        assert started.is_set() and time.monotonic() - t0 < 30
        assert "started" in info.value.last_output
        with pytest.raises(SandboxCrashed):
            sb.exec("true")
    finally:
        sb.destroy()
    assert not sb.run_dir.exists()


def test_cleanup_stale_kills_leftover_qemu_and_overlay(state_dir: Path, tmp_path: Path) -> None:
    stale_dir = tmp_path / "vms"
    run = stale_dir / "dead-owner-0001"
    run.mkdir(parents=True)
    (run / "overlay.qcow2").write_bytes(b"QFI\xfb")
    proc = subprocess.Popen([QEMU_BIN, "-M", "none", "-display", "none", "-nodefaults", "-S"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        start = int(Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        (run / "owner.json").write_text(json.dumps({"owner_pid": dead.pid, "owner_start": 1,
                                                    "qemu_pid": proc.pid, "qemu_start": start}))
        live = stale_dir / "live-owner-0002"
        live.mkdir()
        me = os.getpid()
        (live / "owner.json").write_text(json.dumps({"owner_pid": me, "owner_start": None}))
        removed = cleanup_stale(stale_dir)
        assert removed == ["dead-owner-0001"]
        wait_until(lambda: proc.poll() is not None, 10, "the leftover qemu to die")
        assert not run.exists() and live.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_missing_image_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_IMAGES_DIR", str(tmp_path / "no-images"))
    ws = tmp_path / "ws"
    ws.mkdir()
    with pytest.raises(SandboxUnavailable, match="hearth image build"):
        QemuSandbox(ws, SandboxConfig(), state_dir=tmp_path / "vms")


def test_cached_image_is_not_rebuilt(guest_image: ImageInfo) -> None:
    t0 = time.monotonic()
    again = build_guest_image()
    assert again.root == guest_image.root and not again.built
    assert time.monotonic() - t0 < 30  # an apt-cache lookup of the kernel version, no build


def test_destroy_is_idempotent_and_cleans_up(guest_image: ImageInfo, state_dir: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    sb = QemuSandbox(ws, SandboxConfig(memory_mib=256, cpus=0.5), name="d", image=guest_image,
                     state_dir=state_dir)
    assert "hearth.cpu_max=50000,100000" in " ".join(sb.qemu_argv())
    assert ok(sb.exec("cat /sys/fs/cgroup/hearth/cpu.max")).stdout == "50000 100000\n"
    sb.snapshot()
    pid = sb.pid
    sb.destroy()
    sb.destroy()
    assert sb.proc.poll() is not None and not Path(f"/proc/{pid}/cmdline").exists()
    assert not sb.run_dir.exists()
    with pytest.raises(SandboxError):
        sb.exec("true")
