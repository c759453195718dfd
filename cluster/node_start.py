"""``hearth node start``: one command per box.

* ``--head`` (the same as ``hearth up``): Ray, the scheduler and the sidecar, listening on ``--host``;
  ``--slots 0`` makes a pure head that runs no tasks itself.
* ``--address HEAD:PORT``: this box joins the head, after the checks in ``cluster/node_join.py``.

Ray runs in its own session (``ray start --block`` under ``start_new_session``), recorded in
``<state dir>/up.json`` (head) or ``node.json`` (box), so ``hearth down`` stops exactly what was
started, by PID. With ``--block`` the command stays in the foreground (what systemd runs): a box
waits on its Ray; the head also starts its sidecar again whenever it dies, and never restarts Ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel

from agent import processes
from cluster import local
from cluster.node_join import (
    RAY_TOKEN_FILE,
    JoinError,
    box_labels,
    box_name,
    check_join,
    install_token,
    parse_address,
    ray_env,
)
from cluster.nodes import inventory, ray_start_args

NODE_FILE = "node.json"
SUPERVISE_EVERY_S = 1.0


class NodeInfo(BaseModel):
    """A box's record of the Ray node it started (``<state dir>/node.json``)."""

    head_address: str
    host: str
    ray_pid: int


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


def address_towards(host: str, port: int) -> str:
    """This box's address on the route to the head (what the head and other boxes will dial)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        return str(sock.getsockname()[0])


def read_node(base: Path) -> NodeInfo | None:
    path = base / NODE_FILE
    return NodeInfo.model_validate_json(path.read_text()) if path.exists() else None


def join(address: str, *, host: str | None = None, slots: int | None = None, token_file: Path | None = None,
         timeout_s: float = 30.0, progress: Callable[[str], None] = print) -> tuple[NodeInfo, subprocess.Popen[bytes]]:
    """Check, then start this box's Ray node against the head; raises ``JoinError`` naming the cause."""
    base = local.state_dir()
    box = box_name()
    head_host, port = parse_address(address)
    current = read_node(base)
    if current and processes.alive(current.ray_pid):
        raise JoinError(f"box {box} already runs a Ray node (pid {current.ray_pid}, joined to "
                        f"{current.head_address}); `hearth down` stops it", 2)
    token_path = install_token(base, token_file, box)
    progress(f"box {box}: checking the head at {head_host}:{port}")
    check_join(address, token_path, box, timeout_s)
    host = host or address_towards(head_host, port)
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    command = worker_ray_command(address=f"{head_host}:{port}", host=host, slots=slots, temp_dir=ray_temp_dir(base))
    for attempt in range(1, STARTS + 1):
        progress(f"box {box}: starting Ray on {host}, joining {head_host}:{port}")
        try:
            proc = _start_box_ray(command, ray_env(token_path), logs / "ray-node.log", box, f"{head_host}:{port}")
        except _RegistrationTimedOut as exc:
            if attempt == STARTS:
                raise JoinError(str(exc)) from None
            progress(f"box {box}: Ray's node did not register within Ray's 30 s (a busy box?); once more")
            continue
        info = NodeInfo(head_address=f"{head_host}:{port}", host=host, ray_pid=proc.pid)
        (base / NODE_FILE).write_text(info.model_dump_json())
        return info, proc
    raise AssertionError("unreachable")


STARTS = 3
"""Tries of ``ray start``: Ray gives a new node a fixed 30 s to register, which a busy box can miss."""


class _RegistrationTimedOut(JoinError):
    pass


def _start_box_ray(command: list[str], env: dict[str, str], ray_log: Path, box: str,
                   head: str) -> subprocess.Popen[bytes]:
    started_at = ray_log.stat().st_size if ray_log.exists() else 0
    with ray_log.open("ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def output() -> str:
        return ray_log.read_bytes()[started_at:].decode(errors="replace")

    def ready() -> bool:
        if proc.poll() is not None:
            processes.stop_session(proc.pid)  # whatever it left in its session
            tail = output().strip()[-1500:]
            failure = _RegistrationTimedOut if "timed out during startup" in tail else JoinError
            raise failure(f"box {box}: Ray did not join the head at {head} (exit {proc.returncode}):\n{tail}")
        return "Ray runtime started" in output()

    try:
        local._wait(ready, 120, f"box {box}'s Ray node", ray_log)
    except JoinError:
        raise
    except RuntimeError as exc:  # no word from Ray within the deadline
        processes.stop_session(proc.pid)
        raise JoinError(str(exc)) from None
    return proc


def block_box(proc: subprocess.Popen[bytes]) -> int:
    """Stay in the foreground until the box's Ray exits (or a SIGTERM/SIGINT stops it)."""
    with _stop_on_signal(lambda: processes.stop_session(proc.pid)):
        return proc.wait()


def supervise_head(info: local.UpInfo, restart: Callable[[], local.UpInfo],
                   progress: Callable[[str], None] = print) -> int:
    """The head in the foreground: start the sidecar again whenever it dies; never restart Ray (that
    would end every running attempt). Returns when Ray exits, or on SIGTERM/SIGINT (then stops all)."""
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True

    with _stop_on_signal(stop):
        while not stopped:
            if not processes.alive(info.ray_pid):
                progress(f"Ray on the head exited; see {Path(info.state_dir) / 'logs' / 'ray-head.log'}")
                local.down(progress=progress)
                return 1
            if not processes.alive(info.sidecar_pid):
                progress(f"the sidecar (pid {info.sidecar_pid}) exited; starting it again")
                with contextlib.suppress(RuntimeError):
                    info = restart()
            time.sleep(SUPERVISE_EVERY_S)
    local.down(progress=progress)
    return 0


@contextlib.contextmanager
def _stop_on_signal(stop: Callable[[], None]) -> Iterator[None]:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
