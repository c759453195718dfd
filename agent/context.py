"""Keeping every request within the model's context window.

The loop keeps the whole conversation (the transcript); ``ContextWindow.fit`` makes the *request*
from it. When the conversation plus a full reply would not fit the window, it makes room in this
order, stopping as soon as the request fits (OpenHands' condenser and mini-swe-agent's habit of
eliding old observations are the models):

1. old tool results are replaced by a one-line note (what ran, how long the output was);
2. old ``write_file``/``edit_file`` arguments lose their file contents (the file is in the sandbox);
3. the oldest turns are dropped whole, with one note saying how many, so tool calls and their
   results stay paired;
4. what is left is clipped, the longest message first.

The system prompt, the story (the first user message) and the last ``keep_recent`` turns are kept
as they are for as long as anything else can go. Tokens are estimated from characters
(``chars_per_token``, conservative for code), and the estimate is corrected by what the server
reports: when it counts more tokens than estimated, the ratio drops and stays down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.models.base import ModelLimits

Message = dict[str, Any]
MESSAGE_OVERHEAD = 8
"""Tokens a chat template adds per message (role markers, separators), rounded up."""
MIN_REPLY = 256
"""The least room left for a reply before older context goes."""
ELIDED = "[elided to fit the context window: {what}; run it again if you need it]"


@dataclass
class Fitted:
    messages: list[Message]
    max_tokens: int
    """What the request may ask for as the reply's ``max_tokens``."""
    estimate: int
    """Estimated prompt tokens of ``messages`` (with the tools)."""
    elided: int = 0
    """How many messages were elided, stripped, dropped or clipped to fit."""


