"""TaskRunner end to end on one node: real git, real bwrap, scripted models, in-process controller."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import git
from tests_support import RecordingController, branch_prd, code_for, runner_for, spec_for

from agent.events import CheckpointReady, ModelOutage, StepStarted, TaskCompleted, TerminationReason
from agent.models.base import ModelUnavailable
from agent.models.scripted import ScriptedChat, scripted_model
from agent.project import task_branch
from agent.runner import Answer, Decision, TaskRunner


def test_demo_prd_runs_to_completion(greeting_project: Path) -> None:
    controller = RecordingController()
    result = runner_for(spec_for(greeting_project), controller).run()
    assert result.reason == TerminationReason.completed, result.message
    repo = git.Repo(greeting_project)
    subjects = [c.summary for c in repo.iter_commits(task_branch("T-7"), max_count=2)]
    assert subjects == ["US-002: Create goodbye file", "US-001: Create hello file"]
    stories = branch_prd(greeting_project)["userStories"]
    assert [s["passes"] for s in stories] == [True, True]  # type: ignore[index]
    assert repo.git.show(f"{task_branch('T-7')}:hello.txt").strip() == "hello"
    assert [e.step_id for e in controller.events if isinstance(e, StepStarted)] == ["US-001", "US-002"]
    completed = [e for e in controller.events if isinstance(e, TaskCompleted)]
    assert completed and len(completed[0].commits) == 2
    # The user's own checkout never changed.
    assert repo.active_branch.name == "main" and not (greeting_project / "hello.txt").exists()


def test_reject_rolls_back_and_redoes_the_step_with_the_reason(greeting_project: Path) -> None:
    controller = RecordingController(decisions=[
        Decision(approve=False, reason="say it louder", who="carol"),
        Decision(approve=True), Decision(approve=True)])
    model = scripted_model("demo")
    spec = spec_for(greeting_project, approval="each-step")
    result = runner_for(spec, controller, model).run()
    assert result.reason == TerminationReason.completed
    checkpoints = [e for e in controller.events if isinstance(e, CheckpointReady)]
    assert [c.step_id for c in checkpoints] == ["US-001", "US-001", "US-002"]
    assert all(c.needs_approval for c in checkpoints)
    # The rejected commit is gone from the branch: US-001 appears once.
    subjects = [c.summary for c in git.Repo(greeting_project).iter_commits(task_branch("T-7"), max_count=3)]
    assert subjects[:2] == ["US-002: Create goodbye file", "US-001: Create hello file"]
    assert subjects[2] != "US-001: Create hello file"
    transcript = json.loads((greeting_project / ".hearth/tasks/T-7/transcripts/US-001.attempt-1.json").read_text())
    assert "say it louder" in transcript[1]["content"]


def test_yield_at_a_checkpoint_then_resume_from_it(greeting_project: Path) -> None:
    spec = spec_for(greeting_project)
    first = runner_for(spec, RecordingController(verdicts=["yield"])).run()
    assert first.reason == TerminationReason.preempted and first.next_step == 1 and first.resume_commit
    controller = RecordingController()
    second = TaskRunner(spec, attempt_id="T-7.2-bbbbbb", attempt_no=2, controller=controller,
                        model=scripted_model("demo"), workdir=greeting_project / ".hearth/work/T-7",
                        start_step=1, resume_commit=first.resume_commit, code=code_for(spec, 2)).run()
    assert second.reason == TerminationReason.completed
    assert [e.step_id for e in controller.events if isinstance(e, StepStarted)] == ["US-002"]
    assert [s["passes"] for s in branch_prd(greeting_project)["userStories"]] == [True, True]  # type: ignore[index]


def test_a_step_that_never_passes_ends_on_budget(greeting_project: Path) -> None:
    spec = spec_for(greeting_project)
    spec.config.budget.max_turns = 3
    model = ScriptedChat([{"name": "shell", "arguments": {"command": "ls"}}] * 10)
    result = runner_for(spec, RecordingController(), model).run()
    assert result.reason == TerminationReason.budget and "US-001" in result.message


class ParkingController(RecordingController):
    def await_answer(self, step_id: str, question: str) -> Answer | None:  # type: ignore[override]
        return None


def test_a_question_parks_the_attempt_and_the_answer_resumes_the_step(greeting_project: Path) -> None:
    spec = spec_for(greeting_project, check="test -s answer.txt")
    spec.model = "scripted:ask"
    first = runner_for(spec, ParkingController(), scripted_model("ask")).run()
    assert first.reason == TerminationReason.waiting_input and first.next_step == 0
    controller = RecordingController()
    second = TaskRunner(spec, attempt_id="T-7.2-cccccc", attempt_no=2, controller=controller,
                        model=scripted_model("ask"), workdir=greeting_project / ".hearth/work/T-7",
                        start_step=0, resume_commit=first.resume_commit, answer=Answer(text="teal", who="erin"),
                        code=code_for(spec, 2))
    # Step 1 resumes with the parked conversation plus the answer; step 2 asks again and gets "42".
    result = second.run()
    assert result.reason == TerminationReason.completed, result.message
    transcript = json.loads((greeting_project / ".hearth/tasks/T-7/transcripts/US-001.attempt-2.json").read_text())
    assert {"role": "tool", "tool_call_id": transcript[2]["tool_calls"][0]["id"],
            "content": "Answer from erin: teal"} in transcript
    assert git.Repo(greeting_project).git.show(f"{task_branch('T-7')}~1:answer.txt") == "teal"


class Flaky:
    """A scripted model whose server "crashes" on the given calls (a test stand-in, not a model)."""

    def __init__(self, fail_on: set[int]) -> None:
        self.inner = scripted_model("demo")
        self.limits = self.inner.limits
        self.fail_on = fail_on
        self.calls = 0

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 *, temperature: float | None = None, max_tokens: int | None = None) -> Any:
        self.calls += 1
        if self.calls in self.fail_on:
            raise ModelUnavailable("http://127.0.0.1:9/v1/chat/completions: cannot connect: refused")
        return self.inner.complete(messages, tools, temperature=temperature, max_tokens=max_tokens)


def test_a_model_that_comes_back_lets_the_step_go_on(greeting_project: Path) -> None:
    controller = RecordingController()
    made: list[str] = []

    def factory() -> Any:  # the first restart is not ready yet; the second one answers
        made.append("try")
        if len(made) == 1:
            raise ModelUnavailable("container hearth-model-x is starting")
        return scripted_model("demo")

    runner = runner_for(spec_for(greeting_project), controller, Flaky(fail_on={2}), model_factory=factory)
    result = runner.run()
    assert result.reason == TerminationReason.completed, result.message
    outages = [e for e in controller.events if isinstance(e, ModelOutage)]
    assert [(o.step_id, o.recovered) for o in outages] == [("US-001", True)] and "cannot connect" in outages[0].message
    # The step went on with its conversation: one StepStarted per story, no redo from scratch.
    assert [e.step_id for e in controller.events if isinstance(e, StepStarted)] == ["US-001", "US-002"]
    assert [s["passes"] for s in branch_prd(greeting_project)["userStories"]] == [True, True]  # type: ignore[index]


def test_a_model_that_stays_gone_fails_the_attempt_with_a_clear_error(greeting_project: Path) -> None:
    controller = RecordingController()

    def factory() -> Any:
        raise ModelUnavailable("docker: container hearth-model-x exited (137)")

    spec = spec_for(greeting_project)
    spec.config.budget.model_wait_s = 0
    result = runner_for(spec, controller, Flaky(fail_on={1}), model_factory=factory).run()
    assert result.reason == TerminationReason.error and result.next_step == 0
    assert "model scripted:demo did not come back within 0 s: docker: container hearth-model-x exited" in result.message
    outages = [e for e in controller.events if isinstance(e, ModelOutage)]
    assert [(o.recovered, o.message) for o in outages] == [(False, "docker: container hearth-model-x exited (137)")]
