"""Sandbox backends behind one protocol; ``open_sandbox`` picks one by name."""

from __future__ import annotations

from pathlib import Path

from agent.sandbox.base import (
    ExecResult,
    Sandbox,
    SandboxConfig,
    SandboxCrashed,
    SandboxDiskFull,
    SandboxError,
    SandboxEscape,
    SandboxUnavailable,
)

__all__ = [
    "ExecResult",
    "Sandbox",
    "SandboxConfig",
    "SandboxCrashed",
    "SandboxDiskFull",
    "SandboxError",
    "SandboxEscape",
    "SandboxUnavailable",
    "open_sandbox",
]


def open_sandbox(kind: str, workspace: Path, config: SandboxConfig | None = None, *, name: str = "",
                 git_dir: Path | None = None) -> Sandbox:
    """Create a sandbox of backend ``kind`` over ``workspace``. ``name`` labels it (task/attempt id).

    ``git_dir``: the workspace's host-private git dir (``agent.host_git``). bwrap and docker show it
    read-only at ``/workspace/.git``; qemu syncs only the work tree, so the guest has no repository.
    """
    config = config or SandboxConfig()
    if kind == "bwrap":
        from agent.sandbox.bwrap import BwrapSandbox

        return BwrapSandbox(workspace, config, name=name, git_dir=git_dir)
    if kind == "qemu":
        from agent.sandbox.qemu import QemuSandbox  # type: ignore[import-not-found,unused-ignore]

        return QemuSandbox(workspace, config, name=name)  # type: ignore[no-any-return,unused-ignore]
    if kind == "docker":
        from agent.sandbox.docker import DockerSandbox  # type: ignore[import-not-found,unused-ignore]

        return DockerSandbox(workspace, config, name=name, git_dir=git_dir)  # type: ignore[no-any-return,unused-ignore]
    raise SandboxUnavailable(f"unknown sandbox {kind!r}: expected one of bwrap, qemu, docker")
