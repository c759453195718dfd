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
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel

from agent import processes
from cluster import local
from cluster.node_join import (
    JoinError,
    box_name,
    check_join,
    install_token,
    parse_address,
    ray_env,
)
from cluster.ray_start import ray_temp_dir, worker_ray_command
from cluster.ray_start import ray_token as ray_token  # where tests/chaos_head.py finds it

NODE_FILE = "node.json"
SUPERVISE_EVERY_S = 1.0


class NodeInfo(BaseModel):
    """A box's record of the Ray node it started (``<state dir>/node.json``)."""

    head_address: str
    host: str
    ray_pid: int


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
