"""What the model is told: the system prompt and the step's first message, by model class.

The model's catalogue entry picks the class (``ModelLimits.prompt``):

* ``capable`` — coder models of 7B and up (Qwen2.5/3-Coder, Llama 3.x, gpt-oss). They get the
  whole picture: the repository's AGENTS.md (or CLAUDE.md), the PRD's name and description, the
  stories done and to do, the progress file's codebase patterns and last five entries (as Ralph TUI
  shows them), the story, and the commands that will accept it.
* ``tiny`` — the embedded 135M model. It follows short, concrete text and is distracted by
  anything else, so it gets the story, the file names it is about, and nothing more.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from agent.prd import Step
from agent.progress import codebase_patterns, recent_progress
from agent.sandbox.base import SandboxError
from agent.sandbox.files import read_workspace_file

INSTRUCTION_FILES = ("AGENTS.md", "CLAUDE.md")
INSTRUCTIONS_LIMIT = 8000
"""Characters of AGENTS.md kept in the system prompt (a longer file is cut, and the model told)."""
FILE_NAME = re.compile(r"\b[\w-]+(?:/[\w-]+)*\.[A-Za-z][\w]{0,7}\b")


class StepMemory(BaseModel):
    """What a step knows beyond its story: the PRD, the other stories and what earlier steps learnt."""

    prd_name: str = ""
    prd_description: str = ""
    done: list[str] = []
    """``"US-001: title"`` of each story already complete (this PRD, this task or before it)."""
    todo: list[str] = []
    """Stories after this one."""
    progress: str = ""
    """The repository's ``.ralph-tui/progress.md`` as it was when the step started."""
    instructions: str = ""
    """The repository's AGENTS.md (or CLAUDE.md)."""
    instructions_file: str = ""


def read_instructions(workspace: Path) -> tuple[str, str]:
    """(file name, text) of the repository's agent instructions, or ("", "")."""
    for name in INSTRUCTION_FILES:
        try:  # sandbox output: no link followed (AGENTS.md -> /etc/shadow would reach the model), bounded
            return name, read_workspace_file(workspace, name).decode("utf-8", errors="replace")
        except (OSError, SandboxError):
            continue
    return "", ""


TINY_SYSTEM = """You are a careful software engineer working in a git repository at /workspace.
You finish one user story at a time by calling tools. Reply with exactly one tool call per turn.
- write_file(path, content): create a file. Paths are relative to /workspace.
- read_file(path): read a file.
- shell(command): run a command, e.g. "ls" or "python3 test.py".
- step_done(summary): call this when every acceptance criterion is met. A check then runs.
- ask_user(question): only if the story is ambiguous.
Do exactly what the story asks. Use the exact file names and text it gives."""

CAPABLE_SYSTEM = """You are an expert software engineer working on your own in a git repository. \
Your working directory is the repository's root (/workspace); paths are relative to it. You finish \
one user story per step by calling tools. Nobody reads your prose until the step ends: act.

How to work:
- Explore before you change anything: `search` (grep a regular expression, or glob for files) and \
`read_file` with start_line/end_line for the part you need. Lines come numbered.
- Change existing files with `edit_file`: old_text must be copied exactly (no line numbers) and match \
once. Use `write_file` for new files.
- Put several tool calls in one reply when they do not depend on each other (reading three files, \
say): they run in order and each gets its own answer.
- Run the tests and the story's checks with `shell` before you finish. Long output is cut, and \
saved whole under .hearth/output/ for read_file.
- A reply is cut after {max_output} tokens. Write a big file in parts: write_file the first part, \
then write_file with append=true for the rest.
- Do not commit, push or switch branches: Hearth commits when the story's checks pass.
- When every acceptance criterion is met, call `step_done` with a summary and, in `learnings`, what \
a later story should know about this codebase. The story is accepted only if its checks pass.
- Use `ask_user` only when the story cannot be done without a person's decision."""


def system_prompt(profile: str, memory: StepMemory | None, *, max_output: int) -> str:
    if profile == "tiny":
        return TINY_SYSTEM
    text = CAPABLE_SYSTEM.format(max_output=max_output)
    if memory and memory.instructions.strip():
        body = memory.instructions.strip()
        if len(body) > INSTRUCTIONS_LIMIT:
            body = body[:INSTRUCTIONS_LIMIT] + f"\n[… {memory.instructions_file} cut here; read_file it for the rest]"
        text += f"\n\nThe repository's {memory.instructions_file} (follow it):\n\n{body}"
    return text


def tiny_story_prompt(step: Step, feedback: str, workspace: Path) -> str:
    lines = [f"User story {step.id}: {step.title}"]
    if step.description:
        lines.append(step.description)
    if step.acceptance:
        lines.append("Acceptance criteria:")
        lines += [f"- {item}" for item in step.acceptance]
    if step.notes:
        lines.append(f"Notes: {step.notes}")
    named = sorted(set(FILE_NAME.findall(" ".join([step.title, step.description, *step.acceptance]))))
    if feedback:
        lines.append(f"A reviewer rejected your previous attempt at this story: {feedback}")
    if named:
        # Small models latch on to the last file name they read: end with the ones that matter, and
        # leave the directory listing out (``shell`` can list it) so it cannot distract them.
        lines.append("Files this story is about: " + ", ".join(named))
    else:
        try:
            files = sorted(p.name for p in workspace.iterdir() if not p.name.startswith("."))
        except OSError:
            files = []
        lines.append("Existing files in /workspace: " + (", ".join(files[:40]) or "(none)"))
    lines.append("Start now with one tool call.")
    return "\n".join(lines)


def capable_story_prompt(step: Step, memory: StepMemory, *, checks: list[str], feedback: str,
                         workspace: Path, progress_limit: int) -> str:
    parts: list[str] = []
    if memory.prd_name:
        parts.append(f"# PRD: {memory.prd_name}\n{memory.prd_description}".strip())
    total = len(memory.done) + 1 + len(memory.todo)
    overview = [f"### Progress: {len(memory.done)}/{total} stories complete"]
    if memory.done:
        overview += ["Done:", *[f"- {s}" for s in memory.done]]
    if memory.todo:
        overview += ["To do after this one (not now):", *[f"- {s}" for s in memory.todo]]
    parts.append("\n".join(overview))
    patterns = codebase_patterns(memory.progress)
    recent = recent_progress(memory.progress)
    if patterns:
        parts.append("## Codebase Patterns (Study These First)\n" + "\n".join(f"- {p}" for p in patterns))
    if recent:
        if len(recent) > progress_limit:
            cut = "[… older progress cut; read_file .ralph-tui/progress.md for all of it]\n"
            recent = cut + recent[-progress_limit:]
        parts.append(recent)
    story = [f"## Your story: {step.id} - {step.title}"]
    if step.description:
        story.append(step.description)
    if step.acceptance:
        story += ["### Acceptance criteria", *[f"- {item}" for item in step.acceptance]]
    if step.notes:
        story += ["### Notes", step.notes]
    if checks:
        story += ["### Checks that must pass (run in /workspace when you call step_done)",
                  *[f"- `{c}`" for c in checks]]
    else:
        story.append("No check command is configured: check your work yourself before step_done.")
    if feedback:
        story.append(f"A reviewer rejected your previous attempt at this story: {feedback}")
    parts.append("\n".join(story))
    try:
        top = sorted(p.name + ("/" if p.is_dir() else "") for p in workspace.iterdir()
                     if p.name not in (".git", ".hearth"))
    except OSError:
        top = []
    parts.append("Top level of /workspace: " + (", ".join(top[:60]) or "(empty)"))
    return "\n\n".join(parts)
