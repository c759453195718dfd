"""OpenAIChat against canned server replies (httpx.MockTransport): fast, no server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from agent.models import ModelEndpoint, ModelReplyError, ModelUnavailable, ToolCall
from agent.models.openai_chat import OpenAIChat, parse_json_action

ENDPOINT = ModelEndpoint(base_url="http://model.test/v1", model="m")
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "shell", "description": "run a command", "parameters": {
        "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}},
    {"type": "function", "function": {"name": "write_file", "description": "write a file", "parameters": {
        "type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        "required": ["path", "content"]}}},
]
USER = [{"role": "user", "content": "make hello.txt"}]


def completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}]}


class Server:
    """Records requests; answers each with the next canned reply (a dict, a Response or an exception)."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert str(request.url) == "http://model.test/v1/chat/completions"
        self.requests.append(json.loads(request.content))
        self.headers.append(request.headers)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, httpx.Response):
            return reply
        return httpx.Response(200, json=reply)

    def chat(self, endpoint: ModelEndpoint = ENDPOINT, **kwargs: Any) -> OpenAIChat:
        return OpenAIChat(endpoint, transport=httpx.MockTransport(self), **kwargs)


def test_tool_call_reply_and_request_shape() -> None:
    function = {"name": "shell", "arguments": '{"command": "ls"}'}
    call = {"id": "call_a", "type": "function", "function": function}
    server = Server(completion({"content": None, "tool_calls": [call]}, "tool_calls"))
    chat = server.chat(temperature=0.2, max_tokens=64)
    reply = chat.complete(USER, TOOLS)
    assert chat.name == "m"
    assert reply.tool_calls == [ToolCall(id="call_a", name="shell", arguments='{"command": "ls"}')]
    assert reply.content == ""
    assert reply.raw["choices"][0]["finish_reason"] == "tool_calls"
    sent = server.requests[0]
    assert sent["model"] == "m"
    assert sent["tools"] == TOOLS
    assert sent["tool_choice"] == "auto"
    assert sent["temperature"] == 0.2
    assert sent["max_tokens"] == 64
    assert sent["messages"] == USER


def test_no_tools_sends_no_tool_choice() -> None:
    server = Server(completion({"content": "hello"}))
    reply = server.chat().complete(USER, [])
    assert reply.content == "hello"
    assert reply.tool_calls == []
    assert "tools" not in server.requests[0]
    assert "tool_choice" not in server.requests[0]


def test_assistant_messages_go_out_with_empty_content_not_null() -> None:
    server = Server(completion({"content": "ok"}))
    history: list[dict[str, Any]] = [*USER,
               {"role": "assistant", "content": None, "tool_calls": [
                   ToolCall(id="call_1", name="shell", arguments='{"command": "ls"}')]},
               {"role": "tool", "tool_call_id": "call_1", "content": "README.md"}]
    server.chat().complete(history, TOOLS)
    sent = server.requests[0]["messages"]
    assert sent[1]["content"] == ""
    assert sent[1]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "shell", "arguments": '{"command": "ls"}'}}]
    assert sent[2] == history[2]
    assert history[1]["content"] is None  # the caller's messages are not changed


def test_missing_ids_and_object_arguments_are_filled_in() -> None:
    server = Server(completion({"content": "", "tool_calls": [
        {"type": "function", "function": {"name": "shell", "arguments": {"command": "ls"}}},
        {"id": "", "function": {"name": "write_file", "arguments": '{"path": "a", "content": "b"}'}},
        {"function": {"name": "shell"}},
        {"function": {"arguments": "{}"}},  # no name: dropped
    ]}))
    reply = server.chat().complete(USER, TOOLS)
    assert [(c.id, c.name) for c in reply.tool_calls] == [
        ("call_1", "shell"), ("call_2", "write_file"), ("call_3", "shell")]
    assert json.loads(reply.tool_calls[0].arguments) == {"command": "ls"}
    assert reply.tool_calls[2].arguments == "{}"


def test_generated_ids_stay_unique_across_turns() -> None:
    call = {"function": {"name": "shell", "arguments": '{"command": "ls"}'}}
    server = Server(completion({"tool_calls": [call]}), completion({"tool_calls": [call]}))
    chat = server.chat()
    first, second = chat.complete(USER, TOOLS), chat.complete(USER, TOOLS)
    assert first.tool_calls[0].id != second.tool_calls[0].id


def test_legacy_function_call_is_a_tool_call() -> None:
    legacy = {"name": "shell", "arguments": '{"command": "pwd"}'}
    server = Server(completion({"content": None, "function_call": legacy}))
    reply = server.chat().complete(USER, TOOLS)
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [("shell", {"command": "pwd"})]


