"""The agent loop for one step: chat completions with tools, inside a sandbox.

Shaped like mini-swe-agent: the loop has a single exit, and every way of stopping is an exception
that carries what to record (``StepDone``, ``NeedsInput``, ``BudgetExceeded``). A step is accepted
only when the project's check command passes in the sandbox — the model's say-so is not enough.
The check runs when the model calls ``step_done``, and also when it repeats an earlier call
exactly (a stuck small model: if the work already passes, the step is done; if not, the model is
told so with the check's output). A malformed tool call is answered with an error message the
model can read, never a crash. The transcript is written after every turn.

Tools: ``shell``, ``read_file``, ``write_file``, ``ask_user``, ``checkpoint``, ``step_done``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.config import BudgetConfig
from agent.models.base import ChatModel, ModelError, ModelUnavailable, ToolCall
from agent.prd import Step
from agent.sandbox.base import Sandbox, SandboxError

OUTPUT_LIMIT = 1500
"""Characters of tool output shown to the model (head and tail); small local models have small contexts."""


def _tool(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
                "additionalProperties": False,
            },
        },
    }


_TEXT = {"type": "string"}
TOOLS: list[dict[str, Any]] = [
    _tool("write_file", "Create or overwrite a file in the workspace.", {"path": _TEXT, "content": _TEXT}),
    _tool("read_file", "Read a file in the workspace.", {"path": _TEXT}),
    _tool("shell", "Run a shell command in the workspace; returns exit code and output.", {"command": _TEXT}),
    _tool("step_done", "Say the story is finished; the project's check then runs.", {"summary": _TEXT}),
    _tool("ask_user", "Ask the people on the project a question and wait for the answer.", {"question": _TEXT}),
    _tool("checkpoint", "Save the work so far as a checkpoint commit.", {"summary": _TEXT}),
]
TOOL_NAMES = {t["function"]["name"] for t in TOOLS}
REPEATABLE_CHECK = {"write_file", "read_file", "shell"}
"""Tools whose exact repetition makes the loop run the check itself: small models often loop on
their last action instead of calling ``step_done``; if the work already passes, the step is done."""

SYSTEM_PROMPT = """You are a careful software engineer working in a git repository at /workspace.
You finish one user story at a time by calling tools. Reply with exactly one tool call per turn.
- write_file(path, content): create a file. Paths are relative to /workspace.
- read_file(path): read a file.
- shell(command): run a command, e.g. "ls" or "python3 test.py".
- step_done(summary): call this when every acceptance criterion is met. A check then runs.
- ask_user(question): only if the story is ambiguous.
Do exactly what the story asks. Use the exact file names and text it gives."""


class StepStop(Exception):
    """Base of the closed family of ways a step's loop stops."""


class StepDone(StepStop):
    def __init__(self, summary: str, check_output: str) -> None:
        super().__init__(summary)
        self.summary = summary
        self.check_output = check_output


class NeedsInput(StepStop):
    def __init__(self, question: str, call_id: str) -> None:
        super().__init__(question)
        self.question = question
        self.call_id = call_id


class BudgetExceeded(StepStop):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ModelLost(StepStop):
    """The model's server stopped answering mid-step."""


@dataclass
class StepResult:
    outcome: Literal["done", "needs_input", "budget", "model_lost"]
    """``model_lost``: the model stopped answering (``messages`` is the conversation so far, intact)."""
    turns: int
    messages: list[dict[str, Any]]
    summary: str = ""
    check_output: str = ""
    question: str = ""
    call_id: str = ""


@dataclass
class StepContext:
    task_id: str
    step: Step
    sandbox: Sandbox
    check_command: str
    budget: BudgetConfig
    transcript_path: Path
    on_action: Callable[[int, str, str], None] = lambda turn, tool, summary: None
    on_check: Callable[[bool, str], None] = lambda passed, output: None
    on_checkpoint: Callable[[str], str] = lambda summary: ""
    """Called by the ``checkpoint`` tool with the model's summary; returns the commit id."""
    on_accept: Callable[[], str] = lambda: ""
    """Called once the check passed (the build, agent/build.py); a non-empty problem fails acceptance."""
    feedback: str = ""
    """A reviewer's reason for rejecting the previous try of this step."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Conversation to resume (after ``ask_user`` was answered); empty for a fresh step."""


