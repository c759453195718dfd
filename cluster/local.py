"""``hearth up`` / ``hearth down``: a local head (Ray + scheduler + sidecar) started and stopped by PID.

``agent.processes`` (psutil) is imported inside ``up``/``down``: the CLI's client commands read
``up.json`` and the token from here and must stay fast.

``ray start --head --block`` runs in its own process group, so ``down`` stops exactly the Ray
processes this started (never ``ray stop``, which kills every Ray process on the machine).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import platformdirs
from pydantic import BaseModel

from cluster.private_files import ensure_token_file, private_dir


def state_dir() -> Path:
    return private_dir(Path(os.environ.get("HEARTH_STATE_DIR") or platformdirs.user_state_dir("hearth")))


class UpInfo(BaseModel):
    ray_address: str
    api_url: str
    ray_pid: int | None = None
    sidecar_pid: int | None = None
    state_dir: str


def token_path(base: Path | None = None) -> Path:
    return (base or state_dir()) / "token"


def ensure_token(base: Path) -> str:
    return ensure_token_file(token_path(base))


def read_up(base: Path | None = None) -> UpInfo | None:
    path = (base or state_dir()) / "up.json"
    return UpInfo.model_validate_json(path.read_text()) if path.exists() else None


SPAWNED: list[subprocess.Popen[bytes]] = []
"""Children this process started: held so they are reaped (no zombie, no "still running" warning)."""


def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``command`` in its own session, output appended to ``log`` (the child keeps its own copy of the fd)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    SPAWNED[:] = [p for p in SPAWNED if p.poll() is None] + [proc]
    return proc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str, log: Path) -> None:
    from agent import processes  # psutil: only `up` and `down` need it (client commands stay fast)

    if processes.wait_until(predicate, timeout_s, 0.2):
        return
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout_s:.0f} s; last log lines:\n{tail}")


def _healthy(api_url: str, token: str) -> bool:
    try:
        reply = httpx.get(f"{api_url}/v1/health", headers={"Authorization": f"Bearer {token}"}, timeout=2)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200


def up(*, api_port: int = 8765, ray_port: int = 0, slots: int | None = None,
       progress: Callable[[str], None] = print) -> UpInfo:
    """Start (or find) the local head: Ray, the scheduler actor and the sidecar."""
    from agent import processes

    base = state_dir()
    token = ensure_token(base)
    current = read_up(base)
    if current and processes.alive(current.ray_pid) and _healthy(current.api_url, token):
        progress(f"already up: {current.api_url}")
        return current
    if current:
        down(progress=lambda _: None)
    ray_port = ray_port or _free_port()
    slots = slots or os.cpu_count() or 1
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    ray_log = logs / "ray-head.log"
    progress(f"starting Ray head on 127.0.0.1:{ray_port}")
    ray_proc = _spawn(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
         f"--port={ray_port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
         "--disable-usage-stats", f"--num-cpus={slots}", f"--resources={json.dumps({'hearth_slots': slots})}",
         f"--temp-dir={base / 'ray'}"],
        ray_log)
    address = f"127.0.0.1:{ray_port}"

    def ray_ready() -> bool:
        if ray_proc.poll() is not None:
            raise RuntimeError(f"ray start exited ({ray_proc.returncode}); see {ray_log}")
        return "Ray runtime started" in ray_log.read_text(errors="replace")

    _wait(ray_ready, 90, "Ray head", ray_log)
    api_url = f"http://127.0.0.1:{api_port}"
    side_log = logs / "sidecar.log"
    progress(f"starting the scheduler and the sidecar on {api_url}")
    side_proc = _spawn(
        [sys.executable, "-m", "cluster.api", "--address", address, "--state-dir", str(base),
         "--port", str(api_port)],
        side_log)
    info = UpInfo(ray_address=address, api_url=api_url, ray_pid=ray_proc.pid, sidecar_pid=side_proc.pid,
                  state_dir=str(base))
    (base / "up.json").write_text(info.model_dump_json())

    def sidecar_ready() -> bool:
        if side_proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited ({side_proc.returncode}); see {side_log}")
        return _healthy(api_url, token)

    _wait(sidecar_ready, 90, "sidecar", side_log)
    return info


def down(*, progress: Callable[[str], None] = print) -> None:
    """Stop what ``up`` started, by process group; also the node's embedded model server."""
    from agent import processes

    base = state_dir()
    info = read_up(base)
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
