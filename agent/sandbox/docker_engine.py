"""A Docker engine for Hearth on a machine without systemd or a registry: dockerd started by hand, and
the base image built with debootstrap.

Everything lives under one *engine root* (default ``$HEARTH_DOCKER_ROOT``, else
``platformdirs.user_cache_dir("hearth")/docker``), so nothing collides with a system Docker:

* ``<root>/data-<driver>``: dockerd's ``--data-root`` (images survive restarts of the daemon);
* ``/tmp/hearth-dockerd-<hash>/``: ``--exec-root``, ``--pidfile``, the log and the API socket
  (``docker.sock``); kept short because containerd puts unix sockets under the exec root;
* ``<root>/base/``: the debootstrap tarball of the base image (reused when the image is gone,
  e.g. after the data root was wiped), ``<root>/debs/``: debootstrap's package cache.

``start_dockerd()`` reuses a daemon already serving that socket (it then belongs to whoever started
it and ``stop()`` leaves it alone), else starts one with its own bridge (``hdk<hash>``,
``--iptables=false``: published ports go through docker-proxy on 127.0.0.1, and no host firewall
rule is touched), cgroup parent ``/hearth-docker``, overlay2 or, if that fails, vfs. It is stopped
by pid. ``docker_client()`` finds the engine Hearth should use: ``$HEARTH_DOCKER_HOST``, then
``$DOCKER_HOST``, then the Hearth-managed daemon if it runs, then ``/var/run/docker.sock``.

``ensure_base_image()`` makes ``hearth/debian:bookworm`` (debootstrap ``--variant=minbase`` plus
python3, git, ca-certificates, imported with ``docker import``); an image already present with
the same recipe hash is kept.

    python -m agent.sandbox.docker_engine start|stop|status|base-image
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import platformdirs

from agent.sandbox.base import SandboxUnavailable

Progress = Callable[[str], None]

ROOT_ENV = "HEARTH_DOCKER_ROOT"
HOST_ENV = "HEARTH_DOCKER_HOST"
BASE_IMAGE = "hearth/debian:bookworm"
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "git", "ca-certificates")
BASE_RECIPE_VERSION = "1"
BASE_STRIP = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt",
              "var/lib/apt/lists")
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
CGROUP_PARENT = "/hearth-docker"
DEFAULT_SOCKET = Path("/var/run/docker.sock")


def _quiet(message: str) -> None:
    del message


def engine_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or Path(platformdirs.user_cache_dir("hearth")) / "docker")


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def run_dir(root: Path) -> Path:
    return Path("/tmp") / f"hearth-dockerd-{_short_hash(str(root.resolve()))}"


def ensure_docker_installed(progress: Progress = _quiet) -> str:
    """The path of ``dockerd``, installing Debian's ``docker.io`` with apt when it is missing."""
    found = shutil.which("dockerd")
    if found:
        return found
    if os.geteuid() != 0:
        raise SandboxUnavailable("dockerd is not installed and installing docker.io with apt needs root")
    progress("apt-get install docker.io")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    found = shutil.which("dockerd")
    if done.returncode != 0 or not found:
        raise SandboxUnavailable(f"apt-get install docker.io failed: {done.stderr.strip()[-2000:]}")
    return found


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2:].split(" ", 1)[0] not in ("Z", "X")


def _ping(socket_path: Path, timeout_s: float = 2.0) -> bool:
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
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and _pid_alive(self.pid):
                time.sleep(0.05)
            if not _pid_alive(self.pid):
                break
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
    root: Path | None = None, *, timeout_s: float = 60.0, progress: Progress = _quiet,
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
            if _pid_alive(pid) and _ping(socket_path):
                return DockerDaemon(root, socket_path, pid, started=False, log=log,
                                    storage_driver=_driver_of(socket_path))
        dockerd = ensure_docker_installed(progress)
        tag = _short_hash(str(root))
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
            deadline = started + timeout_s
            while proc.poll() is None and time.monotonic() < deadline and not _ping(socket_path, 1.0):
                time.sleep(0.05)
            if proc.poll() is None and _ping(socket_path, 2.0):
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
    if not _pid_alive(pid):
        return False
    DockerDaemon(root, run_dir(root) / "docker.sock", pid, started=True,
                 bridge=f"hdk{_short_hash(str(root))}").stop()
    return True


def docker_base_url() -> str | None:
    """Which engine to talk to; None means docker's own defaults (``docker.from_env``)."""
    for var in (HOST_ENV, "DOCKER_HOST"):
        if os.environ.get(var):
            return os.environ[var]
    managed = run_dir(engine_root().resolve()) / "docker.sock"
    if managed.exists() and _ping(managed, 1.0):
        return f"unix://{managed}"
    return None


def docker_client(timeout_s: int = 120) -> Any:
    """A docker SDK client for Hearth's engine; ``SandboxUnavailable`` when none answers."""
    import docker

    base_url = docker_base_url()
    hint = f"start one with `python -m agent.sandbox.docker_engine start` or set {HOST_ENV}"
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


# -- the base image ------------------------------------------------------------------------------


