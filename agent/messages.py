"""The conversation as the agent loop writes it: OpenAI chat messages, and the transcript file.

The transcript is saved whole after every turn (written aside, then renamed), so a crash loses at most
the turn in flight; the runner sends it to the head (agent/checkpoints.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.models.base import ChatReply, ToolCall
from agent.tools import clip


def cut_reply_messages(reply: ChatReply, max_tokens: int) -> list[dict[str, Any]]:
    """The transcript entries for a reply cut at ``max_tokens``: none of its calls ran."""
    said = reply.content or " ".join(f"{c.name}({clip(c.arguments, 200)})" for c in reply.tool_calls)
    return [
        {"role": "assistant", "content": clip(said, 400)},
        {"role": "user", "content": (
            f"Your last reply was cut off at the {max_tokens}-token limit, so none of its tool calls ran. "
            "Write smaller pieces: change files with edit_file, write a big file in parts (write_file, then "
            "write_file with append=true), and keep each reply short.")},
    ]


def answer_message(call_id: str, answer: str, who: str) -> dict[str, Any]:
    """The tool result that carries a person's answer to ``ask_user`` back to the model, verbatim."""
    return tool_message(call_id, f"Answer from {who}: {answer}")


def assistant_message(content: str, calls: list[ToolCall]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content or ""}
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ]
    return message


def tool_message(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def save_transcript(path: Path, messages: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(messages, indent=1), encoding="utf-8")
    tmp.replace(path)
