"""``ChatModel`` over any OpenAI-compatible ``/chat/completions`` server (httpx, no SDK).

Tolerant of what local servers actually send back:

* tool calls without ids get ``call_<n>`` (unique per client);
* ``arguments`` given as an object instead of a JSON string are serialised;
* no ``tool_calls`` but a JSON action in the content (``{"tool": name, ...args}``,
  ``{"tool": name, "args": {...}}`` or ``{"name": name, "arguments": {...}}``, bare or in a
  fenced block, possibly with raw newlines inside strings) becomes a tool call: the
  *JSON-action fallback*, for servers or models that do not emit tool calls;
* one retry when the connection drops (a keep-alive socket closed under us) or is refused.

Outgoing assistant messages carry ``content: ""`` rather than ``null`` (llama-cpp-python rejects null).
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import httpx
from pydantic import BaseModel

from agent.models.base import (
    ChatReply,
    ModelEndpoint,
    ModelError,
    ModelLimits,
    ModelReplyError,
    ModelUnavailable,
    ToolCall,
    Usage,
)

_FENCED = re.compile(r"```[ \t]*(?:json|JSON|javascript|js)?[ \t]*\n?(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder(strict=False)
_NESTED_ARG_KEYS = ("args", "arguments", "parameters", "input")
_META_KEYS = {"tool", "thought", "reasoning", *_NESTED_ARG_KEYS}


class OpenAIChat:
    """One chat-completion turn with tools against ``endpoint`` (``base_url`` ends in ``/v1``)."""

    def __init__(
        self,
        endpoint: ModelEndpoint,
        *,
        timeout_s: float = 120.0,
        temperature: float = 0.0,
        limits: ModelLimits | None = None,
        max_tokens: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``max_tokens`` overrides ``limits.max_output_tokens`` (a shorthand for one-off clients)."""
        self.endpoint = endpoint
        self.name = endpoint.model
        self.temperature = temperature
        self.limits = limits or ModelLimits()
        if max_tokens is not None:
            self.limits = self.limits.model_copy(update={"max_output_tokens": max_tokens})
        self.url = endpoint.base_url.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            transport=transport,
            headers=headers,
        )
        self._ids = itertools.count(1)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 *, temperature: float | None = None, max_tokens: int | None = None) -> ChatReply:
        payload: dict[str, Any] = {
            "model": self.endpoint.model,
            "messages": [_outgoing(m) for m in messages],
            "temperature": self.temperature if temperature is None else temperature,
            "max_tokens": max_tokens or self.limits.max_output_tokens,
        }
        if tools:
            payload["tools"] = tools
            payload["tool_choice"] = "auto"  # llama-cpp-python ignores tools unless this is explicit
        data = self._post(payload)
        return self.parse_reply(data, tool_names={_tool_name(t) for t in tools} - {""})

    def _send(self, payload: dict[str, Any]) -> httpx.Response:
        try:
            return self._client.post(self.url, json=payload)
        except (httpx.ConnectError, httpx.RemoteProtocolError):
            pass  # retry once: a pooled keep-alive socket closed under us, or the server was restarting
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        try:
            return self._client.post(self.url, json=payload)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc

    def _transport_error(self, exc: httpx.HTTPError) -> ModelError:
        if isinstance(exc, httpx.ConnectError):
            return ModelUnavailable(f"{self.url}: cannot connect: {exc}")
        if isinstance(exc, httpx.RemoteProtocolError):
            return ModelUnavailable(f"{self.url}: the server dropped the connection: {exc}")
        if isinstance(exc, httpx.TimeoutException):
            return ModelReplyError(f"{self.url}: no reply in time ({type(exc).__name__})")
        return ModelReplyError(f"{self.url}: {type(exc).__name__}: {exc}")

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        response = self._send(payload)
        if response.status_code >= 400:
            raise ModelReplyError(
                f"{self.url} answered HTTP {response.status_code}: {_excerpt(response.text)}"
            )
        try:
            data = response.json()
        except ValueError:
            raise ModelReplyError(
                f"{self.url} answered HTTP {response.status_code} with something that is not JSON: "
                f"{_excerpt(response.text)}"
            ) from None
        if not isinstance(data, dict):
            raise ModelReplyError(
                f"{self.url} answered JSON that is not a chat completion: {_excerpt(response.text)}"
            )
        return data

    def parse_reply(self, data: dict[str, Any], *, tool_names: set[str] | None = None) -> ChatReply:
        """A ``ChatReply`` from a chat-completion body (see the module docstring for the tolerances)."""
        choices = data.get("choices")
        if isinstance(data.get("error"), dict | str) and not choices:
            raise ModelReplyError(f"{self.url} answered an error: {_excerpt(json.dumps(data['error']))}")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ModelReplyError(f"{self.url} answered without choices: {_excerpt(json.dumps(data))}")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise ModelReplyError(
                f"{self.url} answered a choice without a message: {_excerpt(json.dumps(data))}"
            )
        content = _text(message.get("content"))
        raw_calls = message.get("tool_calls") or []
        if not raw_calls and isinstance(message.get("function_call"), dict):  # the pre-tools API
            raw_calls = [{"function": message["function_call"]}]
        calls: list[ToolCall] = []
        for raw in raw_calls if isinstance(raw_calls, list) else []:
            call = self._tool_call(raw)
            if call is not None:
                calls.append(call)
        if not calls and tool_names:
            action = parse_json_action(content, tool_names)
            if action is not None:
                name, args = action
                calls.append(ToolCall(id=self._new_id(), name=name, arguments=json.dumps(args)))
        finish = choices[0].get("finish_reason")
        return ChatReply(content=content, tool_calls=calls, raw=data, usage=_usage(data.get("usage")),
                         finish_reason=finish if isinstance(finish, str) else "")

    def _new_id(self) -> str:
        return f"call_{next(self._ids)}"

    def _tool_call(self, raw: Any) -> ToolCall | None:
        if not isinstance(raw, dict):
            return None
        nested = raw.get("function")
        fn: dict[str, Any] = nested if isinstance(nested, dict) else raw
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            return None
        arguments = fn.get("arguments", fn.get("parameters"))
        if arguments is None:
            arguments = "{}"
        elif not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        call_id = raw.get("id")
        return ToolCall(id=call_id if isinstance(call_id, str) and call_id else self._new_id(),
                        name=name, arguments=arguments)


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    numbers = {k: raw.get(k) for k in ("prompt_tokens", "completion_tokens")}
    return Usage(**{k: v for k, v in numbers.items() if isinstance(v, int) and v >= 0})


