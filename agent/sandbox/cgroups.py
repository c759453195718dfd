"""One cgroup per sandbox that every command joins: the pids, memory and CPU limits of a
``SandboxConfig``, through cgroup v2 where its controllers can be delegated and cgroup v1 otherwise
(hybrid hosts mount both). ``CGROUP_PARENT_ENV`` names a delegated v2 directory on pure-v2 hosts.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from agent import processes
from agent.sandbox.base import SandboxConfig

CGROUP_PARENT_ENV = "HEARTH_CGROUP_PARENT"
"""A delegated cgroup v2 directory to create sandbox cgroups in (pure-v2 hosts, where the
process's own cgroup holds processes and so cannot hand controllers to children)."""
CGROUP_ROOT = Path("/sys/fs/cgroup")


class SandboxCgroup:
    """One cgroup per sandbox, in v2 and/or v1 hierarchies (hybrid hosts mount both)."""

    def __init__(self, dirs: dict[str, Path], enforced: dict[str, str]) -> None:
        self.dirs = dirs
        """"v2" → the unified cgroup; "pids"/"memory"/"cpu" → a v1 cgroup of that controller."""
        self.enforced = enforced

    @classmethod
    def create(cls, label: str, config: SandboxConfig) -> SandboxCgroup | None:
        v2_base, v1_bases = _own_cgroups()
        if delegated := os.environ.get(CGROUP_PARENT_ENV):
            v2_base = Path(delegated)
        dirs: dict[str, Path] = {}
        enforced: dict[str, str] = {}
        for base in [v2_base, *v1_bases.values()]:
            if base is not None:
                _remove_stale(base)
        if v2_base is not None and _mkdir(v2_base / label):
            dirs["v2"] = v2_base / label
            offered = _read(v2_base / "cgroup.controllers").split()
            for controller in ("pids", "memory", "cpu"):
                if controller in offered and controller not in v1_bases:
                    _write(v2_base / "cgroup.subtree_control", f"+{controller}")
                    if _set_limits(v2_base / label, controller, config, v2=True):
                        enforced[controller] = "cgroup-v2"
        for controller, base in v1_bases.items():
            if controller not in enforced and _mkdir(base / label):
                dirs[controller] = base / label
                if _set_limits(base / label, controller, config, v2=False):
                    enforced[controller] = "cgroup-v1"
        return cls(dirs, enforced) if dirs else None

    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs.values()]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for f in self.procs_files():
            found.update(int(p) for p in _read(f).split())
        return found

    def oom_kills(self) -> int:
        """Processes the kernel OOM-killed in this cgroup so far."""
        events = (self.dirs["memory"] / "memory.oom_control" if "memory" in self.dirs
                  else self.dirs["v2"] / "memory.events" if "v2" in self.dirs else None)
        for line in _read(events).splitlines() if events else []:
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def kill(self) -> None:
        if "v2" in self.dirs and (self.dirs["v2"] / "cgroup.kill").exists():
            _write(self.dirs["v2"] / "cgroup.kill", "1")
        processes.kill_all(lambda: sorted(self.pids()), timeout_s=5)

    def remove(self) -> None:
        self.kill()
        for d in self.dirs.values():
            processes.wait_until(lambda: _rmdir(d), 1.0, 0.02)  # noqa: B023  refused until the last task is reaped


_V1_FILES = {"pids": ("pids.max",), "memory": ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"),
             "cpu": ("cpu.cfs_period_us", "cpu.cfs_quota_us")}
_V2_FILES = {"pids": ("pids.max",), "memory": ("memory.max", "memory.swap.max"), "cpu": ("cpu.max",)}


def _set_limits(cgroup: Path, controller: str, config: SandboxConfig, *, v2: bool) -> bool:
    memory = str(config.memory_mib * 2**20)
    quota = str(max(1000, int(config.cpus * 100_000)))
    values = {"pids.max": str(config.pids), "memory.max": memory,
              "memory.limit_in_bytes": memory, "memory.memsw.limit_in_bytes": memory,
              "memory.swap.max": "0", "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": quota,
              "cpu.max": f"{quota} 100000"}
    files = (_V2_FILES if v2 else _V1_FILES)[controller]
    # The first file is the limit itself; the rest (swap) only exist on some hosts.
    return _write(cgroup / files[0], values[files[0]]) and all(
        _write(cgroup / f, values[f]) for f in files[1:] if (cgroup / f).exists())


def pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _remove_stale(base: Path) -> None:
    """rmdir empty sandbox cgroups whose creating process is gone (it crashed before destroy).
    Only those made from this pid namespace: a pid from another one would look dead here."""
    for d in base.glob(f"hearth-*-{pid_namespace()}-*-*"):
        pid = d.name.split("-")[-2]
        if pid.isdigit() and not Path("/proc", pid).exists():
            with contextlib.suppress(OSError):
                d.rmdir()


def _own_cgroups() -> tuple[Path | None, dict[str, Path]]:
    """This process's cgroup directories: the v2 one, and v1 ones per controller we limit."""
    try:
        membership = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None, {}
    own = {}
    for line in membership:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else ["v2"]:
            own[controller] = path
    v2_base: Path | None = None
    v1: dict[str, Path] = {}
    for line in mounts:
        fields, _, tail = line.partition(" - ")
        parts, fs = fields.split(), tail.split()
        if len(parts) < 5 or len(fs) < 3 or not parts[4].startswith(str(CGROUP_ROOT)):
            continue
        root, mountpoint = parts[3], Path(parts[4])
        if fs[0] == "cgroup2" and "v2" in own:
            v2_base = _under(mountpoint, root, own["v2"]) or v2_base
        elif fs[0] == "cgroup":
            for controller in set(fs[2].split(",")) & {"pids", "memory", "cpu"}:
                if controller in own and (d := _under(mountpoint, root, own[controller])):
                    v1[controller] = d
    return v2_base, v1


def _under(mountpoint: Path, mount_root: str, path: str) -> Path | None:
    if not (path == mount_root or path.startswith(mount_root.rstrip("/") + "/")):
        return None
    d = mountpoint / path[len(mount_root):].lstrip("/")
    return d if d.is_dir() else None


def _mkdir(path: Path) -> bool:
    try:
        path.mkdir()
    except OSError:
        return False
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
    except OSError:
        return False
    return True


def _rmdir(path: Path) -> bool:
    """rmdir ``path``; True once it is gone."""
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
