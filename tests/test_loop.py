"""The agent loop against a real bwrap sandbox, driven by scripted models (named so)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import BudgetConfig
from agent.loop import StepContext, run_step
from agent.messages import answer_message
from agent.models.base import ModelLimits
from agent.models.scripted import ScriptedChat, scripted_model
from agent.prd import Step
from agent.sandbox import SandboxConfig, open_sandbox

CHECK = "test -f hello.txt && grep -qi hello hello.txt"


def make_ctx(tmp_path: Path, **overrides: object) -> StepContext:
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    sandbox = open_sandbox("bwrap", workspace, SandboxConfig(), name="loop-test")
    fields: dict[str, object] = {
        "task_id": "T-1",
        "step": Step(id="US-001", title="Create hello file", acceptance=['hello.txt contains "hello"']),
        "sandbox": sandbox,
        "check_command": CHECK,
        "budget": BudgetConfig(max_turns=8),
        "transcript_path": tmp_path / "transcript.json",
    }
    fields.update(overrides)
    return StepContext(**fields)  # type: ignore[arg-type]


def test_step_is_accepted_only_when_the_check_passes(tmp_path: Path) -> None:
    checks: list[bool] = []
    ctx = make_ctx(tmp_path, on_check=lambda passed, output: checks.append(passed))
    model = ScriptedChat([
        {"name": "step_done", "arguments": {"summary": "done already?"}},
        {"name": "write_file", "arguments": {"path": "hello.txt", "content": "Hello, world"}},
        {"name": "step_done", "arguments": {"summary": "wrote hello.txt"}},
    ])
    result = run_step(ctx, model)
    assert result.outcome == "done" and result.turns == 3
    assert checks == [False, True]
    # The model was told why its first step_done was refused.
    refusal = model.calls[1][-1]
    assert refusal["role"] == "tool" and refusal["content"].startswith("The check failed")
    assert (tmp_path / "ws" / "hello.txt").read_text() == "Hello, world"


def test_malformed_calls_get_errors_back_not_crashes(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    model = ScriptedChat([
        {"name": "rm_rf", "arguments": {}},
        {"name": "write_file", "arguments": "{not json"},
        {"name": "write_file", "arguments": {"path": "hello.txt"}},
        "I think I should write the file now.",
        '```json\n{"tool": "write_file", "path": "x"}\n```',
        {"name": "write_file", "arguments": {"path": "../escape.txt", "content": "x"}},
        {"name": "write_file", "arguments": {"path": "hello.txt", "content": "hello"}},
        {"name": "step_done", "arguments": {"summary": "ok"}},
    ])
    result = run_step(ctx, model)
    assert result.outcome == "done"
    replies = [m["content"] for m in result.messages if m["role"] in ("tool", "user")][1:]
    assert "unknown tool 'rm_rf'" in replies[0]
    assert "not valid JSON" in replies[1]
    assert "'content' is required" in replies[2]
    assert replies[3].startswith("Reply with tool calls")
    assert any("outside the workspace" in r for r in replies)
    assert not (tmp_path / "escape.txt").exists()


def test_a_tool_name_given_as_the_file_path_is_refused(tmp_path: Path) -> None:
    """SmolLM2-135M sometimes writes a file called ``write_file``; it must not end up committed."""
    ctx = make_ctx(tmp_path)
    model = ScriptedChat([
        {"name": "write_file", "arguments": {"path": "write_file", "content": "hello"}},
        {"name": "write_file", "arguments": {"path": "hello.txt", "content": "hello"}},
        {"name": "step_done", "arguments": {"summary": "ok"}},
    ])
    result = run_step(ctx, model)
    assert result.outcome == "done"
    replies = [m["content"] for m in result.messages if m["role"] == "tool"]
    assert "'write_file' is the tool's name, not a file" in replies[0]
    assert not (ctx.sandbox.workspace / "write_file").exists()


def test_budget_ends_the_step(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, budget=BudgetConfig(max_turns=3))
    model = ScriptedChat([{"name": "shell", "arguments": {"command": "true"}}] * 5)
    result = run_step(ctx, model)
    assert result.outcome == "budget" and result.turns == 3
    assert "3 turns" in result.summary


def test_too_many_format_errors_end_the_step(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, budget=BudgetConfig(max_turns=20, max_format_errors=2))
    result = run_step(ctx, ScriptedChat(["no tools here"] * 5))
    assert result.outcome == "budget" and "malformed" in result.summary


def test_ask_user_pauses_and_the_answer_reaches_the_model_verbatim(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, check_command="grep -q teal answer.txt")
    model = scripted_model("ask")
    first = run_step(ctx, model)
    assert first.outcome == "needs_input" and first.question == "What should answer.txt say?"
    ctx.messages = [*first.messages, answer_message(first.call_id, "teal, please", "alice")]
    second = run_step(ctx, model)
    assert second.outcome == "done"
    assert (tmp_path / "ws" / "answer.txt").read_text() == "teal, please"
    tool_results = [m["content"] for m in second.messages if m["role"] == "tool"]
    assert "Answer from alice: teal, please" in tool_results


def test_transcript_is_saved(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    run_step(ctx, scripted_model("demo"))
    saved = json.loads((tmp_path / "transcript.json").read_text())
    assert saved[0]["role"] == "system" and saved[-1]["content"] == "check passed; story accepted"


@pytest.mark.parametrize("criteria,expected", [
    (['hello.txt contains "hello"'], {"hello.txt": "hello\n"}),
    (["notes.md exists"], {"notes.md": ""}),
])
def test_scripted_demo_model_follows_criteria(tmp_path: Path, criteria: list[str], expected: dict[str, str]) -> None:
    ctx = make_ctx(tmp_path, step=Step(id="S", title="t", acceptance=criteria), check_command="")
    assert run_step(ctx, scripted_model("demo")).outcome == "done"
    for name, content in expected.items():
        assert (tmp_path / "ws" / name).read_text() == content


def test_tiny_models_repeating_a_call_get_the_tool_result_and_then_the_check(tmp_path: Path) -> None:
    """The tiny prompt class only: a 135M model repeats its last action instead of saying it is done."""
    tiny = ModelLimits(context_window=4096, max_output_tokens=512, prompt="tiny")
    write = {"name": "write_file", "arguments": {"path": "hello.txt", "content": "hello"}}
    checks: list[bool] = []
    ctx = make_ctx(tmp_path, on_check=lambda passed, output: checks.append(passed))
    model = ScriptedChat([write, write, {"name": "shell", "arguments": {"command": "ls"}}], limits=tiny)
    result = run_step(ctx, model)
    assert result.outcome == "done" and result.turns == 2 and checks == [True]
    last = result.messages[-1]["content"]
    assert last.startswith("wrote 5 characters") and "already made exactly this call" in last
    # Repeating a call while the check still fails: the tool's result, then why the check failed.
    (tmp_path / "b").mkdir()
    ctx = make_ctx(tmp_path / "b", check_command="test -f missing.txt")
    model = ScriptedChat([{"name": "shell", "arguments": {"command": "echo hi"}}] * 2 +
                         [{"name": "write_file", "arguments": {"path": "missing.txt", "content": ""}}], limits=tiny)
    result = run_step(ctx, model)
    assert result.outcome == "done"
    repeated = model.calls[2][-1]["content"]
    assert repeated.startswith("exit code 0\nhi") and "The check failed" in repeated
