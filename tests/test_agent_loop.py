"""The loop's behaviour with capable models, one test per verified failure of the old loop, plus the
context window. Scripted models stand in for real ones (named so) against a real bwrap sandbox."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tests_support import RecordingController, runner_for, spec_for

from agent.config import BudgetConfig
from agent.context import ContextWindow
from agent.events import ModelTurn, StepCompleted, TerminationReason
from agent.loop import StepContext, run_step
from agent.models.base import ChatReply, ModelLimits, ModelReplyError, Usage
from agent.models.scripted import ScriptedChat, scripted_reply
from agent.prd import Step
from agent.sandbox import SandboxConfig, open_sandbox
from agent.tools import tool_schemas


def make_ctx(tmp_path: Path, check: str, **overrides: Any) -> StepContext:
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    fields: dict[str, Any] = {
        "task_id": "T-1", "step": Step(id="US-001", title="Work on files"),
        "sandbox": open_sandbox("bwrap", workspace, SandboxConfig(), name="loop-capable"),
        "check_command": check, "budget": BudgetConfig(max_turns=12), "transcript_path": tmp_path / "t.json",
    }
    fields.update(overrides)
    return StepContext(**fields)


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def results(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "tool"]


def test_a_repeated_call_runs_the_tool_and_never_the_check_in_its_place(tmp_path: Path) -> None:
    """Old loop: re-running the same test command after an edit accepted the step at turn 3."""
    checks: list[bool] = []
    ctx = make_ctx(tmp_path, "grep -q v2 notes.txt", on_check=lambda passed, output: checks.append(passed))
    model = ScriptedChat([
        call("write_file", path="notes.txt", content="v1\n"),
        call("shell", command="cat notes.txt"),
        call("edit_file", path="notes.txt", old_text="v1", new_text="v2"),
        call("shell", command="cat notes.txt"),         # the same call again: must show the new content
        call("read_file", path="notes.txt"),
        call("write_file", path="more.txt", content="the rest of the work\n"),
        call("step_done", summary="both files"),
    ])
    result = run_step(ctx, model)
    assert result.outcome == "done" and result.turns == 7
    out = results(result.messages)
    assert out[1].startswith("exit code 0\nv1") and out[3].startswith("exit code 0\nv2")
    assert "already made exactly this call at turn 2" in out[3] and "check" not in out[3].lower().split("[note")[0]
    assert out[4].startswith("1\tv2")
    assert checks == [True]  # the check ran once, when the model said it was done
    assert (ctx.sandbox.workspace / "more.txt").exists()


def test_every_call_of_a_reply_runs_in_order_and_gets_its_own_answer(tmp_path: Path) -> None:
    """Old loop: only the first tool call of a reply ran; the others were dropped silently."""
    ctx = make_ctx(tmp_path, "test -f a.txt && test -f b.txt")
    model = ScriptedChat([
        [call("write_file", path="a.txt", content="A"), call("write_file", path="b.txt", content="B"),
         call("shell", command="cat a.txt b.txt")],
        [call("step_done", summary="done"), call("shell", command="touch late.txt")],
    ])
    result = run_step(ctx, model)
    assert result.outcome == "done" and result.turns == 2
    first = result.messages[2]
    ids = [c["id"] for c in first["tool_calls"]]
    answers = [m for m in result.messages[3:6] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in answers] == ids and len(set(ids)) == 3
    assert answers[2]["content"] == "exit code 0\nAB"
    # A call after the one that ended the step is answered, not silently dropped, and not run.
    assert result.messages[-1]["content"] == "not run: the step ended"
    assert not (ctx.sandbox.workspace / "late.txt").exists()


def test_a_reply_cut_at_max_tokens_runs_nothing_and_the_model_is_told_to_write_smaller_pieces(tmp_path: Path) -> None:
    """Old loop: max_tokens fixed at 512, finish_reason never read, and a 'not valid JSON' mystery."""
    limits = ModelLimits(context_window=8192, max_output_tokens=600)
    ctx = make_ctx(tmp_path, "test $(wc -c < big.txt) -ge 6000")
    part = "x" * 3100
    model = ScriptedChat([
        {"name": "write_file", "arguments": '{"path": "big.txt", "content": "' + "x" * 2000,
         "finish_reason": "length"},
        call("write_file", path="big.txt", content=part),
        call("write_file", path="big.txt", content=part, append=True),
        call("step_done", summary="written in two parts"),
    ], limits=limits)
    result = run_step(ctx, model)
    assert result.outcome == "done"
    told = model.calls[1][-1]
    assert told["role"] == "user" and "cut off at the 600-token limit" in told["content"]
    assert "none of its tool calls ran" in told["content"] and "not valid JSON" not in json.dumps(model.calls)
    assert (ctx.sandbox.workspace / "big.txt").read_text() == part * 2
    assert all(m is not None and m <= 600 for m in model.max_tokens)


def test_identical_actions_in_a_row_end_the_step_as_stuck_with_every_result_kept(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, "false", budget=BudgetConfig(max_turns=20, stuck_after=4))
    result = run_step(ctx, ScriptedChat([call("shell", command="echo same")] * 10))
    assert result.outcome == "stuck" and result.turns == 4
    assert "same shell call 4 times in a row" in result.summary
    out = results(result.messages)
    assert len(out) == 4 and all(o.startswith("exit code 0\nsame") for o in out)
    assert "already made exactly this call" not in out[0]
    assert all("already made exactly this call at turn 1" in o for o in out[1:])


def test_a_stuck_step_ends_the_attempt_with_reason_stuck(greeting_project: Path) -> None:
    spec = spec_for(greeting_project)
    spec.config.budget.stuck_after = 3
    model = ScriptedChat([call("read_file", path="check.py")] * 5)
    result = runner_for(spec, RecordingController(), model).run()
    assert result.reason == TerminationReason.stuck and "3 times in a row" in result.message


def test_tokens_are_counted_per_turn_and_step(greeting_project: Path) -> None:
    controller = RecordingController()
    runner_for(spec_for(greeting_project), controller).run()
    turns = [e for e in controller.events if isinstance(e, ModelTurn)]
    steps = [e for e in controller.events if isinstance(e, StepCompleted)]
    assert len(steps) == 2 and all(t.prompt_tokens > 0 and t.completion_tokens > 0 for t in turns)
    for step in steps:
        mine = [t for t in turns if t.step_id == step.step_id]
        assert len(mine) == step.turns
        assert step.prompt_tokens == sum(t.prompt_tokens for t in mine) > 0
        assert step.completion_tokens == sum(t.completion_tokens for t in mine) > 0


class TokenCountingServer:
    """A scripted stand-in for a model server with its own tokenizer (2.2 characters a token, fewer
    than the loop assumes) that refuses, as vLLM does, any request whose prompt plus max_tokens
    exceeds its window. It lists files with varied long outputs, then says it is done."""

    def __init__(self, limits: ModelLimits, turns: int) -> None:
        self.name = "scripted:token-counting-server"
        self.limits = limits
        self.turns = turns
        self.sent: list[tuple[int, int, list[dict[str, Any]]]] = []

    def count(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
        return math.ceil(len(json.dumps(messages) + json.dumps(tools)) / 2.2)

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 *, temperature: float | None = None, max_tokens: int | None = None) -> ChatReply:
        prompt = self.count(messages, tools)
        assert max_tokens is not None
        if prompt + max_tokens > self.limits.context_window:
            raise ModelReplyError(f"HTTP 400: maximum context length is {self.limits.context_window} tokens, "
                                  f"got {prompt} + {max_tokens}")
        self.sent.append((prompt, max_tokens, messages))
        n = len(self.sent)
        item = call("shell", command=f"seq {n} {n + 700}") if n < self.turns else call("step_done", summary="ok")
        reply = scripted_reply(item)
        return reply.model_copy(update={"usage": Usage(prompt_tokens=prompt, completion_tokens=20)})


def test_a_conversation_driven_past_the_window_never_sends_a_request_that_does_not_fit(tmp_path: Path) -> None:
    limits = ModelLimits(context_window=4096, max_output_tokens=1024)
    ctx = make_ctx(tmp_path, "true", budget=BudgetConfig(max_turns=40),
                   step=Step(id="US-9", title="List numbers", description="THE-STORY-MARKER"))
    server = TokenCountingServer(limits, turns=30)
    result = run_step(ctx, server)
    assert result.outcome == "done" and result.turns == 30
    window = limits.context_window
    assert all(prompt + reply <= window for prompt, reply, _ in server.sent)
    total_output = sum(len(m["content"]) for m in result.messages if m["role"] == "tool")
    assert total_output > 4 * window * 2.2  # the conversation really outgrew the window many times over
    last = server.sent[-1][2]
    assert last[0]["role"] == "system" and "THE-STORY-MARKER" in last[1]["content"]
    assert "seq 29 729" in json.dumps(last[-3:])  # the latest turns are kept as they were
    assert any("elided to fit the context window" in str(m.get("content")) or "were dropped" in str(m.get("content"))
               for m in last)
    # The transcript keeps everything: every output whole, nothing elided.
    saved = json.loads(ctx.transcript_path.read_text())
    assert not any("elided" in str(m.get("content")) for m in saved)
    assert sum(1 for m in saved if m["role"] == "tool") == 30


def test_context_window_fits_a_huge_last_message_by_clipping_it() -> None:
    limits = ModelLimits(context_window=2048, max_output_tokens=512)
    window = ContextWindow(limits, tool_schemas("capable"))
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "story"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "shell", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "y" * 40_000}]
    fitted = window.fit(messages)
    assert fitted.estimate + fitted.max_tokens <= limits.context_window and fitted.max_tokens >= 256
    assert "characters cut to fit the window" in fitted.messages[-1]["content"]
    assert messages[-1]["content"] == "y" * 40_000  # the conversation itself is untouched


def test_context_window_fits_a_huge_recent_file_write_by_stripping_its_arguments() -> None:
    limits = ModelLimits(context_window=2048, max_output_tokens=512)
    window = ContextWindow(limits, tool_schemas("capable"))
    big = json.dumps({"path": "data.txt", "content": "z" * 30_000})
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "story"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "write_file", "arguments": big}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "wrote 30000 characters"}]
    fitted = window.fit(messages)
    assert fitted.estimate + fitted.max_tokens <= limits.context_window and fitted.max_tokens >= 256
    sent = json.loads(fitted.messages[2]["tool_calls"][0]["function"]["arguments"])
    assert sent == {"path": "data.txt", "content": "[30000 characters elided]"}
