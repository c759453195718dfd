"""A Docker engine for Hearth on a machine without systemd or a registry: dockerd started by hand, and
the base image built with debootstrap.

Everything lives under one *engine root* (default ``$HEARTH_DOCKER_ROOT``, else
``platformdirs.user_cache_dir("hearth")/docker``), so nothing collides with a system Docker:

* ``<root>/data-<driver>``: dockerd's ``--data-root`` (images survive restarts of the daemon);
* ``/tmp/hearth-dockerd-<hash>/``: ``--exec-root``, ``--pidfile``, the log and the API socket
  (``docker.sock``); kept short because containerd puts unix sockets under the exec root;
* ``<root>/base/`` and ``<root>/debs/``: the base image's debootstrap tarball and package cache.

``start_dockerd()`` reuses a daemon already serving that socket (it then belongs to whoever started
it and ``stop()`` leaves it alone), else starts one with its own bridge (``hdk<hash>``,
``--iptables=false``: published ports go through docker-proxy on 127.0.0.1, and no host firewall
rule is touched), cgroup parent ``/hearth-docker``, overlay2 or, if that fails, vfs. It is stopped
by pid. ``docker_client()`` finds the engine Hearth should use: ``$HEARTH_DOCKER_HOST``, then
``$DOCKER_HOST``, then the Hearth-managed daemon if it runs, then ``/var/run/docker.sock``.

The base image is ``agent.sandbox.docker_base_image``'s. From a shell:
``hearth docker start|stop|status|base-image``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import platformdirs

from agent import processes
from agent.sandbox.apt import apt_install
from agent.sandbox.base import SandboxUnavailable

Progress = Callable[[str], None]

ROOT_ENV = "HEARTH_DOCKER_ROOT"
HOST_ENV = "HEARTH_DOCKER_HOST"
CGROUP_PARENT = "/hearth-docker"
DEFAULT_SOCKET = Path("/var/run/docker.sock")


def quiet(message: str) -> None:
    del message


def engine_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or Path(platformdirs.user_cache_dir("hearth")) / "docker")


def short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def run_dir(root: Path) -> Path:
    return Path("/tmp") / f"hearth-dockerd-{short_hash(str(root.resolve()))}"


def ensure_docker_installed(progress: Progress = quiet) -> str:
    """The path of ``dockerd``, installing Debian's ``docker.io`` with apt when it is missing."""
    found = shutil.which("dockerd")
    if found:
        return found
    if os.geteuid() != 0:
        raise SandboxUnavailable("dockerd is not installed and installing docker.io with apt needs root")
    progress("apt-get install docker.io")
    done = apt_install(["docker.io"])
    found = shutil.which("dockerd")
    if done.returncode != 0 or not found:
        raise SandboxUnavailable(f"apt-get install docker.io failed: {done.stderr.strip()[-2000:]}")
    return found


def ping(socket_path: Path, timeout_s: float = 2.0) -> bool:
    """Whether a Docker engine answers on ``socket_path``."""
    import docker

    if not socket_path.exists():
        return False
    try:
        client = docker.DockerClient(base_url=f"unix://{socket_path}", timeout=int(max(1, timeout_s)))
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


