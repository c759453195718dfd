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

The local CPU engine for tests and GPU-less nodes is ``hearth/llamacpp-cpu``
(``agent.models.llamacpp_image``).

    hearth model build-image|ensure NAME|release NAME|loaded|check
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import filelock
import httpx
from pydantic import BaseModel

from agent import processes
from agent.models.base import LoadedModel, ModelEndpoint, ModelUnavailable
from agent.models.catalogue import (
    Catalogue,
    ContainerSpec,
    ModelEntry,
    container_spec,
    default_catalogue_path,
    load_catalogue,
)
from agent.models.gpu_memory import nvml_gpus, nvml_used_by
from agent.models.llamacpp_image import LOCAL_IMAGE, LOCAL_MODEL, docker_client, local_entry

Progress = Callable[[str], None]

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


def _logs(container: Any, lines: int = LOG_LINES) -> str:
    try:
        text = container.logs(tail=lines).decode(errors="replace").strip()
    except Exception as exc:
        return f"(no logs: {exc})"
    return text or "(no output)"


def _discarded(container: Any, entry: ModelEntry, what: str) -> ModelUnavailable:
    """Remove a container that failed to start; the error says what happened, with its last logs."""
    logs = _logs(container)
    with contextlib.suppress(Exception):
        container.remove(force=True)
    return ModelUnavailable(f"model {entry.name!r}: container {container.name} {what}; its last log lines:\n{logs}")


def _host_port(container: Any, container_port: int) -> int | None:
    ports = (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for binding in ports.get(f"{container_port}/tcp") or []:
        if binding.get("HostPort"):
            return int(binding["HostPort"])
    return None




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
        from agent.models.embedded_install import default_state_dir

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
            self._client = docker_client()
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
            found = nvml_gpus()
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
                f"(pull it, or for {LOCAL_IMAGE} run `hearth model build-image`)"
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
        found: list[ModelEndpoint] = []

        def healthy() -> bool:
            container.reload()
            if container.status in ("exited", "dead"):
                code = (container.attrs.get("State") or {}).get("ExitCode")
                raise _discarded(container, entry, f"exited with code {code} while starting")
            endpoint = self._endpoint(container)
            if endpoint is not None and self._healthy(endpoint, spec.health_path):
                found.append(endpoint)
                return True
            return False

        remaining = (started or time.monotonic()) + self.startup_timeout_s - time.monotonic()
        if not processes.wait_until(healthy, remaining, 0.1):
            raise _discarded(container, entry,
                             f"was not healthy on {spec.health_path} within {self.startup_timeout_s:.0f} s")
        if entry.engine == "ollama":
            self._ollama_load(found[0], entry)
        return found[0]

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
        return nvml_used_by(pids)


def _lock_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]


# -- the local CPU engine ----------------------------------------------------------------------------


