"""Docker backend: one container per sandbox (per attempt), the workspace bind-mounted at /workspace.

The container (``hearth-sb-<name>-<hex>``, labels ``hearth.sandbox``/``hearth.workspace``) runs
``sleep infinity`` under docker's init (tini reaps orphans) from ``hearth/debian:bookworm`` (see
``agent.sandbox.docker_engine``; any image with bash, coreutils and ``sleep`` works). It is created
with:

* ``network_mode="none"`` unless ``config.network == "nat"`` (then the engine's default bridge);
* ``nano_cpus``, ``mem_limit`` (= ``memswap_limit``: no swap) and ``pids_limit`` from the config,
  and an ``fsize`` ulimit of ``disk_mib`` (no file grows past the disk limit);
* ``cap_drop=["ALL"]``, ``no-new-privileges``, a read-only root filesystem with tmpfs ``/tmp``
  (also ``HOME``), ``/var/tmp`` and ``/run``; the user is the workspace's owner (uid:gid), so files
  made inside belong to the same user as on the host;
* the task clone's host-private git dir (``agent.host_git``) mounted read-only at
  ``/workspace/.git``, as the bwrap backend does.

``exec`` runs ``bash -c COMMAND`` through ``docker exec`` and reads the attach stream with
docker-py's frame decoder (agent/sandbox/docker_exec.py), so output reaches ``on_output`` as it
arrives. An exec's first process leads its own session; on timeout every process of that session is
SIGKILLed from the host (found through ``/proc``: containers share the host's kernel), which stops a
fork bomb even when the container's pid limit would refuse another ``docker exec``. The container,
and any concurrent exec, lives on. When the command's shell exits, what it left running in the
background is killed the same way (the bwrap backend's pid namespace gives the same guarantee).
Where the daemon is remote (no matching host ``/proc``) a timeout restarts the container instead.

Snapshots: the workspace is a bind mount, which ``docker commit`` does not capture, so a snapshot
is a copy of the workspace (``agent/sandbox/snapshots.py``, shared with the bwrap backend:
incremental, under ``$HEARTH_SNAPSHOT_DIR/<name>/<id>``) plus, when the root filesystem is
writable (``writable_root=True``), a ``docker commit`` of the container as
``hearth/snapshot:<name>-<id>``. With the default read-only root the container has no state of
its own to commit, so the snapshot reuses the container's image. ``restore`` replaces the
container with a new one from the snapshot image while it puts back the workspace entries that
changed (the directory's inode survives). ``destroy`` removes the container, the committed images
and the copies.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import docker

from agent import processes
from agent.sandbox.base import (
    GUEST_WORKSPACE,
    ExecResult,
    OutputCallback,
    SandboxConfig,
    SandboxCrashed,
    SandboxError,
    SandboxUnavailable,
)
from agent.sandbox.docker_base_image import BASE_ENV, BASE_IMAGE
from agent.sandbox.docker_engine import docker_client, image_exists
from agent.sandbox.docker_exec import ExecStream, exec_final_state, exec_host_pid, in_container
from agent.sandbox.files import git_mount_point, guest_dir, read_inside, safe_name, write_inside
from agent.sandbox.snapshots import WorkspaceSnapshots, snapshot_root

IMAGE_ENV = "HEARTH_DOCKER_SANDBOX_IMAGE"
SNAPSHOT_REPOSITORY = "hearth/snapshot"
TIMEOUT_EXIT_CODE = 124
SHELL = ["bash", "-c"]


class DockerSandbox:
    kind = "docker"

    def __init__(
        self,
        workspace: Path,
        config: SandboxConfig,
        *,
        name: str = "",
        client: Any = None,
        image: str | None = None,
        writable_root: bool = False,
        git_dir: Path | None = None,
    ) -> None:
        """``git_dir``: the workspace's host-private git dir, mounted read-only at ``/workspace/.git``."""
        if not workspace.is_dir():
            raise SandboxError(f"workspace {workspace} is not a directory")
        self.workspace = workspace.resolve()
        self.config = config
        self.name = name or self.workspace.name
        self.image = image or os.environ.get(IMAGE_ENV) or BASE_IMAGE
        self.writable_root = writable_root
        self._git_dir = git_dir.resolve() if git_dir is not None and git_dir.is_dir() else None
        self._own_client = client is None
        self.client = client if client is not None else docker_client()
        if not image_exists(self.client, self.image):
            raise SandboxUnavailable(
                f"docker image {self.image} is missing: build it with "
                f"`hearth docker base-image`"
            )
        self.snapshot_root = snapshot_root(self.workspace, self.name)
        self._files = WorkspaceSnapshots(self.workspace, self.snapshot_root)
        owner = self.workspace.stat()
        self.user = f"{owner.st_uid}:{owner.st_gid}"
        self._snapshots: dict[str, str] = {}
        """snapshot id → image it restores (committed by us, or the base image)."""
        self._committed: set[str] = set()
        self._destroyed = False
        self._lock = threading.Lock()
        self.container: Any = None
        self._local = False
        self._start(self.image)

    # -- container -------------------------------------------------------------------------------

    def _start(self, image: str) -> None:
        cfg = self.config
        volumes: dict[str, dict[str, str]] = {str(self.workspace): {"bind": GUEST_WORKSPACE, "mode": "rw"}}
        if self._git_dir is not None:
            # Never a dir named by a `.git` file in the workspace: that file is sandbox output.
            git_mount_point(self.workspace)
            volumes[str(self._git_dir)] = {"bind": f"{GUEST_WORKSPACE}/.git", "mode": "ro"}
        memory = f"{cfg.memory_mib}m"
        tmpfs = {"/tmp": "rw,nosuid,nodev,size=512m,mode=1777", "/var/tmp": "rw,nosuid,nodev,size=64m,mode=1777",
                 "/run": "rw,nosuid,nodev,size=16m,mode=755"}
        self.container = self.client.containers.run(
            image, ["sleep", "infinity"], detach=True, init=True,
            name=f"hearth-sb-{safe_name(self.name)}-{uuid.uuid4().hex[:6]}",
            labels={"hearth.sandbox": self.name, "hearth.workspace": str(self.workspace)},
            hostname="sandbox", user=self.user, working_dir=GUEST_WORKSPACE,
            environment={**BASE_ENV, "HOME": "/tmp"},
            volumes=volumes,
            network_mode="none" if cfg.network != "nat" else "bridge",
            nano_cpus=int(cfg.cpus * 1e9), mem_limit=memory, memswap_limit=memory, pids_limit=cfg.pids,
            cap_drop=["ALL"], security_opt=["no-new-privileges"],
            # No file may outgrow the disk limit (the workspace is a bind mount, which storage_opt
            # would not cover; the runner checks the total at each checkpoint).
            ulimits=[docker.types.Ulimit(name="fsize", soft=cfg.disk_mib * 2**20, hard=cfg.disk_mib * 2**20)],
            read_only=not self.writable_root, tmpfs=tmpfs,
        )
        self.container.reload()
        init_pid = int(self.container.attrs.get("State", {}).get("Pid") or 0)
        self._local = init_pid > 0 and in_container(init_pid, self.container.id)
        """Whether the container's processes are this host's (so a timeout can kill them by pid)."""

    def _remove_container(self) -> None:
        if self.container is None:
            return
        with contextlib.suppress(Exception):
            self.container.remove(force=True, v=True)
        self.container = None

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
        api = self.client.api
        started = time.monotonic()
        try:
            exec_id = api.exec_create(self.container.id, [*SHELL, command], stdout=True, stderr=True,
                                      environment=env or {}, workdir=guest_cwd, user=self.user)["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except Exception as exc:
            raise SandboxCrashed(f"docker exec in {self.container.name} failed: {exc}") from exc
        reader = ExecStream(sock, on_output)
        leader = exec_host_pid(api, exec_id)
        local = leader > 0 and self._local
        timed_out = False
        deadline = started + timeout
        while not reader.done.wait(0.02):
            if time.monotonic() > deadline:
                timed_out = True
                self._kill_exec(leader, local)
                break
            if local and not processes.alive(leader):
                processes.kill_session(leader)  # the shell is gone: what it left behind goes too
                break
        if not reader.done.wait(10):
            if local:
                processes.kill_session(leader)
            if not reader.done.wait(5):
                reader.close()
        reader.thread.join(5)
        info = exec_final_state(api, exec_id)
        if local and not processes.alive(leader):
            processes.kill_session(leader)  # background processes the shell left behind
        duration_ms = (time.monotonic() - started) * 1000
        reader.emit.reraise()
        stdout, stderr = reader.text("stdout"), reader.text("stderr")
        if timed_out:
            return ExecResult(exit_code=TIMEOUT_EXIT_CODE, stdout=stdout, stderr=stderr, timed_out=True,
                              duration_ms=duration_ms)
        code = info.get("ExitCode")
        if code is None:
            self.container.reload()
            if self.container.status != "running":
                raise SandboxCrashed(f"container {self.container.name} stopped ({self.container.status})",
                                     (stdout + stderr)[-4000:])
            code = 137
        if code == 137 and self._oom_killed_since():
            note = f"[hearth] out of memory: a process was killed at the {self.config.memory_mib} MiB limit\n"
            stderr += note
        return ExecResult(exit_code=int(code), stdout=stdout, stderr=stderr, duration_ms=duration_ms)

    def _kill_exec(self, leader: int, local: bool) -> None:
        if local:
            processes.kill_session(leader)
            return
        # A remote daemon: no host pids to signal, so restart the container (its workspace survives).
        with contextlib.suppress(Exception):
            self.container.restart(timeout=0)

    _oom_seen = 0

    def _oom_killed_since(self) -> bool:
        """Whether the container's memory cgroup recorded a new OOM kill (local daemons, cgroup v1/v2)."""
        count = 0
        for path in (f"/sys/fs/cgroup/memory/hearth-docker/{self.container.id}/memory.oom_control",
                     f"/sys/fs/cgroup/hearth-docker/{self.container.id}/memory.events"):
            with contextlib.suppress(OSError):
                for line in Path(path).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        count = int(value)
        new, self._oom_seen = count > self._oom_seen, max(count, self._oom_seen)
        return new

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
        snapshot_id = self._files.take()
        try:
            image = self.container.image.id
            if self.writable_root:
                tag = f"{safe_name(self.name)}-{snapshot_id}".lower()
                self.container.commit(repository=SNAPSHOT_REPOSITORY, tag=tag,
                                      conf={"Labels": {"hearth.snapshot-of": self.name}})
                image = f"{SNAPSHOT_REPOSITORY}:{tag}"
                self._committed.add(image)
        except BaseException:
            self._files.discard(snapshot_id)
            raise
        self._snapshots[snapshot_id] = image
        return snapshot_id

    def restore(self, snapshot_id: str) -> None:
        self._check_alive()
        image = self._snapshots.get(snapshot_id)
        if image is None or not self._files.path(snapshot_id).is_dir():
            raise SandboxError(f"no snapshot {snapshot_id!r} in sandbox {self.name!r}")
        with self._lock:
            # The container is replaced while the workspace is copied back (no command runs meanwhile).
            failed: list[BaseException] = []

            def replace() -> None:
                try:
                    self._remove_container()
                    self._start(image)
                except BaseException as exc:
                    failed.append(exc)

            swap = threading.Thread(target=replace, name="docker-sandbox-restore", daemon=True)
            swap.start()
            try:
                self._files.restore(snapshot_id)
            finally:
                swap.join()
            self._oom_seen = 0
            if failed:
                raise SandboxCrashed(f"restoring sandbox {self.name!r}: the new container failed: {failed[0]}")

    def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        self._remove_container()
        for image in self._committed:
            with contextlib.suppress(Exception):
                self.client.images.remove(image, force=True, noprune=False)
        self._files.remove_all()
        if self._own_client:
            self.client.close()

    def __enter__(self) -> DockerSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def _check_alive(self) -> None:
        if self._destroyed:
            raise SandboxError(f"sandbox {self.name!r} was destroyed")
        if self.container is None:
            raise SandboxCrashed(f"sandbox {self.name!r} has no container")


# -- workspace copies ------------------------------------------------------------------------------


