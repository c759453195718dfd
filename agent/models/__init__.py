"""Model runtimes and chat clients; ``chat_model_for(spec)`` resolves a model spec string."""

from __future__ import annotations

from pathlib import Path

from agent.models.base import (
    ChatModel,
    ChatReply,
    LoadedModel,
    ModelEndpoint,
    ModelError,
    ModelLimits,
    ModelReplyError,
    ModelRuntime,
    ModelUnavailable,
    ToolCall,
)

__all__ = [
    "ChatModel",
    "ChatReply",
    "LoadedModel",
    "ModelEndpoint",
    "ModelError",
    "ModelLimits",
    "ModelReplyError",
    "ModelRuntime",
    "ModelUnavailable",
    "ToolCall",
    "chat_model_for",
    "split_spec",
]

RUNTIMES = ("embedded", "scripted", "openai", "docker")
EMBEDDED_LIMITS = ModelLimits(context_window=4096, max_output_tokens=512, prompt="tiny")
"""SmolLM2-135M as the embedded server runs it (``--ctx 4096``)."""


def split_spec(spec: str) -> tuple[str, str]:
    runtime, sep, name = spec.partition(":")
    if not sep or runtime not in RUNTIMES or not name:
        raise ModelUnavailable(
            f"model spec {spec!r} is not '<runtime>:<name>' with runtime one of {', '.join(RUNTIMES)}"
        )
    if runtime == "openai" and not name.startswith(("http://", "https://")):
        raise ModelUnavailable(f"model spec {spec!r}: an openai: model is 'openai:http(s)://<host>/v1#<model>'")
    return runtime, name


def chat_model_for(spec: str, *, state_dir: Path | None = None, gpus: list[str] | None = None) -> ChatModel:
    """A chat client for ``spec``, starting the model's server on this node if needed (``docker:``
    models on ``gpus`` when given: the scheduler's choice)."""
    runtime, name = split_spec(spec)
    if runtime == "scripted":
        from agent.models.scripted import scripted_model

        return scripted_model(name)
    from agent.models.openai_chat import OpenAIChat

    if runtime == "openai":
        base_url, _, model = name.partition("#")
        return OpenAIChat(ModelEndpoint(base_url=base_url, model=model or "default"))
    if runtime == "embedded":
        from agent.models.embedded import EmbeddedRuntime

        return OpenAIChat(EmbeddedRuntime(state_dir).ensure(name), limits=EMBEDDED_LIMITS)
    if runtime == "docker":
        from agent.models.docker_runtime import DockerModelRuntime

        with DockerModelRuntime(state_dir=state_dir) as docker_runtime:
            entry = docker_runtime.entry(name)
            if entry.base_url:  # a server the user already runs: nothing to start here
                endpoint = ModelEndpoint(base_url=entry.base_url, model=entry.served, api_key=entry.api_key)
                return OpenAIChat(endpoint, limits=entry.limits())
            return OpenAIChat(docker_runtime.ensure(name, gpus=gpus), limits=entry.limits())
    raise ModelUnavailable(f"model runtime {runtime!r} is not available on this node yet")