def story_prompt(ctx: StepContext) -> str:
    step = ctx.step
    lines = [f"User story {step.id}: {step.title}"]
    if step.description:
        lines.append(step.description)
    if step.acceptance:
        lines.append("Acceptance criteria:")
        lines += [f"- {item}" for item in step.acceptance]
    if step.notes:
        lines.append(f"Notes: {step.notes}")
    named = sorted(set(FILE_NAME.findall(" ".join([step.title, step.description, *step.acceptance]))))
    if ctx.feedback:
        lines.append(f"A reviewer rejected your previous attempt at this story: {ctx.feedback}")
    if named:
        # Small models latch on to the last file name they read: end with the ones that matter, and
        # leave the directory listing out (``shell`` can list it) so it cannot distract them.
        lines.append("Files this story is about: " + ", ".join(named))
    else:
        try:
            files = sorted(p.name for p in ctx.sandbox.workspace.iterdir() if not p.name.startswith("."))
        except OSError:
            files = []
        lines.append("Existing files in /workspace: " + (", ".join(files[:40]) or "(none)"))
    lines.append("Start now with one tool call.")
    return "\n".join(lines)


FILE_NAME = re.compile(r"\b[\w-]+(?:/[\w-]+)*\.[A-Za-z][\w]{0,7}\b")


def clip(text: str, limit: int = OUTPUT_LIMIT) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n…[{len(text) - limit} characters cut]…\n{text[-half:]}"


class _Turns:
    """Runs tool calls against the sandbox; raises StepStop subclasses to end the step."""

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx

    def dispatch(self, call: ToolCall) -> str:
        if call.name not in TOOL_NAMES:
            raise _FormatError(f"unknown tool {call.name!r}; use one of {', '.join(sorted(TOOL_NAMES))}")
        try:
            args = json.loads(call.arguments or "{}", strict=False)
        except json.JSONDecodeError as exc:
            raise _FormatError(f"arguments of {call.name} are not valid JSON: {exc}") from None
        if not isinstance(args, dict):
            raise _FormatError(f"arguments of {call.name} must be a JSON object")
        return getattr(self, "tool_" + call.name)(args)

    @staticmethod
    def _text(args: dict[str, Any], key: str) -> str:
        value = args.get(key)
        if not isinstance(value, str):
            raise _FormatError(f"argument {key!r} is required and must be a string")
        return value

    def tool_shell(self, args: dict[str, Any]) -> str:
        result = self.ctx.sandbox.exec(self._text(args, "command"))
        status = "timed out" if result.timed_out else f"exit code {result.exit_code}"
        return f"{status}\n{clip(result.tail(100_000))}"

    def tool_read_file(self, args: dict[str, Any]) -> str:
        return clip(self.ctx.sandbox.read_file(self._text(args, "path")))

    def tool_write_file(self, args: dict[str, Any]) -> str:
        path, content = self._text(args, "path"), self._text(args, "content")
        if path.strip() in TOOL_NAMES:  # a weak model's slip: the tool's name given as the file
            raise _FormatError(f"{path!r} is the tool's name, not a file: put the file's path in 'path'")
        self.ctx.sandbox.write_file(path, content)
        return f"wrote {len(content)} characters to {path}"

    def tool_ask_user(self, args: dict[str, Any]) -> str:
        raise NeedsInput(self._text(args, "question"), call_id="")

    def tool_checkpoint(self, args: dict[str, Any]) -> str:
        commit = self.ctx.on_checkpoint(self._text(args, "summary"))
        return f"checkpoint saved as commit {commit[:12]}" if commit else "checkpoint saved"

    def tool_step_done(self, args: dict[str, Any]) -> str:
        return self.check(self._text(args, "summary"))

    def check(self, summary: str) -> str:
        """Run the project's check; a pass ends the step (StepDone), a failure is reported back."""
        command = self.ctx.check_command
        output = "no check command configured"
        if command:
            result = self.ctx.sandbox.exec(command, env={"HEARTH_STEP": self.ctx.step.id})
            output = result.tail()
            self.ctx.on_check(result.ok, output)
            if not result.ok:
                return (
                    f"The check failed (exit code {result.exit_code}), so the story is not done yet:\n"
                    f"{clip(output)}\nFix the problem, then call step_done again."
                )
        problem = self.ctx.on_accept()
        if problem:
            return (f"The check failed: the build did not pass, so the story is not done yet:\n{clip(problem)}\n"
                    "Fix the problem, then call step_done again.")
        raise StepDone(summary, output)


class _FormatError(Exception):
    pass


