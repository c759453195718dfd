"""The agent loop for one step: chat completions with tools, inside a sandbox.

Shaped like mini-swe-agent: the loop has a single exit, and every way of stopping is an exception
that carries what to record (``StepDone``, ``NeedsInput``, ``BudgetExceeded``, ``Stuck``,
``ModelLost``). Each turn:

1. the request is fitted into the model's context window (``agent.context``): the transcript keeps
   everything, the request drops what it must, and ``max_tokens`` leaves the window unexceeded;
2. a reply cut at ``max_tokens`` (``finish_reason: length``) runs none of its calls: the model is
   told its reply was cut and to write smaller pieces;
3. every tool call of the reply runs, in order, and each gets its own answer;
4. a call identical to an earlier one still runs, and its result gets a hint appended; ``stuck_after``
   identical actions in a row end the step as ``stuck``.

A step is accepted when the project's check and the story's own checks (``agent.acceptance``) pass
in the sandbox after ``step_done``; with none configured, on the model's word (and it is recorded so).
For the ``tiny`` prompt class only, a repeated file or shell call also runs the checks (after the
call, never instead of it): a 135M model tends to repeat its last action rather than say it is done.
Prompt and completion tokens are counted per turn (``on_turn``) and per step (``StepResult``). A
malformed call gets an error the model can act on, never a crash. The transcript is saved after
every turn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.acceptance import MODEL_WORD, step_checks
from agent.config import BudgetConfig
from agent.context import ContextWindow
from agent.messages import assistant_message, cut_reply_messages, save_transcript, tool_message
from agent.models.base import ChatModel, ChatReply, ModelError, ModelReplyError, ModelUnavailable, ToolCall
from agent.prd import Step
from agent.prompts import StepMemory, capable_story_prompt, system_prompt, tiny_story_prompt
from agent.sandbox.base import Sandbox, SandboxError
from agent.tools import ToolBox, ToolError, clip, parse_arguments, text_arg, tool_names, tool_schemas

REPEAT_CHECKED = {"write_file", "read_file", "shell"}
"""Tools whose exact repetition makes the loop (tiny prompt class only) run the checks too."""
OUTPUT_SHARE = {"capable": 0.25, "tiny": 0.09}
"""Share of the context window (in characters, ~3 a token) one tool result may take before it is cut."""


class StepStop(Exception):
    """Base of the closed family of ways a step's loop stops."""

    output = ""
    """What the call that stopped the step returned before it did (kept in the transcript)."""


class StepDone(StepStop):
    def __init__(self, summary: str, check_output: str, *, learnings: str = "", checked: bool = True) -> None:
        super().__init__(summary)
        self.summary = summary
        self.check_output = check_output
        self.learnings = learnings
        self.checked = checked


class NeedsInput(StepStop):
    def __init__(self, question: str, call_id: str) -> None:
        super().__init__(question)
        self.question = question
        self.call_id = call_id


class BudgetExceeded(StepStop):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Stuck(StepStop):
    """The model made the same call ``stuck_after`` times in a row."""


class ModelLost(StepStop):
    """The model's server stopped answering mid-step."""


@dataclass
class StepResult:
    outcome: Literal["done", "needs_input", "budget", "stuck", "model_lost"]
    """``model_lost``: the model stopped answering (``messages`` is the conversation so far, intact)."""
    turns: int
    messages: list[dict[str, Any]]
    summary: str = ""
    check_output: str = ""
    question: str = ""
    call_id: str = ""
    learnings: str = ""
    checked: bool = True
    """False when no check ran: the step was accepted on the model's word."""
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class TurnUsage:
    turn: int
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    max_tokens: int
    elided: int
    """Messages of the conversation elided, stripped, dropped or clipped to fit this request."""


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
    on_turn: Callable[[TurnUsage], None] = lambda usage: None
    on_accept: Callable[[], str] = lambda: ""
    """Called once the checks passed (the build, agent/build.py); a non-empty problem fails acceptance."""
    feedback: str = ""
    """A reviewer's reason for rejecting the previous try of this step."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Conversation to resume (after ``ask_user`` was answered); empty for a fresh step."""
    memory: StepMemory = field(default_factory=StepMemory)


