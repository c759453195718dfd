"""The real embedded model (SmolLM2-135M on node-llama-cpp) through the runtime and OpenAIChat.

Asserts on protocol (tool calls arrive, their arguments parse and fit the schema; one shared server
per node), never on the 135M model solving anything, and never on one CPU's tokens: greedy decoding
differs between x86-64 CPUs (SIMD paths round differently), so the same prompt may give a short call
on one machine and run into ``max_tokens`` on another. What a user relies on is that a reply is
either one complete, schema-valid call or plainly not a call (``finish_reason`` ``length``, no
``tool_calls``), which the agent loop answers with "Reply with exactly one tool call."
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.models import ModelEndpoint, ModelUnavailable
from agent.models.embedded import EmbeddedRuntime
from agent.models.embedded_install import default_app_dir, find_node, gguf_path, npm_deps_ready
from agent.models.openai_chat import OpenAIChat
from agent.processes import alive as pid_alive

pytestmark = [pytest.mark.real_llm, pytest.mark.slow]

NAME = "smollm2-135m"
INSTALL_HINT = "run `hearth model install-embedded` (or bash deploy/setup.sh)"


def _missing() -> str | None:
    try:
        find_node()
    except ModelUnavailable as exc:
        return f"no usable Node.js: {exc}"
    try:
        gguf_path(NAME)
    except ModelUnavailable as exc:
        return f"no GGUF: {exc}"
    if not npm_deps_ready(default_app_dir()):
        return f"node-llama-cpp is not installed in {default_app_dir()}: {INSTALL_HINT}"
    return None


MISSING = _missing()
if MISSING:
    pytest.skip(f"embedded model unavailable: {MISSING}", allow_module_level=True)


def _tool(
    name: str, description: str, properties: dict[str, Any], required: list[str] | None = None
) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties,
        "required": list(properties) if required is None else required, "additionalProperties": False}}}


TEXT = {"type": "string"}
SHELL = _tool("shell", "Run a shell command in the workspace.", {"command": TEXT})
WRITE = _tool("write_file", "Create or overwrite a file.", {"path": TEXT, "content": TEXT})
READ = _tool("read_file", "Read part of a file.",
             {"path": TEXT, "start": {"type": "integer"}, "end": {"type": "integer"}}, required=["path"])
SYSTEM = {"role": "system",
          "content": "You are a careful software engineer. Reply with exactly one tool call."}


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def check_args(arguments: str, tool: dict[str, Any]) -> dict[str, Any]:
    """The arguments parse as a JSON object that fits the tool's (flat) schema."""
    args = json.loads(arguments)
    params = tool["function"]["parameters"]
    assert isinstance(args, dict), arguments
    assert set(params["required"]) <= set(args), f"missing required arguments in {arguments}"
    assert set(args) <= set(params["properties"]), f"unknown arguments in {arguments}"
    python_type = {"string": str, "integer": int, "boolean": bool}
    for key, value in args.items():
        expected = python_type[params["properties"][key]["type"]]
        assert isinstance(value, expected), f"{key}={value!r} is not {expected.__name__}"
    return args


def kill_recorded(runtime: EmbeddedRuntime) -> None:
    """Teardown: release, and kill by pid whatever the state file still names."""
    state = runtime.state(NAME)
    try:
        runtime.release(NAME)
    finally:
        if state is not None and pid_alive(state.pid):
            os.killpg(state.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRuntime]:
    rt = EmbeddedRuntime(tmp_path_factory.mktemp("embedded-state"), auto_install=False, startup_timeout_s=120)
    try:
        yield rt
    finally:
        kill_recorded(rt)


@pytest.fixture(scope="module")
def endpoint(runtime: EmbeddedRuntime) -> ModelEndpoint:
    return runtime.ensure(NAME)


def post(endpoint: ModelEndpoint, body: dict[str, Any]) -> dict[str, Any]:
    url = f"{endpoint.base_url}/chat/completions"
    reply = httpx.post(url, json={"model": endpoint.model, **body}, timeout=180)
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()
    return data


def test_health_and_models(endpoint: ModelEndpoint) -> None:
    assert endpoint.model == NAME
    assert endpoint.base_url.startswith("http://127.0.0.1:")
    root = endpoint.base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/health", timeout=10).json() == {"status": "ok"}
    models = httpx.get(f"{endpoint.base_url}/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [NAME]


def call_or_truncated(data: dict[str, Any], tools: dict[str, dict[str, Any]], max_tokens: int) -> dict[str, Any] | None:
    """The one schema-valid call in a chat completion, or None when the reply is plainly not a call
    because generation hit ``max_tokens`` (never half a call passed off as one)."""
    choice = data["choices"][0]
    if choice["finish_reason"] == "length":
        assert not choice["message"].get("tool_calls"), choice
        assert data["usage"]["completion_tokens"] == max_tokens, data["usage"]
        return None
    assert choice["finish_reason"] == "tool_calls", choice
    assert choice["message"]["content"] == ""
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] in tools
    check_args(call["function"]["arguments"], tools[call["function"]["name"]])
    return dict(call)


def test_forced_tool_call_fits_the_schema(endpoint: ModelEndpoint) -> None:
    data = post(endpoint, {
        "messages": [SYSTEM, {"role": "user", "content": 'Create hello.txt containing "hello world".'}],
        "tools": [SHELL, WRITE], "tool_choice": {"type": "function", "function": {"name": "write_file"}},
        "temperature": 0, "max_tokens": 200})
    call = call_or_truncated(data, {"write_file": WRITE}, 200)
    assert call is None or call["function"]["name"] == "write_file"  # forced means only that tool
    assert data["usage"]["prompt_tokens"] > 0 and data["usage"]["completion_tokens"] > 0
    assert data["timings"]["total_ms"] > 0