def _os_error(exc: OSError, workspace: Path) -> str:
    """An OSError as the model should see it: the path relative to /workspace, not the host's."""
    name = str(exc.filename or "")
    root = str(workspace.resolve())
    if name.startswith(root):
        name = name[len(root):].lstrip("/") or "."
    return f"{name}: {exc.strerror}" if exc.strerror else str(exc)


def _summarise(call: ToolCall) -> str:
    try:
        args = json.loads(call.arguments or "{}", strict=False)
    except json.JSONDecodeError:
        return clip(call.arguments, 120)
    if not isinstance(args, dict):
        return clip(call.arguments, 120)
    key = {"shell": "command", "write_file": "path", "read_file": "path"}.get(call.name, "")
    value = args.get(key) if key else next(iter(args.values()), "")
    return clip(str(value), 120)


def run_step(ctx: StepContext, model: ChatModel) -> StepResult:
    """Drive the model until the step is done, needs input or runs out of budget (the single exit)."""
    messages = ctx.messages or [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": story_prompt(ctx)},
    ]
    turns, format_errors, started = 0, 0, time.monotonic()
    previous_calls: set[tuple[str, str]] = set()
    stuck = 0
    tools = _Turns(ctx)
    try:
        while True:
            if turns >= ctx.budget.max_turns:
                raise BudgetExceeded(f"no passing step_done within {ctx.budget.max_turns} turns")
            if time.monotonic() - started > ctx.budget.step_wall_s:
                raise BudgetExceeded(f"step exceeded its {ctx.budget.step_wall_s:.0f} s wall-time budget")
            turns += 1
            # Deterministic at first; warmer each time the model gets stuck, so it can try something else.
            temperature = 0.0 if stuck == 0 else min(1.0, 0.3 + 0.2 * stuck)
            try:
                reply = model.complete(messages, TOOLS, temperature=temperature)
            except ModelUnavailable as exc:
                raise ModelLost(str(exc)) from exc
            except ModelError as exc:
                raise BudgetExceeded(f"model error: {exc}") from exc
            calls = [
                ToolCall(id=c.id or f"call_{turns}_{i}", name=c.name, arguments=c.arguments)
                for i, c in enumerate(reply.tool_calls[:1])
            ]
            messages.append(_assistant_message(reply.content, calls))
            if not calls:
                format_errors += 1
                messages.append({"role": "user", "content": "Reply with exactly one tool call."})
            for call in calls:
                ctx.on_action(turns, call.name, _summarise(call))
                seen_before = (call.name, call.arguments) in previous_calls
                previous_calls.add((call.name, call.arguments))
                try:
                    if seen_before and call.name in REPEATABLE_CHECK and ctx.check_command:
                        # A model repeating itself is stuck or done: the check decides which.
                        output = "You already made exactly this call. " + tools.check(
                            f"check passed after the model repeated {call.name}")
                    else:
                        output = tools.dispatch(call)
                    format_errors = 0
                except _FormatError as exc:
                    format_errors += 1
                    output = f"error: {exc}"
                except SandboxError as exc:
                    output = f"error: {exc}"
                except OSError as exc:
                    output = f"error: {_os_error(exc, ctx.sandbox.workspace)}"
                except NeedsInput as ask:
                    raise NeedsInput(ask.question, call.id) from None
                except StepDone:
                    messages.append(_tool_message(call.id, "check passed; story accepted"))
                    raise
                if seen_before or output.startswith(("The check failed", "error:")):
                    stuck += 1
                messages.append(_tool_message(call.id, output))
            if format_errors >= ctx.budget.max_format_errors:
                raise BudgetExceeded(f"{format_errors} malformed replies in a row")
            _save(ctx.transcript_path, messages)
    except StepDone as done:
        result = StepResult("done", turns, messages, summary=done.summary, check_output=done.check_output)
    except NeedsInput as ask:
        result = StepResult("needs_input", turns, messages, question=ask.question, call_id=ask.call_id)
    except BudgetExceeded as over:
        result = StepResult("budget", turns, messages, summary=over.reason)
    except ModelLost as lost:
        result = StepResult("model_lost", turns, messages, summary=str(lost))
    _save(ctx.transcript_path, messages)
    return result


def answer_message(call_id: str, answer: str, who: str) -> dict[str, Any]:
    """The tool result that carries a person's answer to ``ask_user`` back to the model, verbatim."""
    return _tool_message(call_id, f"Answer from {who}: {answer}")


def _assistant_message(content: str, calls: list[ToolCall]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content or ""}
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ]
    return message


def _tool_message(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _save(path: Path, messages: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(messages, indent=1), encoding="utf-8")
    tmp.replace(path)
