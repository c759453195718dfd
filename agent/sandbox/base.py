"""The Sandbox protocol: where a task's commands run.

A sandbox is created from a workspace (the task's git worktree on the host) and exposes it inside
at ``/workspace``. Backends: ``bwrap`` (namespaces; default), ``qemu`` (micro-VM), ``docker``.
Paths given to ``read_file``/``write_file`` are relative to the workspace; anything that resolves
outside it raises ``SandboxEscape``.

Exception tree::

    SandboxError
     ├── SandboxEscape       a path that leaves the workspace
     ├── SandboxUnavailable  the backend cannot run on this host (binary missing, no image…)
     ├── SandboxCrashed      the sandbox died mid-command (carries the last output)
     └── SandboxDiskFull     the workspace uses more disk than ``disk_mib`` allows
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

GUEST_WORKSPACE = "/workspace"

OutputCallback = Callable[[str, str], None]
"""Called with (stream, text) as output arrives; stream is "stdout" or "stderr"."""


class SandboxError(Exception):
    pass


class SandboxEscape(SandboxError):
    pass


class SandboxUnavailable(SandboxError):
    pass


class SandboxDiskFull(SandboxError):
    pass


class SandboxCrashed(SandboxError):
    def __init__(self, message: str, last_output: str = "") -> None:
        super().__init__(message)
        self.last_output = last_output


class SandboxConfig(BaseModel):
    """Limits and wiring for one sandbox (``[sandbox]`` in hearth.toml)."""

    model_config = ConfigDict(extra="forbid")

    cpus: float = Field(default=1.0, gt=0, description="CPU cores the sandbox may use.")
    memory_mib: int = Field(default=1024, ge=64, description="Memory cap for everything in the sandbox.")
    pids: int = Field(default=256, ge=16, description="Process cap (stops fork bombs).")
    disk_mib: int = Field(
        default=4096, ge=16,
        description="Disk the workspace may use (MiB). No file may grow past it (bwrap and docker: "
        "RLIMIT_FSIZE; qemu: the guest disk's size), and a step whose workspace is over it fails at "
        "its checkpoint.",
    )
    network: Literal["none", "nat"] = Field(default="none", description="'nat' opts the sandbox into networking.")
    exec_timeout_s: float = Field(default=120, gt=0, description="Default timeout of one command.")


class ExecResult(BaseModel):
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def tail(self, limit: int = 2000) -> str:
        text = (self.stdout + ("\n" + self.stderr if self.stderr else "")).strip()
        return text if len(text) <= limit else "…" + text[-limit:]


@runtime_checkable
class Sandbox(Protocol):
    kind: str
    workspace: Path
    """Host path of the workspace shared into (or synced with) the sandbox."""

    def exec(
        self,
        command: str,
        *,
        timeout_s: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str = ".",
        on_output: OutputCallback | None = None,
    ) -> ExecResult: ...

    def read_file(self, path: str) -> str: ...

    def write_file(self, path: str, content: str) -> None: ...

    def snapshot(self) -> str: ...

    def restore(self, snapshot_id: str) -> None: ...

    def destroy(self) -> None: ...


def resolve_inside(workspace: Path, path: str) -> Path:
    """Resolve ``path`` (relative to the workspace, or absolute under /workspace) on the host.

    Symlinks are followed, so a link pointing out of the workspace is refused too.
    """
    if path.startswith(GUEST_WORKSPACE + "/") or path == GUEST_WORKSPACE:
        path = path[len(GUEST_WORKSPACE) :].lstrip("/") or "."
    if Path(path).is_absolute():
        raise SandboxEscape(f"{path!r} is outside the workspace (use a path relative to {GUEST_WORKSPACE})")
    root = workspace.resolve()
    target = (root / path).resolve()
    if target != root and root not in target.parents:
        raise SandboxEscape(f"{path!r} resolves outside the workspace")
    return target
