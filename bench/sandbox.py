"""Sandbox backend costs: start-up, one trivial command, snapshot and restore.

    python bench/sandbox.py [--execs 30] [--snapshots 10] [--files 200]

Prints progress to stderr and ONE JSON object as the last line of stdout, keyed by backend::

    {"plain_subprocess_exec_ms_p50": 2.1,
     "bwrap": {"boot_s": …, "exec_ms_p50": …, "snapshot_ms_p50": …, "restore_ms_p50": …,
               "rollback_ok": true, "kvm": false, "enforcement": {…}}}

A backend that cannot run here reports {"unavailable": "<why>"}. To add one, add an entry to
BACKENDS: a factory ``(workspace, config) -> Sandbox`` and whether it uses KVM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.sandbox.base import Sandbox, SandboxConfig, SandboxError

Factory = Callable[[Path, SandboxConfig], Sandbox]
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "b@b"}
COMMAND = "true"


def _bwrap(workspace: Path, config: SandboxConfig) -> Sandbox:
    from agent.sandbox.bwrap import BwrapSandbox

    return BwrapSandbox(workspace, config, name="bench")


def _qemu(workspace: Path, config: SandboxConfig) -> Sandbox:
    """A QEMU micro-VM (agent/sandbox/qemu.py); needs the guest image (`hearth image build`)."""
    from agent.sandbox.qemu import QemuSandbox

    return QemuSandbox(workspace, config, name="bench")


def _qemu_uses_kvm() -> bool:
    from agent.sandbox.qemu import detect_accel

    return detect_accel() == "kvm"  # real kvm_intel/kvm_amd only; TCG otherwise


BACKENDS: dict[str, tuple[Factory, bool]] = {"bwrap": (_bwrap, False), "qemu": (_qemu, _qemu_uses_kvm())}
"""name → (factory, uses KVM)."""


def _docker(workspace: Path, config: SandboxConfig) -> Sandbox:
    """A container per sandbox on the Hearth-managed dockerd (started here if none runs, stopped at exit)."""
    import atexit

    from agent.sandbox.docker import DockerSandbox
    from agent.sandbox.docker_base_image import ensure_base_image
    from agent.sandbox.docker_engine import start_dockerd

    daemon = start_dockerd()
    atexit.register(daemon.stop)
    client = daemon.client()
    ensure_base_image(client)
    return DockerSandbox(workspace, config, name="bench", client=client)


BACKENDS["docker"] = (_docker, False)


def p50(samples: list[float]) -> float:
    return round(statistics.median(samples), 2)


def timed_ms(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def make_workspace(root: Path, files: int) -> Path:
    """A small git repository with ``files`` files spread over a few directories."""
    ws = root / "ws"
    for i in range(files):
        path = ws / f"pkg{i % 10}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"VALUE = {i}\n" * 20)
    env = {**os.environ, **GIT_ENV}
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *cmd], cwd=ws, check=True, env=env)
    return ws


def plain_exec_ms(execs: int) -> float:
    """The same command with no sandbox, same shell and a clean environment."""
    shell = ["bash", "-lc"] if shutil.which("bash") else ["sh", "-c"]
    env = {"PATH": "/usr/bin:/bin", "HOME": tempfile.gettempdir(), "LANG": "C.UTF-8"}
    run = lambda: subprocess.run([*shell, COMMAND], env=env, check=True)  # noqa: E731
    run()
    return p50([timed_ms(run) for _ in range(execs)])


def bench_backend(
    factory: Factory, kvm: bool, root: Path, execs: int, snapshots: int, files: int
) -> dict[str, Any]:
    ws = make_workspace(root, files)
    started = time.perf_counter()
    try:
        sandbox = factory(ws, SandboxConfig())
        first = sandbox.exec(COMMAND)  # boot = ready to run commands, first one included
    except SandboxError as exc:
        return {"unavailable": str(exc)}
    boot_s = time.perf_counter() - started
    try:
        assert first.ok, first.tail()
        exec_ms = [timed_ms(lambda: sandbox.exec(COMMAND)) for _ in range(execs)]
        rounds = [_rollback_round(sandbox, ws) for _ in range(snapshots)]  # the first copies it all
        result = {"boot_s": round(boot_s, 3), "exec_ms_p50": p50(exec_ms),
                  "exec_ms_p90": round(sorted(exec_ms)[int(0.9 * len(exec_ms))], 2),
                  "snapshot_first_ms": round(rounds[0][0], 2), "snapshot_ms_p50": p50([r[0] for r in rounds]),
                  "restore_ms_p50": p50([r[1] for r in rounds]),
                  "rollback_ok": all(r[2] for r in rounds), "kvm": kvm}
        enforcement = getattr(sandbox, "enforcement", None)
        if enforcement is not None:
            result["enforcement"] = enforcement
        return result
    finally:
        sandbox.destroy()


def _rollback_round(sandbox: Sandbox, ws: Path) -> tuple[float, float, bool]:
    """Snapshot, damage the workspace (modify, add, delete, commit), restore, check: (ms, ms, ok)."""
    started = time.perf_counter()
    snapshot_id = sandbox.snapshot()
    snapshot_ms = (time.perf_counter() - started) * 1000
    sandbox.write_file("pkg0/mod0.py", "broken\n")
    sandbox.write_file("scratch.txt", "new\n")
    (ws / "pkg1" / "mod1.py").unlink()
    sandbox.exec("git add -A && git commit -qm scratch", env=GIT_ENV)
    restore_ms = timed_ms(lambda: sandbox.restore(snapshot_id))
    status = sandbox.exec("git status --porcelain && git log --oneline | wc -l")
    ok = (status.ok and status.stdout.strip() == "1" and sandbox.read_file("pkg0/mod0.py").startswith("VALUE")
          and not (ws / "scratch.txt").exists() and (ws / "pkg1" / "mod1.py").exists())
    return snapshot_ms, restore_ms, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execs", type=int, default=30)
    parser.add_argument("--snapshots", type=int, default=10)
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    report: dict[str, Any] = {"plain_subprocess_exec_ms_p50": plain_exec_ms(args.execs)}
    for name, (factory, kvm) in BACKENDS.items():
        print(f"benchmarking {name}…", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix=f"hearth-bench-{name}-") as root:
            report[name] = bench_backend(factory, kvm, Path(root), args.execs, args.snapshots, args.files)
        print(f"  {name}: {report[name]}", file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