def base_recipe_hash() -> str:
    recipe = json.dumps({"v": BASE_RECIPE_VERSION, "suite": BASE_SUITE, "packages": BASE_PACKAGES,
                         "strip": BASE_STRIP, "env": BASE_ENV}, sort_keys=True)
    return _short_hash(recipe, 12)


def apt_mirror() -> str:
    """The main Debian archive apt is configured with (debootstrap uses the same mirror)."""
    out = subprocess.run(["apt-get", "indextargets", "--format", "$(REPO_URI)\t$(RELEASE)\t$(COMPONENT)",
                          "Created-By: Packages"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2] == "main" and "-" not in parts[1] and "security" not in parts[0]:
            return parts[0]
    return "http://deb.debian.org/debian/"


def base_tarball(root: Path | None = None) -> Path:
    return (root or engine_root()) / "base" / f"debian-{BASE_SUITE}-{base_recipe_hash()}.tar"


def build_base_tarball(root: Path | None = None, *, progress: Progress = _quiet, force: bool = False) -> Path:
    """debootstrap the base rootfs and tar it (cached: an existing tarball is returned as is)."""
    root = root or engine_root()
    tarball = base_tarball(root)
    if tarball.is_file() and not force:
        return tarball
    if os.geteuid() != 0:
        raise SandboxUnavailable("building the base image needs root (debootstrap)")
    if not shutil.which("debootstrap"):
        progress("apt-get install debootstrap")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"],
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, capture_output=True, check=False)
        if not shutil.which("debootstrap"):
            raise SandboxUnavailable("debootstrap is missing and could not be installed")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    rootfs = tarball.parent / f"rootfs.{os.getpid()}"
    shutil.rmtree(rootfs, ignore_errors=True)
    try:
        mirror = apt_mirror()
        progress(f"debootstrap {BASE_SUITE} minbase + {', '.join(BASE_PACKAGES)} from {mirror}")
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", "--components=main", f"--include={','.join(BASE_PACKAGES)}",
             f"--cache-dir={debs}", BASE_SUITE, str(rootfs), mirror],
            capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = (done.stdout + done.stderr).strip().splitlines()[-15:]
            raise SandboxUnavailable("debootstrap failed:\n" + "\n".join(log))
        for rel in BASE_STRIP:
            target = rootfs / rel
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        done = subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SandboxUnavailable(f"tar of the base rootfs failed: {done.stderr.strip()[-1000:]}")
        partial.rename(tarball)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


def image_exists(client: Any, ref: str) -> bool:
    import docker

    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_base_image(
    client: Any, *, root: Path | None = None, progress: Progress = _quiet, force: bool = False
) -> dict[str, float]:
    """Make sure ``hearth/debian:bookworm`` (this recipe) exists; returns the seconds spent per step."""
    import docker

    timings: dict[str, float] = {}
    recipe = base_recipe_hash()
    if not force:
        try:
            labels = client.images.get(BASE_IMAGE).labels or {}
        except docker.errors.ImageNotFound:
            labels = {}
        if labels.get("hearth.recipe") == recipe:
            return timings
    root = root or engine_root()
    with filelock.FileLock(str(_mk(root) / "base.lock")):
        started = time.monotonic()
        tarball = build_base_tarball(root, progress=progress, force=force)
        timings["debootstrap_s"] = time.monotonic() - started
        started = time.monotonic()
        progress(f"docker import {tarball.name} as {BASE_IMAGE}")
        changes = [f"ENV {k}={v}" for k, v in BASE_ENV.items()]
        changes += [f"LABEL hearth.recipe={recipe}", 'CMD ["/bin/bash"]']
        repository, tag = BASE_IMAGE.split(":")
        client.api.import_image(src=str(tarball), repository=repository, tag=tag, changes=changes)
        timings["import_s"] = time.monotonic() - started
    return timings


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m agent.sandbox.docker_engine", description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "status", "base-image"])
    parser.add_argument("--root", type=Path, default=None, help=f"engine root (default ${ROOT_ENV} or cache)")
    args = parser.parse_args(argv)
    say: Progress = lambda m: print(f"[docker] {m}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.command == "stop":
            print(json.dumps({"stopped": stop_dockerd(args.root)}))
            return 0
        if args.command == "status":
            root = (args.root or engine_root()).resolve()
            sock = run_dir(root) / "docker.sock"
            print(json.dumps({"root": str(root), "socket": str(sock), "running": _ping(sock)}))
            return 0
        daemon = start_dockerd(args.root, progress=say)
        out: dict[str, Any] = {"socket": str(daemon.socket), "pid": daemon.pid, "started": daemon.started,
                               "start_s": round(daemon.start_s, 2), "driver": daemon.storage_driver,
                               "docker_host": daemon.base_url}
        if args.command == "base-image":
            client = daemon.client()
            started = time.monotonic()
            out["timings"] = {k: round(v, 1) for k, v in ensure_base_image(client, root=args.root,
                                                                           progress=say).items()}
            out["base_image_s"] = round(time.monotonic() - started, 1)
        print(json.dumps(out))
    except SandboxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