def first_messages(ctx: StepContext, model: ChatModel) -> list[dict[str, Any]]:
    """The system prompt and the story, as the model's prompt class wants them."""
    profile = model.limits.prompt
    if profile == "tiny":
        story = tiny_story_prompt(ctx.step, ctx.feedback, ctx.sandbox.workspace)
    else:
        story = capable_story_prompt(ctx.step, ctx.memory, checks=step_checks(ctx.check_command, ctx.step),
                                     feedback=ctx.feedback, workspace=ctx.sandbox.workspace,
                                     progress_limit=model.limits.context_window // 2)
    system = system_prompt(profile, ctx.memory, max_output=model.limits.max_output_tokens)
    return [{"role": "system", "content": system}, {"role": "user", "content": story}]


class _Step:
    """One step's state while it runs: its tools, checks, repeat tracking and token counts."""

    def __init__(self, ctx: StepContext, model: ChatModel) -> None:
        self.ctx, self.model = ctx, model
        self.profile = model.limits.prompt
        output_limit = int(model.limits.context_window * 3 * OUTPUT_SHARE[self.profile])
        self.tools = ToolBox(ctx.sandbox, profile=self.profile, output_limit=max(800, output_limit))
        self.names = tool_names(self.profile)
        self.seen: dict[tuple[str, str], int] = {}
        self.last_action: tuple[str, str] | None = None
        self.in_a_row = 0
        self.strikes = 0
        """Repeats, errors and failed checks so far: the loop warms the temperature with each."""

    def temperature(self) -> float:
        """Deterministic at first; warmer with each strike, so a model in a rut can try something else
        (gently for capable models, whose good first answers a high temperature would spoil)."""
        if self.strikes == 0:
            return 0.0
        if self.profile == "tiny":
            return min(1.0, 0.3 + 0.2 * self.strikes)
        return min(0.6, 0.15 * self.strikes)

    def answer(self, turn: int, call: ToolCall) -> str:
        """Run one call and return its result for the model (StepStop subclasses end the step)."""
        self.ctx.on_action(turn, call.name, _summarise(call))
        action = (call.name, _canonical(call.arguments))
        earlier = self.seen.get(action)
        self.seen.setdefault(action, turn)
        self.in_a_row = self.in_a_row + 1 if action == self.last_action else 1
        self.last_action = action
        try:
            output = self.dispatch(call)
        except ToolError as exc:
            output = f"error: {exc}"
        except SandboxError as exc:
            output = f"error: {exc}"
        except OSError as exc:
            output = f"error: {_os_error(exc, self.ctx.sandbox.workspace)}"
        if output.startswith(("error:", "The check failed")):
            self.strikes += 1
        if earlier is not None:
            self.strikes += 1
            output += (f"\n[You already made exactly this call at turn {earlier}.]" if self.profile == "tiny" else
                       f"\n[Note: you already made exactly this call at turn {earlier}. If it did not help "
                       "then, try something else; if the story is finished, call step_done.]")
            if self.profile == "tiny" and call.name in REPEAT_CHECKED and step_checks(self.ctx.check_command,
                                                                                      self.ctx.step):
                try:
                    output += "\n" + self.check(f"checks passed after the model repeated {call.name}", "")
                except StepDone as done:
                    done.output = output
                    raise
            if self.in_a_row >= self.ctx.budget.stuck_after:
                stuck = Stuck(f"the model made the same {call.name} call {self.in_a_row} times in a row")
                stuck.output = output
                raise stuck
        return output

    def dispatch(self, call: ToolCall) -> str:
        if call.name not in self.names:
            raise ToolError(f"unknown tool {call.name!r}; use one of {', '.join(sorted(self.names))}")
        args = parse_arguments(call.name, call.arguments)
        if call.name == "step_done":
            learnings = args.get("learnings")
            return self.check(text_arg(args, "summary"), learnings if isinstance(learnings, str) else "")
        if call.name == "ask_user":
            raise NeedsInput(text_arg(args, "question"), call_id=call.id)
        if call.name == "checkpoint":
            commit = self.ctx.on_checkpoint(text_arg(args, "summary"))
            return f"checkpoint saved as commit {commit[:12]}" if commit else "checkpoint saved"
        return self.tools.run(call.name, args)

    def check(self, summary: str, learnings: str) -> str:
        """Run every check; all passing ends the step (StepDone), a failure is reported back."""
        commands = step_checks(self.ctx.check_command, self.ctx.step)
        if not commands:
            if problem := self._build():
                return problem
            raise StepDone(summary, f"no check configured: {MODEL_WORD}", learnings=learnings, checked=False)
        outputs = []
        for command in commands:
            result = self.ctx.sandbox.exec(command, env={"HEARTH_STEP": self.ctx.step.id})
            output = result.tail()
            self.ctx.on_check(result.ok, output)
            if not result.ok:
                which = f" `{command}`" if len(commands) > 1 else ""
                shown = self.tools.keep_whole(output) if self.profile == "capable" else clip(output, 1500)
                return (f"The check{which} failed (exit code {result.exit_code}), so the story is not done yet:\n"
                        f"{shown}\nFix the problem, then call step_done again.")
            outputs.append(output)
        if problem := self._build():
            return problem
        raise StepDone(summary, "\n".join(outputs), learnings=learnings)

    def _build(self) -> str:
        """The build after the checks; its failure is told like a failing check's ("" when it passed)."""
        problem = self.ctx.on_accept()
        if not problem:
            return ""
        return (f"The check failed: the build did not pass, so the story is not done yet:\n{clip(problem, 1500)}\n"
                "Fix the problem, then call step_done again.")


def run_step(ctx: StepContext, model: ChatModel) -> StepResult:
    """Drive the model until the step is done, needs input, is stuck or runs out of budget (the single exit)."""
    messages = ctx.messages or first_messages(ctx, model)
    state = _Step(ctx, model)
    schemas = tool_schemas(state.profile)
    window = ContextWindow(model.limits, schemas)
    turns, format_errors, too_long, started = 0, 0, 0, time.monotonic()
    prompt_tokens = completion_tokens = 0
    try:
        while True:
            if turns >= ctx.budget.max_turns:
                raise BudgetExceeded(f"no passing step_done within {ctx.budget.max_turns} turns")
            if time.monotonic() - started > ctx.budget.step_wall_s:
                raise BudgetExceeded(f"step exceeded its {ctx.budget.step_wall_s:.0f} s wall-time budget")
            fitted = window.fit(messages)
            temperature = state.temperature()
            try:
                reply = model.complete(fitted.messages, schemas, temperature=temperature,
                                       max_tokens=fitted.max_tokens)
            except ModelUnavailable as exc:
                raise ModelLost(str(exc)) from exc
            except ModelReplyError as exc:
                if _too_long(exc) and too_long < 3:  # our estimate was low for this tokenizer: shrink, retry
                    too_long += 1
                    window.shrink()
                    continue
                raise BudgetExceeded(f"model error: {exc}") from exc
            except ModelError as exc:
                raise BudgetExceeded(f"model error: {exc}") from exc
            turns += 1
            used_prompt = reply.usage.prompt_tokens or fitted.estimate
            prompt_tokens += used_prompt
            completion_tokens += reply.usage.completion_tokens
            window.observe(fitted.messages, reply.usage.prompt_tokens)
            ctx.on_turn(TurnUsage(turns, used_prompt, reply.usage.completion_tokens, reply.finish_reason,
                                  fitted.max_tokens, fitted.elided))
            if reply.finish_reason == "length":
                format_errors += 1
                messages += cut_reply_messages(reply, fitted.max_tokens)
            else:
                format_errors = _run_calls(state, turns, reply, messages, format_errors)
            if format_errors >= ctx.budget.max_format_errors:
                raise BudgetExceeded(f"{format_errors} malformed or cut-off replies in a row")
            save_transcript(ctx.transcript_path, messages)
    except StepDone as done:
        result = StepResult("done", turns, messages, summary=done.summary, check_output=done.check_output,
                            learnings=done.learnings, checked=done.checked)
    except NeedsInput as ask:
        result = StepResult("needs_input", turns, messages, question=ask.question, call_id=ask.call_id)
    except BudgetExceeded as over:
        result = StepResult("budget", turns, messages, summary=over.reason)
    except Stuck as stuck:
        result = StepResult("stuck", turns, messages, summary=str(stuck))
    except ModelLost as lost:
        result = StepResult("model_lost", turns, messages, summary=str(lost))
    result.prompt_tokens, result.completion_tokens = prompt_tokens, completion_tokens
    save_transcript(ctx.transcript_path, messages)
    return result


def _run_calls(state: _Step, turn: int, reply: ChatReply, messages: list[dict[str, Any]], format_errors: int) -> int:
    """Answer every call of ``reply`` in order (appending to ``messages``); returns the format-error streak.

    When a call ends the step, the calls after it are answered "not run" so that every call in the
    transcript has its result, then the stop goes on up.
    """
    calls = [ToolCall(id=c.id or f"call_{turn}_{i}", name=c.name, arguments=c.arguments)
             for i, c in enumerate(reply.tool_calls)]
    messages.append(assistant_message(reply.content, calls))
    if not calls:
        nudge = "Reply with exactly one tool call." if state.profile == "tiny" else \
            "Reply with tool calls: plain text does nothing here. Call step_done when the story is finished."
        messages.append({"role": "user", "content": nudge})
        return format_errors + 1
    errors = 0
    for index, call in enumerate(calls):
        try:
            output = state.answer(turn, call)
        except StepStop as stop:
            kept = stop.output + "\n" if stop.output else ""
            if isinstance(stop, StepDone):
                messages.append(tool_message(call.id, kept + ("check passed; story accepted" if stop.checked
                                              else f"story accepted ({MODEL_WORD}: no check is configured)")))
            elif not isinstance(stop, NeedsInput):
                messages.append(tool_message(call.id, f"{kept}[step ended: {stop}]"))
            why = "the question above is waiting for an answer" if isinstance(stop, NeedsInput) else "the step ended"
            messages += [tool_message(c.id, f"not run: {why}") for c in calls[index + 1:]]
            raise
        if output.startswith("error: ") and ("arguments of" in output or "unknown tool" in output
                                             or "is required" in output or "tool's name" in output):
            errors += 1
        messages.append(tool_message(call.id, output))
    return format_errors + 1 if errors == len(calls) else 0


def _too_long(exc: ModelReplyError) -> bool:
    text = str(exc).lower()
    return "context" in text or "too long" in text or ("maximum" in text and "token" in text)


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments or "{}", strict=False), sort_keys=True)
    except ValueError:
        return arguments


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
    key = {"shell": "command", "write_file": "path", "read_file": "path", "edit_file": "path",
           "search": "pattern"}.get(call.name, "")
    value = args.get(key) if key else next(iter(args.values()), "")
    return clip(str(value if value is not None else args.get("glob", "")), 120)
