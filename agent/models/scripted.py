"""Scripted stand-ins for a language model (tests and benchmarks; they are NOT models).

A real model cannot give deterministic answers, so tests of the loop, the runner and the cluster
drive them with these. They speak the same ``ChatModel`` protocol as ``OpenAIChat``:

* ``ScriptedChat(replies)`` — replays a fixed list of replies (strings become JSON-action content,
  dicts become tool calls), for unit tests of the loop's edge cases.
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

from agent.models.base import ChatModel, ChatReply, ModelUnavailable, ToolCall

_CONTAINS = re.compile(r"""[`'"]?([\w./-]+\.\w+)[`'"]?\s+(?:contains|containing|with content)\s+["“']([^"”']*)["”']""")
_EXISTS = re.compile(r"""[`'"]?([\w./-]+\.\w+)[`'"]?\s+exists""")


class ScriptedChat:
    """Replays ``replies`` in order; after the last one it keeps sending ``step_done``."""

    def __init__(self, replies: list[str | dict[str, Any]], name: str = "scripted:list") -> None:
        self.name = name
        self.replies = list(replies)
        self.calls: list[list[dict[str, Any]]] = []

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 *, temperature: float | None = None) -> ChatReply:
        self.calls.append([dict(m) for m in messages])
        reply = self.replies.pop(0) if self.replies else {"name": "step_done", "arguments": {"summary": "done"}}
        if isinstance(reply, str):
            return ChatReply(content=reply)
        args = reply.get("arguments", {})
        raw_args = args if isinstance(args, str) else json.dumps(args)
        call = ToolCall(id=str(reply.get("id", "")), name=str(reply["name"]), arguments=raw_args)
        return ChatReply(tool_calls=[call])


def _call(name: str, **args: Any) -> ChatReply:
    return ChatReply(tool_calls=[ToolCall(id="", name=name, arguments=json.dumps(args))])


class RuleFollower:
    """Writes the files the acceptance criteria name, then says the step is done."""

    def __init__(self, name: str, *, ask_first: bool = False, sleep_s: float = 0.0) -> None:
        self.name = name
        self.ask_first = ask_first
        self.sleep_s = sleep_s

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 *, temperature: float | None = None) -> ChatReply:
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