@dataclass
class DockerDaemon:
    """A dockerd serving ``socket``; ``started`` when this object started it (and so may stop it)."""

    root: Path
    socket: Path
    pid: int
    started: bool
    storage_driver: str = ""
    start_s: float = 0.0
    """Spawn until the API answered (0 when an existing daemon was reused)."""
    log: Path = field(default_factory=Path)
    bridge: str = ""

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket}"

    def client(self, timeout_s: int = 120) -> Any:
        import docker

        return docker.DockerClient(base_url=self.base_url, timeout=timeout_s)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the daemon by pid if this object started it (containers are stopped by dockerd)."""
        if not self.started:
            return
        processes.stop(self.pid, term_s=timeout_s, kill_s=timeout_s)
        if self.bridge:
            subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, check=False)
        self.started = False


def _ensure_bridge(name: str, cidr: str) -> bool:
    if not shutil.which("ip"):
        return False
    if subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode != 0:
        steps = [["ip", "link", "add", "name", name, "type", "bridge"],
                 ["ip", "addr", "add", cidr, "dev", name]]
        for step in steps:
            if subprocess.run(step, capture_output=True, check=False).returncode != 0:
                subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)
                return False
    return subprocess.run(["ip", "link", "set", name, "up"], capture_output=True, check=False).returncode == 0


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_dockerd(
    root: Path | None = None, *, timeout_s: float = 60.0, progress: Progress = quiet,
    storage_drivers: tuple[str, ...] = ("overlay2", "vfs"),
) -> DockerDaemon:
    """Start (or reuse) the Hearth-managed dockerd of engine root ``root``."""
    root = (root or engine_root()).resolve()
    run = run_dir(root)
    socket_path, pidfile, log = run / "docker.sock", run / "dockerd.pid", run / "dockerd.log"
    root.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(root / "dockerd.lock"), timeout=timeout_s + 60):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            if processes.alive(pid) and ping(socket_path):
                return DockerDaemon(root, socket_path, pid, started=False, log=log,
                                    storage_driver=_driver_of(socket_path))
        dockerd = ensure_docker_installed(progress)
        tag = short_hash(str(root))
        bridge = f"hdk{tag}"
        subnet = int(tag[:2], 16) % 200 + 20
        have_bridge = _ensure_bridge(bridge, f"10.213.{subnet}.1/24")
        config = run / "daemon.json"
        config.write_text("{}\n")
        errors = []
        for driver in storage_drivers:
            argv = [dockerd, "--config-file", str(config), "--data-root", str(root / f"data-{driver}"),
                    "--exec-root", str(run / "exec"), "--pidfile", str(pidfile), "-H", f"unix://{socket_path}",
                    "--storage-driver", driver, "--cgroup-parent", CGROUP_PARENT,
                    "--iptables=false", "--ip-masq=false", "--ip-forward=false"]
            argv += ["--bridge", bridge] if have_bridge else ["--bridge", "none"]
            with log.open("a") as out:
                out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
            offset = log.stat().st_size
            started = time.monotonic()
            progress(f"starting dockerd ({driver}) on {socket_path}")
            with log.open("ab") as out:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, close_fds=True)
            processes.wait_until(lambda: proc.poll() is not None or ping(socket_path, 1.0),  # noqa: B023
                                 timeout_s - (time.monotonic() - started))
            if proc.poll() is None and ping(socket_path, 2.0):
                proc.returncode = 0  # it outlives this call on purpose; stopped by pid
                return DockerDaemon(root, socket_path, proc.pid, started=True, storage_driver=driver,
                                    start_s=time.monotonic() - started, log=log,
                                    bridge=bridge if have_bridge else "")
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            text = log.read_text(errors="replace")[offset:]
            errors.append(f"{driver}: " + "\n".join(text.splitlines()[-8:]))
        raise SandboxUnavailable("dockerd did not start:\n" + "\n".join(errors))


def _driver_of(socket_path: Path) -> str:
    import docker

    client = docker.DockerClient(base_url=f"unix://{socket_path}")
    try:
        return str(client.info().get("Driver", ""))
    except Exception:
        return ""
    finally:
        client.close()


def stop_dockerd(root: Path | None = None) -> bool:
    """Stop the Hearth-managed dockerd of ``root`` by its pidfile; True if one was running."""
    root = (root or engine_root()).resolve()
    pidfile = run_dir(root) / "dockerd.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return False
    if not processes.alive(pid):
        return False
    DockerDaemon(root, run_dir(root) / "docker.sock", pid, started=True,
                 bridge=f"hdk{short_hash(str(root))}").stop()
    return True


def docker_base_url() -> str | None:
    """Which engine to talk to; None means docker's own defaults (``docker.from_env``)."""
    for var in (HOST_ENV, "DOCKER_HOST"):
        if os.environ.get(var):
            return os.environ[var]
    managed = run_dir(engine_root().resolve()) / "docker.sock"
    if managed.exists() and ping(managed, 1.0):
        return f"unix://{managed}"
    return None


def docker_client(timeout_s: int = 120) -> Any:
    """A docker SDK client for Hearth's engine; ``SandboxUnavailable`` when none answers."""
    import docker

    base_url = docker_base_url()
    hint = f"start one with `hearth docker start` or set {HOST_ENV}"
    if base_url is None and not DEFAULT_SOCKET.exists():  # nothing to ask (and no socket to leak)
        raise SandboxUnavailable(f"no Docker engine: {DEFAULT_SOCKET} does not exist and DOCKER_HOST is unset; {hint}")
    client = None
    try:
        client = (docker.DockerClient(base_url=base_url, timeout=timeout_s) if base_url
                  else docker.from_env(timeout=timeout_s))
        client.ping()
    except Exception as exc:
        if client is not None:
            client.close()
        raise SandboxUnavailable(
            f"no Docker engine answers ({base_url or 'DOCKER_HOST / ' + str(DEFAULT_SOCKET)}): {exc}; {hint}"
        ) from exc
    return client


def image_exists(client: Any, ref: str) -> bool:
    import docker

    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True