class ContextWindow:
    def __init__(self, limits: ModelLimits, tools: list[dict[str, Any]], *, keep_recent: int = 3,
                 chars_per_token: float = 3.0) -> None:
        self.window = limits.context_window
        self.reply = min(limits.max_output_tokens, self.window // 2)
        self.tools_chars = len(json.dumps(tools)) if tools else 0
        self.keep_recent = keep_recent
        self.chars_per_token = chars_per_token
        self.margin = max(32, self.window // 50)
        """Head-room for what an estimate from characters cannot see."""

    # -- estimating ---------------------------------------------------------------------------------

    def estimate(self, messages: list[Message]) -> int:
        chars = self.tools_chars + sum(_chars(m) for m in messages)
        return int(chars / self.chars_per_token) + MESSAGE_OVERHEAD * len(messages) + 16

    def observe(self, sent: list[Message], prompt_tokens: int) -> None:
        """Learn from the server's count of a request's prompt tokens: never under-estimate twice."""
        if prompt_tokens <= 0:
            return
        chars = self.tools_chars + sum(_chars(m) for m in sent)
        counted = prompt_tokens - MESSAGE_OVERHEAD * len(sent) - 16
        if counted > 0 and chars / counted < self.chars_per_token:
            self.chars_per_token = max(1.0, chars / counted * 0.95)

    def shrink(self) -> None:
        """The server said the request was too long: estimate more tokens per character from now on."""
        self.chars_per_token = max(1.0, self.chars_per_token * 0.75)

    # -- fitting ------------------------------------------------------------------------------------

    def fits(self, messages: list[Message], reply: int) -> bool:
        return self.estimate(messages) + reply + self.margin <= self.window

    def fit(self, conversation: list[Message]) -> Fitted:
        """The request to send for ``conversation`` (which is not changed)."""
        messages = [dict(m) for m in conversation]
        changed = 0
        for step in (self._elide_outputs, self._strip_arguments, self._drop_turns, self._clip_longest):
            if self.fits(messages, self.reply):
                break
            messages, n = step(messages)
            changed += n
        estimate = self.estimate(messages)
        room = self.window - self.margin - estimate
        return Fitted(messages, max(16, min(self.reply, room)), estimate, changed)

    def _protected(self, messages: list[Message]) -> tuple[int, int]:
        """(end of the head, start of the recent turns): indexes that bound what may change."""
        head = 0
        while head < len(messages) and messages[head]["role"] in ("system", "user") and head < 2:
            head += 1
        starts = [i for i, m in enumerate(messages) if i >= head and m["role"] == "assistant"]
        recent = starts[-self.keep_recent] if len(starts) >= self.keep_recent else head
        return head, max(head, recent)

    def _elide_outputs(self, messages: list[Message]) -> tuple[list[Message], int]:
        head, recent = self._protected(messages)
        names = _call_names(messages)
        changed = 0
        for i in range(head, recent):
            message = messages[i]
            content = str(message.get("content") or "")
            if message["role"] == "tool" and len(content) > 200 and not content.startswith("[elided"):
                first = content.split("\n", 1)[0][:80]
                what = f"{names.get(message.get('tool_call_id', ''), 'tool')} output of {len(content)} " \
                       f"characters, starting {first!r}"
                messages[i] = {**message, "content": ELIDED.format(what=what)}
                changed += 1
                if self.fits(messages, self.reply):
                    break
        return messages, changed

    def _strip_arguments(self, messages: list[Message]) -> tuple[list[Message], int]:
        head, recent = self._protected(messages)
        changed = 0
        for i in range(head, recent):
            calls = messages[i].get("tool_calls")
            if messages[i]["role"] != "assistant" or not calls:
                continue
            stripped = [_strip_call(c) for c in calls]
            if stripped != calls:
                messages[i] = {**messages[i], "tool_calls": stripped}
                changed += 1
            if len(str(messages[i].get("content") or "")) > 400:
                messages[i] = {**messages[i], "content": str(messages[i]["content"])[:200] + " […]"}
                changed += 1
        return messages, changed

    def _drop_turns(self, messages: list[Message]) -> tuple[list[Message], int]:
        head, recent = self._protected(messages)
        if recent <= head:
            return messages, 0
        dropped = 0
        cut = head
        while cut < recent:
            cut += 1
            while cut < recent and messages[cut]["role"] != "assistant":
                cut += 1  # never split a call from its result
            dropped = cut - head
            note = {"role": "user", "content": f"[{dropped} earlier messages were dropped to fit the context "
                                               "window; the files in the workspace are up to date]"}
            trial = [*messages[:head], note, *messages[cut:]]
            if self.fits(trial, self.reply):
                return trial, dropped
        note = {"role": "user", "content": f"[{dropped} earlier messages were dropped to fit the context window]"}
        return [*messages[:head], note, *messages[recent:]], dropped

    def _clip_longest(self, messages: list[Message]) -> tuple[list[Message], int]:
        """Cut the biggest message (its text in the middle, or its call arguments) until the request fits."""
        changed = 0
        while not self.fits(messages, MIN_REPLY):
            index = max(range(len(messages)), key=lambda i: _chars(messages[i]))
            message = messages[index]
            content = str(message.get("content") or "")
            calls = message.get("tool_calls") or []
            if calls and _chars(message) - len(content) > len(content):
                stripped = [_strip_call(c, limit=0) for c in calls]
                if stripped == calls:
                    break
                messages[index] = {**message, "tool_calls": stripped}
            elif len(content) >= 400:
                over = (self.estimate(messages) + MIN_REPLY + self.margin - self.window) * self.chars_per_token
                keep = max(200, int(len(content) - over - 100))
                half = keep // 2
                messages[index] = {**message, "content": f"{content[:half]}\n…[{len(content) - keep} characters "
                                                         f"cut to fit the window]…\n{content[-half:]}"}
            else:
                break  # nothing long is left
            changed += 1
        return messages, changed


def _chars(message: Message) -> int:
    size = len(str(message.get("content") or ""))
    for call in message.get("tool_calls") or []:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        size += len(str(function.get("name", ""))) + len(str(function.get("arguments", ""))) + 24
    return size


def _call_names(messages: list[Message]) -> dict[str, str]:
    names = {}
    for message in messages:
        for call in message.get("tool_calls") or []:
            names[call.get("id", "")] = call.get("function", {}).get("name", "tool")
    return names


def _strip_call(call: dict[str, Any], limit: int = 300) -> dict[str, Any]:
    function = call.get("function", {})
    raw = str(function.get("arguments", ""))
    if len(raw) <= max(limit, 160):
        return call
    try:
        args = json.loads(raw, strict=False)
    except ValueError:
        args = None
    if isinstance(args, dict):
        short = {k: (v if not isinstance(v, str) or len(v) <= 120 else f"[{len(v)} characters elided]")
                 for k, v in args.items()}
        text = json.dumps(short)
    else:
        text = json.dumps({"elided": f"{len(raw)} characters of arguments"})
    return {**call, "function": {**function, "arguments": text}}
