"""The progress file: what earlier steps did and learnt, in Ralph TUI's ``.ralph-tui/progress.md``.

Ralph TUI (``src/logs/progress.ts``) keeps this file in the repository and puts its last five
entries and its "Codebase Patterns" section into every prompt. Hearth writes the same format, so a
project can move between the two tools and keep its memory:

    # Ralph Progress Log
    ...header...
    ## Codebase Patterns (Study These First)
    - a pattern someone (or a model) added
    ---

    ## ✓ Iteration 1 - US-001: Fix the total
    *2026-12-01T05:40:00.000Z (42s)*
    **Commit:** 1a2b3c4

    **Status:** Completed

    **Files Changed:**
    - shop/cart.py

    **Notes:**
    What the model said it did.

    **Insights:**
    What it learnt.

    ---

Entries are appended at each checkpoint (before its commit, so the entry is part of it); the file
is never rewritten except to drop the oldest entries past ``MAX_SIZE``, as Ralph TUI does.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from pydantic import BaseModel

from agent.sandbox.base import SandboxError
from agent.sandbox.files import read_workspace_file, write_workspace_file

PROGRESS_FILE = ".ralph-tui/progress.md"
MAX_SIZE = 50_000
RECENT = 5
HEADER = """# Ralph Progress Log

This file tracks progress across iterations. It's automatically updated
after each iteration and included in agent prompts for context.

## Codebase Patterns (Study These First)

*Add reusable patterns discovered during development here.*

---

"""
_ENTRY = re.compile(r"^## [✓✗] Iteration (\d+)", re.MULTILINE)
_PATTERNS = re.compile(r"## Codebase Patterns.*?\n([\s\S]*?)(?=\n---|\n## [^C])", re.IGNORECASE)


class ProgressEntry(BaseModel):
    step_id: str
    title: str
    completed: bool = True
    duration_s: float = 0.0
    commit: str = ""
    files_changed: list[str] = []
    notes: str = ""
    learnings: str = ""


def _format(entry: ProgressEntry, iteration: int, now: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    lines = [f"## {'✓' if entry.completed else '✗'} Iteration {iteration} - {entry.step_id}: {entry.title}",
             f"*{stamp} ({round(entry.duration_s)}s)*"]
    if entry.commit:
        lines.append(f"**Commit:** {entry.commit}")
    lines += ["", "**Status:** " + ("Completed" if entry.completed else "Failed/Incomplete")]
    if entry.files_changed:
        lines += ["", "**Files Changed:**", *[f"- {f}" for f in entry.files_changed[:10]]]
        if len(entry.files_changed) > 10:
            lines.append(f"- ... and {len(entry.files_changed) - 10} more")
    if entry.notes.strip():
        lines += ["", "**Notes:**", entry.notes.strip()]
    if entry.learnings.strip():
        lines += ["", "**Insights:**", entry.learnings.strip()]
    return "\n".join([*lines, "", "---", "", ""])


def append_progress(workspace: Path, entry: ProgressEntry, *, now: float | None = None) -> Path:
    """Append ``entry`` to the workspace's progress file (created with Ralph TUI's header)."""
    path = workspace / PROGRESS_FILE
    # The file is sandbox output: read and replaced without following links (agent/sandbox/files.py).
    try:
        existing = read_workspace_file(workspace, PROGRESS_FILE).decode("utf-8", errors="replace")
    except FileNotFoundError:
        existing = HEADER
    numbers = [int(n) for n in _ENTRY.findall(existing)]
    content = existing + ("" if existing.endswith("\n") else "\n") + _format(
        entry, max(numbers, default=0) + 1, time.time() if now is None else now)
    if len(content) > MAX_SIZE:  # keep the header and the newest entries, cut at an entry
        head_end = content.find("---\n\n") + 5
        head, body = content[:head_end], content[head_end:]
        body = body[-(MAX_SIZE - len(head) - 1000):]
        cut = body.find("\n## ")
        content = head + "\n[...older entries truncated...]\n\n" + (body[cut + 1:] if cut > 0 else body)
    write_workspace_file(workspace, PROGRESS_FILE, content.encode("utf-8"))
    return path


def read_progress(workspace: Path) -> str:
    try:
        return read_workspace_file(workspace, PROGRESS_FILE).decode("utf-8")
    except (OSError, SandboxError, UnicodeDecodeError):
        return ""


def recent_progress(text: str, count: int = RECENT) -> str:
    """The last ``count`` entries, as Ralph TUI puts them into its prompt ("" when there are none)."""
    starts = [m.start() for m in _ENTRY.finditer(text)]
    if not starts:
        return ""
    shown = starts[-count:]
    return f"## Recent Progress (last {len(shown)} iterations)\n\n" + text[shown[0]:].strip()


def codebase_patterns(text: str) -> list[str]:
    """The bullet points of the "Codebase Patterns" section (none while it holds only its placeholder)."""
    match = _PATTERNS.search(text)
    if not match:
        return []
    section = match.group(1).strip()
    if not section or section.startswith("*Add reusable patterns"):
        return []
    return [line.strip().lstrip("-*• ").strip() for line in section.splitlines() if line.strip()]