def _tool_name(tool: dict[str, Any]) -> str:
    fn = tool.get("function")
    name = fn.get("name") if isinstance(fn, dict) else tool.get("name")
    return name if isinstance(name, str) else ""


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p if isinstance(p, str) else str(p.get("text", "")) for p in content
                       if isinstance(p, str | dict))
    return json.dumps(content)


def _excerpt(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _outgoing(message: dict[str, Any]) -> dict[str, Any]:
    out = dict(message)
    if out.get("role") == "assistant":
        if out.get("content") is None:
            out["content"] = ""
        calls = out.get("tool_calls")
        if isinstance(calls, list):
            out["tool_calls"] = [_outgoing_call(c) for c in calls]
            if not out["tool_calls"]:
                del out["tool_calls"]
    return out


def _outgoing_call(call: Any) -> Any:
    if isinstance(call, ToolCall):
        function = {"name": call.name, "arguments": call.arguments}
        return {"id": call.id, "type": "function", "function": function}
    if isinstance(call, BaseModel):
        return call.model_dump()
    return call


# ---------------------------------------------------------------------------------------------
# The JSON-action fallback


def _json_objects(text: str) -> list[Any]:
    """Every JSON value that parses at a ``{`` in ``text`` (outermost first), lenient about raw newlines."""
    stripped = text.strip()
    try:
        return [json.loads(stripped, strict=False)]
    except ValueError:
        pass
    found: list[Any] = []
    end = 0
    for match in re.finditer(r"\{", text):
        if match.start() < end:
            continue  # inside an object already found
        try:
            value, end = _DECODER.raw_decode(text, match.start())
        except ValueError:
            continue
        found.append(value)
    return found


def _as_action(value: Any, tool_names: set[str] | None) -> tuple[str, dict[str, Any]] | None:
    if not isinstance(value, dict):
        return None
    name: Any = None
    args: Any = None
    if isinstance(value.get("tool"), str):
        name = value["tool"]
        nested = [k for k in _NESTED_ARG_KEYS if k in value]
        if len(nested) == 1 and set(value) <= _META_KEYS:
            args = value[nested[0]]
        else:
            args = {k: v for k, v in value.items() if k != "tool"}
    elif isinstance(value.get("name"), str) and any(k in value for k in ("arguments", "parameters")):
        name = value["name"]
        args = value.get("arguments", value.get("parameters"))
    elif isinstance(value.get("function"), dict):
        return _as_action(value["function"], tool_names)
    if name is None:
        return None
    if isinstance(args, str):
        try:
            args = json.loads(args, strict=False)
        except ValueError:
            return None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    if tool_names is not None and name not in tool_names:
        return None
    return name, args


def parse_json_action(text: str, tool_names: set[str] | None = None) -> tuple[str, dict[str, Any]] | None:
    """``(tool name, arguments)`` from a JSON action in ``text``, or None.

    Looks in fenced blocks first, then the whole text, then any ``{...}`` inside it. With
    ``tool_names``, only actions that name one of those tools count.
    """
    if "{" not in text:
        return None
    candidates = [m.group(1) for m in _FENCED.finditer(text)] + [text]
    for candidate in candidates:
        for value in _json_objects(candidate):
            action = _as_action(value, tool_names)
            if action is not None:
                return action
    return None