def test_optional_arguments_left_out_are_dropped_not_null(endpoint: ModelEndpoint) -> None:
    data = post(endpoint, {
        "messages": [SYSTEM, {"role": "user", "content": "Show me README.md."}],
        "tools": [READ], "tool_choice": {"type": "function", "function": {"name": "read_file"}},
        "temperature": 0, "max_tokens": 200})
    call = call_or_truncated(data, {"read_file": READ}, 200)
    if call is not None:
        assert None not in json.loads(call["function"]["arguments"]).values()


@pytest.mark.parametrize("task", [
    'Create hello.txt containing "hello world".',
    "List the files in the workspace.",
    "Run the tests with python3 -m pytest.",
])
def test_auto_tool_choice_gives_one_valid_call_or_a_plain_truncation(endpoint: ModelEndpoint, task: str) -> None:
    tools = {"shell": SHELL, "write_file": WRITE}
    with OpenAIChat(endpoint, max_tokens=200) as chat:
        reply = chat.complete([SYSTEM, {"role": "user", "content": task}], list(tools.values()))
    call_or_truncated(reply.raw, tools, 200)
    # A truncated reply reaches the agent loop as no call (or a call salvaged whole from the text):
    # the loop counts a format error and asks again, the path
    # tests/test_loop.py::test_malformed_calls_get_errors_back_not_crashes drives.
    assert len(reply.tool_calls) <= 1
    for call in reply.tool_calls:
        assert call.name in tools
        check_args(call.arguments, tools[call.name])


def test_a_conversation_with_tool_results_still_gets_a_tool_call(endpoint: ModelEndpoint) -> None:
    task = {"role": "user", "content": "Make hello.txt say hi, then check it."}
    messages: list[dict[str, Any]] = [SYSTEM, task]
    with OpenAIChat(endpoint, max_tokens=200) as chat:
        for _ in range(3):
            reply = chat.complete(messages, [SHELL, WRITE])
            if not reply.tool_calls:  # ran into max_tokens: answer as the agent loop does
                assert reply.raw["choices"][0]["finish_reason"] == "length"
                messages.append({"role": "assistant", "content": reply.content})
                messages.append({"role": "user", "content": "Reply with exactly one tool call."})
                continue
            [call] = reply.tool_calls
            check_args(call.arguments, {"shell": SHELL, "write_file": WRITE}[call.name])
            function = {"name": call.name, "arguments": call.arguments}
            messages.append({"role": "assistant", "content": None,
                             "tool_calls": [{"id": call.id, "type": "function", "function": function}]})
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "ok"})
    ids = [m["tool_calls"][0]["id"] for m in messages if m.get("tool_calls")]
    assert len(set(ids)) == len(ids)  # every call the server made has its own id


def test_plain_text_and_json_schema_replies(endpoint: ModelEndpoint) -> None:
    text = post(endpoint, {"messages": [{"role": "user", "content": "Say hello."}],
                           "temperature": 0, "max_tokens": 16})
    assert text["choices"][0]["finish_reason"] in {"stop", "length"}
    assert "tool_calls" not in text["choices"][0]["message"]
    assert 0 < text["usage"]["completion_tokens"] <= 16
    schema = {"type": "object", "properties": {"name": TEXT, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}
    data = post(endpoint, {"messages": [{"role": "user", "content": "Describe a person as JSON."}],
                           "response_format": response_format, "temperature": 0, "max_tokens": 100})
    if data["choices"][0]["finish_reason"] != "length":  # a truncated object cannot parse
        person = json.loads(data["choices"][0]["message"]["content"])
        assert isinstance(person["name"], str) and isinstance(person["age"], int)


def test_bad_requests_are_4xx(endpoint: ModelEndpoint) -> None:
    url = f"{endpoint.base_url}/chat/completions"
    assert httpx.post(url, json={"messages": []}, timeout=10).status_code == 400
    unknown = {"messages": [{"role": "user", "content": "x"}], "tools": [SHELL],
               "tool_choice": {"type": "function", "function": {"name": "nope"}}}
    assert httpx.post(url, json=unknown, timeout=10).status_code == 400
    too_long = {"messages": [{"role": "user", "content": "word " * 6000}]}
    reply = httpx.post(url, json=too_long, timeout=60)
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "context_length_exceeded"


def test_a_second_runtime_object_reuses_the_server(runtime: EmbeddedRuntime, endpoint: ModelEndpoint) -> None:
    first = runtime.state(NAME)
    assert first is not None and pid_alive(first.pid)
    other = EmbeddedRuntime(runtime.state_dir, auto_install=False)
    assert other.ensure(NAME) == endpoint
    assert other.last_cold_start_s is None  # nothing was started
    second = other.state(NAME)
    assert second is not None and second.pid == first.pid
    [loaded] = other.loaded()
    assert (loaded.name, loaded.pid, loaded.endpoint) == (NAME, first.pid, endpoint)


def test_release_stops_the_server(tmp_path: Path) -> None:
    rt = EmbeddedRuntime(tmp_path / "state", auto_install=False, warm_up=False)
    try:
        endpoint = rt.ensure(NAME)
        state = rt.state(NAME)
        assert state is not None and pid_alive(state.pid)
        assert rt.last_cold_start_s is not None and rt.last_cold_start_s > 0
        assert rt.loaded()[0].endpoint == endpoint
        rt.release(NAME)
        wait_until(lambda: not pid_alive(state.pid), 10, f"server pid {state.pid} to exit")
        assert rt.state(NAME) is None
        assert rt.loaded() == []
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{endpoint.base_url}/models", timeout=2)
    finally:
        kill_recorded(rt)


def test_unknown_model_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="no embedded model"):
        EmbeddedRuntime(tmp_path).ensure("gpt-5")
