"""The model catalogue: which models a node can serve in Docker, and the container each one gets.

``models.toml`` (a path given, else ``<state_dir>/models.toml``)::

    model_cache = "/srv/models"          # default host dir mounted read-only into every container

    [models.qwen2.5-coder-7b]
    engine = "vllm"                      # vllm | ollama | llamacpp | sglang
    model = "Qwen/Qwen2.5-Coder-7B-Instruct"
    params_b = 7.6                       # VRAM estimate inputs (or give vram_mib outright)
    layers = 28
    kv_heads = 4
    head_dim = 128
    context = 16384
    max_output_tokens = 4096             # per reply; the loop keeps prompt + reply within context
    tool_parser = "hermes"

    [models.qwen-on-my-server]           # a server you already run: no container is started
    engine = "vllm"
    model = "Qwen/Qwen2.5-Coder-32B-Instruct"
    base_url = "http://10.0.0.5:8000/v1"
    vram_mib = 0
    context = 32768

Unknown keys are errors that name the key (``models.qwen.contxt: unknown key``).

VRAM (``vram_mib`` when given, else estimated, MiB = 2**20 bytes)::

    weights = weights_mib, or params_b * 1e9 * bytes_per_weight
    kv      = 2 * layers * kv_heads * head_dim * kv_bytes * context * parallel
    need    = weights + kv + overhead_mib (engine default: llama.cpp/ollama 512, vLLM/SGLang 2048)

``container_spec(entry, gpus=[...], node=...)`` gives the exact ``docker run`` of one model:
engine image and port, command line (served name, context, parallel slots, tool-call parser:
vLLM ``--enable-auto-tool-choice --tool-call-parser P``, SGLang ``--tool-call-parser P``,
llama.cpp ``--jinja``; Ollama needs none), ``HF_HUB_OFFLINE=1``, the model cache read-only, shared
memory for vLLM/SGLang, a ``DeviceRequest`` for exactly the chosen GPUs, the port published on
127.0.0.1 (the engine picks the host port), and labels ``hearth.model``, ``hearth.vram_mib``,
``hearth.node`` (plus engine, GPUs and a hash of the spec, so a changed entry is noticed).
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.models.base import ModelLimits, ModelUnavailable

Engine = Literal["vllm", "ollama", "llamacpp", "sglang"]
MIB = 2**20
LABEL_PREFIX = "hearth."


class CatalogueError(ModelUnavailable):
    """models.toml is missing, unreadable or invalid."""


class EngineDefaults(BaseModel):
    model_config = ConfigDict(frozen=True)

    image: str
    port: int
    health_path: str
    cache_mount: str
    """Where the model cache is mounted in the container."""
    overhead_mib: int


ENGINES: dict[str, EngineDefaults] = {
    "vllm": EngineDefaults(image="vllm/vllm-openai:latest", port=8000, health_path="/health",
                           cache_mount="/root/.cache/huggingface", overhead_mib=2048),
    "sglang": EngineDefaults(image="lmsysorg/sglang:latest", port=30000, health_path="/health",
                             cache_mount="/root/.cache/huggingface", overhead_mib=2048),
    "llamacpp": EngineDefaults(image="ghcr.io/ggml-org/llama.cpp:server-cuda", port=8080, health_path="/health",
                               cache_mount="/models", overhead_mib=512),
    "ollama": EngineDefaults(image="ollama/ollama:latest", port=11434, health_path="/api/version",
                             cache_mount="/root/.ollama/models", overhead_mib=512),
}


class ModelEntry(BaseModel):
    """One ``[models.<name>]`` table."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    """The table's key (filled in by the loader)."""
    engine: Engine
    model: str = Field(description="HF id or path in the cache (vLLM/SGLang), GGUF path (llama.cpp), tag (Ollama)")
    image: str | None = None
    served_name: str | None = None
    """What /v1/models reports and requests name; default: the entry's name (Ollama: the tag)."""
    vram_mib: int | None = Field(default=None, ge=0)
    params_b: float | None = Field(default=None, gt=0, description="parameters, in billions")
    bytes_per_weight: float = Field(default=2.0, gt=0, description="bf16 2, fp8/int8 1, 4-bit about 0.56")
    weights_mib: int | None = Field(default=None, ge=0, description="instead of params_b: e.g. the GGUF size")
    layers: int | None = Field(default=None, gt=0)
    kv_heads: int | None = Field(default=None, gt=0)
    head_dim: int | None = Field(default=None, gt=0)
    kv_bytes: float = Field(default=2.0, gt=0, description="fp16 KV 2, fp8/q8_0 1")
    context: int = Field(default=8192, gt=0, description="tokens per sequence")
    max_output_tokens: int = Field(default=2048, ge=16, description="most tokens one reply may take")
    prompt: Literal["capable", "tiny"] = "capable"
    """The agent loop's prompt and tool set: ``capable`` for coder models (7B and up), ``tiny`` for
    very small ones that need one simple call a turn."""
    base_url: str | None = None
    """An OpenAI-compatible server that already runs this model (up to and including ``/v1``):
    Hearth starts no container and sends the loop's requests there."""
    api_key: str = ""
    """Bearer token for ``base_url``, if the server wants one."""
    parallel: int = Field(default=1, gt=0, description="sequences served at once (KV slots)")
    overhead_mib: int | None = Field(default=None, ge=0)
    max_concurrent: int | None = Field(default=None, gt=0)
    """Requests the scheduler may send at once; default: ``parallel``."""
    tool_parser: str | None = None
    """vLLM/SGLang tool-call parser (hermes, llama3_json, mistral, qwen25…)."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    """vLLM/SGLang share of the GPU; default: vram_mib / the GPU's memory when that is known."""
    gpus: int = Field(default=1, ge=0, description="GPUs this model needs (tensor parallel for vLLM/SGLang)")
    cpu_only: bool = False
    """No GPU at all (the local test image): no device request, no GPU layers."""
    threads: int | None = Field(default=None, gt=0)
    model_cache: str | None = None
    """Host dir mounted read-only; default: the catalogue's ``model_cache``."""
    port: int | None = Field(default=None, gt=0, lt=65536, description="the engine's port in the container")
    extra_args: list[str] = []
    env: dict[str, str] = {}

    @model_validator(mode="after")
    def _check(self) -> ModelEntry:
        if self.cpu_only and self.engine not in ("llamacpp", "ollama"):
            raise ValueError(f"cpu_only is for llamacpp or ollama, not {self.engine}")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r} is not an http(s) URL")
        if self.context < 512:
            raise ValueError(f"context {self.context} is too small for the agent loop (at least 512 tokens)")
        try:  # the scheduler computes this for every entry: it must be a number
            estimate = self.weights_estimate_mib() + self.kv_cache_mib()
        except OverflowError:
            estimate = math.inf
        if not math.isfinite(estimate):
            raise ValueError("the VRAM estimate is not a finite number: check params_b, bytes_per_weight, "
                             "layers, kv_heads, head_dim, kv_bytes, context and parallel (or give vram_mib)")
        return self

    def limits(self) -> ModelLimits:
        """What the agent loop needs to know: window, reply cap, prompt style."""
        return ModelLimits(context_window=self.context, max_output_tokens=min(self.max_output_tokens,
                           self.context // 2), prompt=self.prompt)

    @property
    def defaults(self) -> EngineDefaults:
        return ENGINES[self.engine]

    @property
    def served(self) -> str:
        if self.served_name:
            return self.served_name
        return self.model if self.engine == "ollama" else self.name

    @property
    def concurrency(self) -> int:
        return self.max_concurrent or self.parallel

    def kv_cache_mib(self) -> float:
        if not (self.layers and self.kv_heads and self.head_dim):
            return 0.0
        per_token = 2 * self.layers * self.kv_heads * self.head_dim * self.kv_bytes
        return per_token * self.context * self.parallel / MIB

    def weights_estimate_mib(self) -> float:
        if self.weights_mib is not None:
            return float(self.weights_mib)
        if self.params_b is not None:
            return self.params_b * 1e9 * self.bytes_per_weight / MIB
        return 0.0

    def estimated_vram_mib(self) -> int:
        """weights + KV cache + overhead, rounded up to whole MiB (0 for cpu_only)."""
        if self.cpu_only:
            return 0
        overhead = self.overhead_mib if self.overhead_mib is not None else self.defaults.overhead_mib
        total = self.weights_estimate_mib() + self.kv_cache_mib() + overhead
        return int(-(-total // 1))

    def vram(self) -> int:
        """The declared figure when given, else the estimate."""
        return self.vram_mib if self.vram_mib is not None else self.estimated_vram_mib()


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_cache: str | None = None
    models: dict[str, ModelEntry] = {}

    @model_validator(mode="after")
    def _names(self) -> Catalogue:
        for name, entry in self.models.items():
            entry.name = name
        return self

    def get(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelUnavailable(f"model {name!r} is not in the catalogue (known: {known})") from None

    def cache_for(self, entry: ModelEntry) -> str | None:
        return entry.model_cache or self.model_cache


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            lines.append(f"{source}: {loc}: unknown key")
        else:
            lines.append(f"{source}: {loc}: {error['msg']}")
    return "\n".join(lines)


def parse_catalogue(data: dict[str, Any], source: str = "models.toml") -> Catalogue:
    try:
        return Catalogue.model_validate(data)
    except ValidationError as exc:
        raise CatalogueError(_format_errors(source, exc)) from None


def default_catalogue_path(state_dir: Path | None = None) -> Path:
    if state_dir is None:
        from agent.models.embedded_install import default_state_dir

        state_dir = default_state_dir()
    return Path(state_dir) / "models.toml"


def load_catalogue(path: Path | None = None, *, state_dir: Path | None = None) -> Catalogue:
    """Read ``path`` (default ``<state_dir>/models.toml``)."""
    path = Path(path) if path is not None else default_catalogue_path(state_dir)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CatalogueError(f"no model catalogue at {path}: add models there (see docs/models.md)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError(f"{path}: {exc}") from None
    return parse_catalogue(data, str(path))


# -- container specs -------------------------------------------------------------------------------


class ContainerSpec(BaseModel):
    """Everything ``docker run`` needs for one model, as data (so it can be checked exactly)."""

    model_config = ConfigDict(frozen=True)

    name: str
    image: str
    command: list[str]
    environment: dict[str, str]
    labels: dict[str, str]
    ports: dict[str, tuple[str, int | None]]
    volumes: dict[str, dict[str, str]]
    device_requests: list[dict[str, Any]]
    ipc_mode: str | None = None
    shm_size: str | None = None
    ulimits: list[dict[str, Any]] = []
    container_port: int
    health_path: str

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``client.containers.run``."""
        from docker.types import DeviceRequest, Ulimit

        kwargs: dict[str, Any] = {
            "image": self.image, "command": self.command or None, "name": self.name, "detach": True,
            "environment": self.environment, "labels": self.labels, "ports": self.ports,
            "volumes": self.volumes,
            "device_requests": [DeviceRequest(**r) for r in self.device_requests] or None,
        }
        if self.ipc_mode:
            kwargs["ipc_mode"] = self.ipc_mode
        if self.shm_size:
            kwargs["shm_size"] = self.shm_size
        if self.ulimits:
            kwargs["ulimits"] = [Ulimit(**u) for u in self.ulimits]
        return kwargs


def container_name(model: str, node: str) -> str:
    """``hearth-model-<model>-<node>``: one per model and node, even on an engine nodes share."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{model}-{node}")[:100]
    return f"hearth-model-{safe}"


def _gpu_share(entry: ModelEntry, gpu_total_mib: int | None) -> str | None:
    if entry.gpu_memory_utilization is not None:
        return f"{entry.gpu_memory_utilization:.2f}"
    if gpu_total_mib and entry.vram() > 0:
        return f"{min(0.95, entry.vram() / gpu_total_mib):.2f}"
    return None


def _command(entry: ModelEntry, port: int, gpus: list[str], gpu_total_mib: int | None) -> list[str]:
    served = entry.served
    model = entry.model
    if entry.engine == "vllm":
        cmd = ["--model", model, "--served-model-name", served, "--host", "0.0.0.0", "--port", str(port),
               "--max-model-len", str(entry.context), "--max-num-seqs", str(entry.parallel)]
        if len(gpus) > 1:
            cmd += ["--tensor-parallel-size", str(len(gpus))]
        if (share := _gpu_share(entry, gpu_total_mib)) is not None:
            cmd += ["--gpu-memory-utilization", share]
        if entry.tool_parser:
            cmd += ["--enable-auto-tool-choice", "--tool-call-parser", entry.tool_parser]
        return cmd + entry.extra_args
    if entry.engine == "sglang":
        cmd = ["python3", "-m", "sglang.launch_server", "--model-path", model, "--served-model-name", served,
               "--host", "0.0.0.0", "--port", str(port), "--context-length", str(entry.context),
               "--max-running-requests", str(entry.parallel)]
        if len(gpus) > 1:
            cmd += ["--tp-size", str(len(gpus))]
        if (share := _gpu_share(entry, gpu_total_mib)) is not None:
            cmd += ["--mem-fraction-static", share]
        if entry.tool_parser:
            cmd += ["--tool-call-parser", entry.tool_parser]
        return cmd + entry.extra_args
    if entry.engine == "llamacpp":
        cmd = ["-m", model, "--alias", served, "--host", "0.0.0.0", "--port", str(port),
               "-c", str(entry.context * entry.parallel), "-np", str(entry.parallel), "--jinja"]
        if not entry.cpu_only:
            cmd += ["-ngl", "999"]
        if entry.threads:
            cmd += ["-t", str(entry.threads)]
        return cmd + entry.extra_args
    return list(entry.extra_args)  # ollama: `ollama serve` is the image's default command


def _environment(entry: ModelEntry, port: int) -> dict[str, str]:
    env = {"HF_HUB_OFFLINE": "1"}
    if entry.engine == "ollama":
        env.update({"OLLAMA_HOST": f"0.0.0.0:{port}", "OLLAMA_KEEP_ALIVE": "-1",
                    "OLLAMA_NUM_PARALLEL": str(entry.parallel), "OLLAMA_CONTEXT_LENGTH": str(entry.context),
                    "OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_MODELS": ENGINES["ollama"].cache_mount})
    return {**env, **entry.env}


def spec_hash(entry: ModelEntry, cache: str | None) -> str:
    data = entry.model_dump(mode="json")
    data["_cache"] = cache
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def container_spec(
    entry: ModelEntry,
    *,
    node: str,
    gpus: list[str] | None = None,
    catalogue: Catalogue | None = None,
    gpu_total_mib: int | None = None,
    bind_host: str = "127.0.0.1",
) -> ContainerSpec:
    """The container for ``entry`` on ``node``, pinned to ``gpus`` (GPU indexes or UUIDs)."""
    d = entry.defaults
    gpu_ids = [] if entry.cpu_only else list(gpus or [])
    port = entry.port or d.port
    cache = (catalogue.cache_for(entry) if catalogue else None) or entry.model_cache
    volumes = {cache: {"bind": d.cache_mount, "mode": "ro"}} if cache else {}
    labels = {
        "hearth.model": entry.name, "hearth.vram_mib": str(entry.vram()), "hearth.node": node,
        "hearth.engine": entry.engine, "hearth.gpus": ",".join(gpu_ids), "hearth.port": str(port),
        "hearth.served_name": entry.served, "hearth.spec": spec_hash(entry, cache),
    }
    device_requests = ([{"device_ids": gpu_ids, "capabilities": [["gpu"]]}] if gpu_ids else [])
    shared: dict[str, Any] = {}
    if entry.engine in ("vllm", "sglang"):
        shared["ipc_mode"] = "host"
    if entry.engine == "sglang":
        shared["ulimits"] = [{"name": "memlock", "soft": -1, "hard": -1},
                             {"name": "stack", "soft": 67108864, "hard": 67108864}]
    return ContainerSpec(
        name=container_name(entry.name, node), image=entry.image or d.image,
        command=_command(entry, port, gpu_ids, gpu_total_mib), environment=_environment(entry, port),
        labels=labels, ports={f"{port}/tcp": (bind_host, None)}, volumes=volumes,
        device_requests=device_requests, container_port=port, health_path=d.health_path, **shared,
    )