@pytest.mark.parametrize(("content", "name", "args"), [
    ('{"tool": "shell", "command": "ls -la"}', "shell", {"command": "ls -la"}),
    ('  {"tool": "write_file", "args": {"path": "hello.txt", "content": "hi"}, "thought": "t"}\n',
     "write_file", {"path": "hello.txt", "content": "hi"}),
    ('{"name": "shell", "arguments": {"command": "ls"}}', "shell", {"command": "ls"}),
    ('{"name": "shell", "arguments": "{\\"command\\": \\"ls\\"}"}', "shell", {"command": "ls"}),
    ('I will write it.\n```json\n{"tool": "write_file", "path": "a.txt", "content": "line1\nline2"}\n```\n'
     "Done.",
     "write_file", {"path": "a.txt", "content": "line1\nline2"}),
    ('```\n{"tool": "shell", "command": "echo hi"}\n```', "shell", {"command": "echo hi"}),
    ('Sure: {"tool": "shell", "command": "make test"} and then we see.', "shell", {"command": "make test"}),
    ('{"function": {"name": "shell", "arguments": {"command": "id"}}}', "shell", {"command": "id"}),
])
def test_json_action_fallback_in_content(content: str, name: str, args: dict[str, Any]) -> None:
    server = Server(completion({"content": content}))
    reply = server.chat().complete(USER, TOOLS)
    assert len(reply.tool_calls) == 1
    call = reply.tool_calls[0]
    assert call.name == name
    assert json.loads(call.arguments) == args
    assert call.id.startswith("call_")
    assert reply.content == content  # the text is kept as the model wrote it


@pytest.mark.parametrize("content", [
    "I would run ls.",
    '{"tool": "rm_rf", "path": "/"}',  # not one of the tools
    '{"name": "Felix", "species": "cat"}',
    '{"tool": "shell", "command": ',  # truncated
    "",
])
def test_json_action_fallback_ignores_what_is_not_an_action(content: str) -> None:
    server = Server(completion({"content": content}))
    assert server.chat().complete(USER, TOOLS).tool_calls == []


def test_json_action_fallback_needs_tools() -> None:
    server = Server(completion({"content": '{"tool": "shell", "command": "ls"}'}))
    assert server.chat().complete(USER, []).tool_calls == []
    assert parse_json_action('{"tool": "anything", "x": 1}') == ("anything", {"x": 1})


def test_real_tool_calls_win_over_content() -> None:
    content = '{"tool": "write_file", "path": "a", "content": "b"}'
    calls = [{"id": "c", "function": {"name": "shell", "arguments": "{}"}}]
    server = Server(completion({"content": content, "tool_calls": calls}))
    reply = server.chat().complete(USER, TOOLS)
    assert [c.name for c in reply.tool_calls] == ["shell"]


@pytest.mark.parametrize("status", [400, 404, 500, 503])
def test_http_errors_raise_with_status_and_body(status: int) -> None:
    body = {"error": {"message": f"boom {status}", "type": "server_error"}}
    server = Server(httpx.Response(status, json=body))
    with pytest.raises(ModelReplyError, match=rf"HTTP {status}.*boom {status}"):
        server.chat().complete(USER, TOOLS)


def test_long_error_bodies_are_cut() -> None:
    server = Server(httpx.Response(500, text="x" * 5000))
    with pytest.raises(ModelReplyError) as caught:
        server.chat().complete(USER, TOOLS)
    assert len(str(caught.value)) < 700


@pytest.mark.parametrize("reply", [
    httpx.Response(200, text="<html>not json</html>"),
    httpx.Response(200, json=["a", "list"]),
    httpx.Response(200, json={"object": "list", "data": []}),
    httpx.Response(200, json={"choices": []}),
    httpx.Response(200, json={"choices": [{"index": 0}]}),
    httpx.Response(200, json={"error": "model not loaded"}),
])
def test_non_chat_replies_raise(reply: httpx.Response) -> None:
    with pytest.raises(ModelReplyError, match=r"http://model\.test/v1/chat/completions"):
        Server(reply).chat().complete(USER, TOOLS)


@pytest.mark.parametrize("error", [
    httpx.RemoteProtocolError("Server disconnected without sending a response."),
    httpx.ConnectError("connection refused"),
])
def test_one_retry_on_dropped_or_refused_connection(error: Exception) -> None:
    server = Server(error, completion({"content": "ok"}))
    assert server.chat().complete(USER, TOOLS).content == "ok"
    assert len(server.requests) == 2


@pytest.mark.parametrize(("errors", "expected"), [
    ((httpx.RemoteProtocolError("gone"), httpx.RemoteProtocolError("gone")), ModelUnavailable),  # a crash
    ((httpx.ConnectError("refused"), httpx.ConnectError("refused")), ModelUnavailable),
    ((httpx.ReadTimeout("slow"),), ModelReplyError),
])
def test_transport_failures_become_model_errors(
    errors: tuple[Exception, ...], expected: type[Exception]
) -> None:
    server = Server(*errors)
    with pytest.raises(expected):
        server.chat().complete(USER, TOOLS)
    assert len(server.requests) == len(errors)  # timeouts are not retried


def test_api_key_is_sent_as_bearer_token() -> None:
    server = Server(completion({"content": "ok"}), completion({"content": "ok"}))
    server.chat(ModelEndpoint(base_url="http://model.test/v1/", model="m", api_key="sk-1")).complete(USER, [])
    assert server.headers[0]["authorization"] == "Bearer sk-1"
    server.chat().complete(USER, [])
    assert "authorization" not in server.headers[1]


def test_chat_model_for_openai_spec() -> None:
    from agent.models import chat_model_for

    model = chat_model_for("openai:http://model.test/v1#qwen")
    assert isinstance(model, OpenAIChat)
    assert model.name == "qwen"
    assert model.url == "http://model.test/v1/chat/completions"
    model.close()

