"""Scripted stand-ins for a language model (tests and benchmarks; they are NOT models).

A real model cannot give deterministic answers, so tests of the loop, the runner and the cluster
drive them with these. They speak the same ``ChatModel`` protocol as ``OpenAIChat``:

* ``ScriptedChat(replies)`` — replays a fixed list of replies (strings become JSON-action content,
  dicts become tool calls, lists of dicts become several calls in one reply; a dict may carry
  ``finish_reason``), for unit tests of the loop's edge cases.
* ``scripted:demo`` — follows acceptance criteria of the form ``<file> contains "<text>"`` /
  ``<file> exists``: writes those files, then calls ``step_done``; after a failed check it rereads
  the criteria and tries again.
* ``scripted:ask`` — asks a question first, writes the answer into ``answer.txt``, then works like demo.
* ``scripted:sleep-<seconds>`` — like demo, but first runs ``sleep <seconds>`` in the sandbox (a
  long step, for pre-emption and node-loss tests).
"""

from __future__ import annotations

import json
import re
from typing import Any

from agent.models.base import ChatModel, ChatReply, ModelLimits, ModelUnavailable, ToolCall, Usage

_CONTAINS = re.compile(r"""[`'"]?([\w./-]+\.\w+)[`'"]?\s+(?:contains|containing|with content)\s+["“']([^"”']*)["”']""")
_EXISTS = re.compile(r"""[`'"]?([\w./-]+\.\w+)[`'"]?\s+exists""")


Reply = str | dict[str, Any] | list[dict[str, Any]]


class ScriptedChat:
    """Replays ``replies`` in order; after the last one it keeps sending ``step_done``.

    ``calls`` records every request's messages, ``max_tokens`` every request's cap, so tests can
    assert on exactly what was sent.
    """

    def __init__(self, replies: list[Reply], name: str = "scripted:list",
                 limits: ModelLimits | None = None) -> None:
        self.name = name
        self.limits = limits or ModelLimits()
        self.replies = list(replies)
        self.calls: list[list[dict[str, Any]]] = []
        self.max_tokens: list[int | None] = []

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 *, temperature: float | None = None, max_tokens: int | None = None) -> ChatReply:
        self.calls.append([dict(m) for m in messages])
        self.max_tokens.append(max_tokens)
        reply = self.replies.pop(0) if self.replies else {"name": "step_done", "arguments": {"summary": "done"}}
        return scripted_reply(reply, messages)


def scripted_reply(reply: Reply, messages: list[dict[str, Any]] | None = None) -> ChatReply:
    """A ``ChatReply`` from a script item, with a rough token count so accounting has numbers."""
    prompt = sum(len(str(m.get("content") or "")) for m in messages or []) // 4
    if isinstance(reply, str):
        return ChatReply(content=reply, finish_reason="stop",
                         usage=Usage(prompt_tokens=prompt, completion_tokens=len(reply) // 4 + 1))
    items = reply if isinstance(reply, list) else [reply]
    calls = []
    for item in items:
        args = item.get("arguments", {})
        raw_args = args if isinstance(args, str) else json.dumps(args)
        calls.append(ToolCall(id=str(item.get("id", "")), name=str(item["name"]), arguments=raw_args))
    finish = next((str(i["finish_reason"]) for i in items if "finish_reason" in i), "tool_calls")
    size = sum(len(c.arguments) for c in calls) // 4 + 1
    return ChatReply(tool_calls=calls, finish_reason=finish,
                     usage=Usage(prompt_tokens=prompt, completion_tokens=size))


def _call(name: str, **args: Any) -> ChatReply:
    return scripted_reply({"name": name, "arguments": args})


class RuleFollower:
    """Writes the files the acceptance criteria name, then says the step is done."""

    def __init__(self, name: str, *, ask_first: bool = False, sleep_s: float = 0.0) -> None:
        self.name = name
        self.limits = ModelLimits(context_window=4096, max_output_tokens=512, prompt="tiny")
        self.ask_first = ask_first
        self.sleep_s = sleep_s

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 *, temperature: float | None = None, max_tokens: int | None = None) -> ChatReply:
        story = next(m["content"] for m in messages if m["role"] == "user")
        done_tools = [
            c["function"]["name"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls", [])
        ]
        last = messages[-1]
        if self.ask_first and "ask_user" not in done_tools:
            return _call("ask_user", question="What should answer.txt say?")
        if self.ask_first and "ask_user" in done_tools and "answer.txt" not in _written(messages):
            answer = next(
                m["content"] for m in messages if m["role"] == "tool" and m["content"].startswith("Answer from")
            )
            return _call("write_file", path="answer.txt", content=answer.split(": ", 1)[1])
        if self.sleep_s and "shell" not in done_tools:
            return _call("shell", command=f"sleep {self.sleep_s}")
        wanted = _wanted_files(story)
        written = _written(messages)
        if last["role"] == "tool" and last["content"].startswith("The check failed"):
            written = set()  # start over: something is not as the criteria say
        for path, content in wanted.items():
            if path not in written:
                return _call("write_file", path=path, content=content)
        return _call("step_done", summary=f"wrote {', '.join(wanted) or 'nothing'}")


def _wanted_files(story: str) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for line in story.splitlines():
        if match := _CONTAINS.search(line):
            wanted[match.group(1)] = wanted.get(match.group(1), "") + match.group(2) + "\n"
        elif match := _EXISTS.search(line):
            wanted.setdefault(match.group(1), "")
    return wanted


def _written(messages: list[dict[str, Any]]) -> set[str]:
    """Paths written since the last failed check."""
    written: set[str] = set()
    for message in messages:
        if message["role"] == "tool" and message["content"].startswith("The check failed"):
            written = set()
        for call in message.get("tool_calls", []):
            if call["function"]["name"] == "write_file":
                written.add(json.loads(call["function"]["arguments"]).get("path", ""))
    return written


def scripted_model(name: str) -> ChatModel:
    if name == "demo":
        return RuleFollower("scripted:demo")
    if name == "ask":
        return RuleFollower("scripted:ask", ask_first=True)
    if match := re.fullmatch(r"sleep-(\d+(?:\.\d+)?)", name):
        return RuleFollower(f"scripted:{name}", sleep_s=float(match.group(1)))
    raise ModelUnavailable(f"no scripted model named {name!r}: expected demo, ask or sleep-<seconds>")
