"""The ``ray start`` command of a head or a box, where its Ray keeps its sessions, and the cluster token.

Used by ``hearth up`` (cluster/local.py) and ``hearth node start`` (cluster/node_start.py); neither
imports the other for these.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import tempfile
from pathlib import Path

from cluster.node_join import RAY_TOKEN_FILE, box_labels
from cluster.nodes import inventory, ray_start_args


def ray_token(base: Path) -> Path:
    """The head's cluster token file (made once, 0600); boxes get a copy (``--token-file``)."""
    from cluster.private_files import ensure_token_file

    path = base / RAY_TOKEN_FILE
    ensure_token_file(path)
    return path


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ray_temp_dir(base: Path) -> Path:
    """Where this node's Ray keeps its sessions: ``<state dir>/ray``, unless that path is too long for
    the unix sockets Ray makes under it (107 bytes, with ~65 of Ray's own); then a short private dir
    under the system's temp dir, named after the state dir so each node keeps its own."""
    preferred = base / "ray"
    if len(str(preferred)) <= 40:
        return preferred
    short = Path(tempfile.gettempdir()) / f"hearth-ray-{hashlib.sha256(str(base).encode()).hexdigest()[:10]}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short


def _ray(*args: str) -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats", *args]


def head_ray_command(*, host: str, port: int, slots: int, temp_dir: Path) -> list[str]:
    """``ray start --head`` bound to ``host`` wherever Ray lets us bind (node address, agents, client
    server); the agent and client-server ports are free ones, so several nodes can share a machine."""
    return _ray("--head", f"--port={port}", f"--node-ip-address={host}", "--include-dashboard=false",
                *([f"--num-cpus={slots}"] if slots else []), *ray_start_args(inventory(with_models=False), slots=slots,
                                                       extra_labels=box_labels("head")),
                f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={_free_port()}",
                f"--ray-client-server-port={_free_port()}")


def worker_ray_command(*, address: str, host: str, slots: int | None, temp_dir: Path) -> list[str]:
    return _ray(f"--address={address}", f"--node-ip-address={host}",
                *ray_start_args(inventory(with_models=False), slots=slots, extra_labels=box_labels("box")),
                f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={_free_port()}")
