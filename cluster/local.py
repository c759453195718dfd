"""``hearth up`` / ``hearth down``: a local head (Ray + scheduler + sidecar) started and stopped by PID.

``ray start --head --block`` runs in its own process group, so ``down`` stops exactly the Ray
processes this started (never ``ray stop``, which kills every Ray process on the machine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import platformdirs

from cluster.private_files import ensure_token_file, private_dir


def state_dir() -> Path:
    return private_dir(Path(os.environ.get("HEARTH_STATE_DIR") or platformdirs.user_state_dir("hearth")))


@dataclasses.dataclass(frozen=True, kw_only=True)
class UpInfo:
    """What ``hearth up`` started, kept in ``<state dir>/up.json``. A dataclass, not a pydantic
    model: every client command (``hearth tasks``) reads it, and pydantic's import is ~0.1 s."""

    ray_address: str
    api_url: str
    ray_pid: int | None = None
    sidecar_pid: int | None = None
    state_dir: str
    host: str = "127.0.0.1"
    """Where Ray and the sidecar listen (``--host``)."""
    api_port: int = 8765
    config: str | None = None
    """The head configuration file the sidecar was started with (``--config``)."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def token_path(base: Path | None = None) -> Path:
    return (base or state_dir()) / "token"


def ensure_token(base: Path) -> str:
    return ensure_token_file(token_path(base))


def read_up(base: Path | None = None) -> UpInfo | None:
    path = (base or state_dir()) / "up.json"
    if not path.exists():
        return None
    known = {f.name for f in dataclasses.fields(UpInfo)}
    return UpInfo(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str, log: Path) -> None:
    from agent import processes  # psutil: only up/down need it (client commands stay fast)

    if processes.wait_until(predicate, timeout_s, 0.2):
        return
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout_s:.0f} s; last log lines:\n{tail}")


def _healthy(api_url: str, token: str) -> bool:
    import httpx  # here: `hearth tasks` reads up.json through this module and need not load it

    try:
        reply = httpx.get(f"{api_url}/v1/health", headers={"Authorization": f"Bearer {token}"}, timeout=2)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200


def up(*, api_port: int = 8765, ray_port: int = 0, slots: int | None = None, host: str = "127.0.0.1",
       config: Path | None = None, progress: Callable[[str], None] = print) -> UpInfo:
    """Start (or find) the head: Ray, the scheduler actor and the sidecar, listening on ``host``.

    If Ray is still running but the sidecar is not (it crashed), only the sidecar is started again:
    restarting Ray would lose every running attempt to ``node_lost``.
    """
    from agent import processes
    from cluster.ray_start import head_ray_command, ray_temp_dir, ray_token

    base = state_dir()
    token = ensure_token(base)
    token_file = ray_token(base)
    current = read_up(base)
    if current and processes.alive(current.ray_pid) and _ray_answers(current.ray_address):
        if _healthy(current.api_url, token):
            progress(f"already up: {current.api_url}")
            return current
        progress(f"Ray is running (pid {current.ray_pid}); starting only the sidecar again")
        processes.stop_session(current.sidecar_pid)
        return _start_sidecar(current, token, token_file, progress)
    if current:
        down(progress=lambda _: None)
    ray_port = ray_port or _free_port()
    slots = (os.cpu_count() or 1) if slots is None else slots
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    ray_log = logs / "ray-head.log"
    progress(f"starting Ray head on {host}:{ray_port} ({slots} task slots, token auth on)")
    with ray_log.open("ab") as out:
        command = head_ray_command(host=host, port=ray_port, slots=slots, temp_dir=ray_temp_dir(base))
        ray_proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=_ray_env(token_file, host))

    def ray_ready() -> bool:
        if ray_proc.poll() is not None:
            raise RuntimeError(f"ray start exited ({ray_proc.returncode}); see {ray_log}")
        return "Ray runtime started" in ray_log.read_text(errors="replace")

    _wait(ray_ready, 90, "Ray head", ray_log)
    info = UpInfo(ray_address=f"{host}:{ray_port}", api_url=f"http://{host}:{api_port}", ray_pid=ray_proc.pid,
                  state_dir=str(base), host=host, api_port=api_port, config=str(config) if config else None)
    return _start_sidecar(info, token, token_file, progress)


def _ray_env(token_file: Path, host: str) -> dict[str, str]:
    from cluster.node_join import ray_env

    return ray_env(token_file, host)


def _ray_answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def _start_sidecar(info: UpInfo, token: str, token_file: Path, progress: Callable[[str], None]) -> UpInfo:
    base = Path(info.state_dir)
    side_log = base / "logs" / "sidecar.log"
    progress(f"starting the scheduler and the sidecar on {info.api_url}")
    command = [sys.executable, "-m", "cluster.api", "--address", info.ray_address, "--state-dir", str(base),
               "--host", info.host, "--port", str(info.api_port)]
    if info.config:
        command += ["--config", info.config]
    with side_log.open("ab") as out:
        side_proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=_ray_env(token_file, info.host))
    info = dataclasses.replace(info, sidecar_pid=side_proc.pid)
    (base / "up.json").write_text(info.to_json())

    def sidecar_ready() -> bool:
        if side_proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited ({side_proc.returncode}); see {side_log}")
        return _healthy(info.api_url, token)

    _wait(sidecar_ready, 90, "sidecar", side_log)
    return info


def down(*, progress: Callable[[str], None] = print) -> None:
    """Stop what ``up`` started, by process group; also the node's embedded model server."""
    from agent import processes

    base = state_dir()
    info = read_up(base)
    box = base / "node.json"  # a box's Ray node (cluster/node_start.py)
    if box.exists():
        with contextlib.suppress(OSError, ValueError):
            processes.stop_session(json.loads(box.read_text()).get("ray_pid"))
        box.unlink(missing_ok=True)
        if info is None:
            progress("stopped this box's Ray node")
            return
    if info is None:
        progress("nothing to stop")
        return
    processes.stop_session(info.sidecar_pid)
    processes.stop_session(info.ray_pid)
    for state in base.glob("embedded-*.json"):
        try:
            pid = json.loads(state.read_text()).get("pid")
        except (OSError, ValueError):
            continue
        processes.stop_session(pid, term_s=5)
        state.unlink(missing_ok=True)
    (base / "up.json").unlink(missing_ok=True)
    progress("stopped")
