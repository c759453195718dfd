"""``TaskRunner``: drives one attempt of one task through its steps on this node.

For each step: run the agent loop in the sandbox, then checkpoint (commit with trailers, send the
commit to the head, sandbox snapshot, ``CheckpointReady``: agent/checkpoints.py). Code comes from and goes to the head
only (``agent.transport``); transcripts, check output and a parked conversation are kept there too,
so another node can resume the task and a dead node loses only its in-flight attempt.
Where the project wants approval, wait for a decision: Approve continues, Reject rolls the sandbox
and branch back to the previous checkpoint and redoes the step with the reason as feedback. At every
checkpoint boundary the runner asks its controller whether to continue, yield (pre-emption: resume
later from this checkpoint) or stop.

The controller is the only way out of the runner: the Ray task actor implements it by calling the
scheduler; tests implement it in-process.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import git
from pydantic import BaseModel

from agent.artifacts import ArtifactSink, LocalArtifactSink
from agent.build import StepBuilder
from agent.checkpoints import Checkpoints
from agent.events import (
    AgentAction,
    BuildRan,
    ClarificationRequested,
    Event,
    ModelOutage,
    ModelTurn,
    StepCompleted,
    StepStarted,
    TaskCompleted,
    TerminationReason,
)
from agent.host_git import open_task_repo, task_git_dir
from agent.loop import StepContext, StepResult, TurnUsage, run_step
from agent.messages import answer_message
from agent.models.base import ChatModel, ModelError
from agent.progress import read_progress
from agent.project import reset_workspace, task_branch
from agent.prompts import StepMemory, read_instructions
from agent.sandbox import Sandbox, SandboxConfig, open_sandbox
from agent.task_spec import Answer, Decision, TaskSpec
from agent.transport import NodeCode
from agent.writeback import seed_prd

Verdict = Literal["continue", "yield", "cancel"]


class Controller(Protocol):
    def emit(self, event: Event) -> None: ...

    def at_checkpoint(self, step_id: str) -> Verdict: ...

    def await_decision(self, step_id: str) -> Decision: ...

    def await_answer(self, step_id: str, question: str) -> Answer | None:
        """The answer now (in-process controllers), or None: park the attempt until one arrives."""
        ...


class RunResult(BaseModel):
    reason: TerminationReason
    message: str = ""
    next_step: int = 0
    """Index of the first step not yet checkpointed (where a resumed attempt starts)."""
    resume_commit: str | None = None


class ModelGone(Exception):
    """The task's model stayed unreachable for ``budget.model_wait_s``: the attempt fails (and is retried)."""


class StepEnded(Exception):
    """A step ended without being accepted (out of budget, or stuck): the attempt ends with ``reason``."""

    def __init__(self, reason: TerminationReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Parked(Exception):
    """A step asked a question and the controller chose to wait without holding the node."""

    def __init__(self, index: int, commit: str) -> None:
        super().__init__(index)
        self.index = index
        self.commit = commit


SandboxFactory = Callable[[str, Path, SandboxConfig, str], Sandbox]


def _default_sandbox(kind: str, workspace: Path, config: SandboxConfig, name: str) -> Sandbox:
    return open_sandbox(kind, workspace, config, name=name, git_dir=task_git_dir(workspace))


class TaskRunner:
    def __init__(
        self,
        spec: TaskSpec,
        *,
        attempt_id: str,
        attempt_no: int,
        controller: Controller,
        model: ChatModel,
        workdir: Path,
        code: NodeCode,
        start_step: int = 0,
        resume_commit: str | None = None,
        answer: Answer | None = None,
        sandbox_factory: SandboxFactory = _default_sandbox,
        model_factory: Callable[[], ChatModel] | None = None,
        artifact_sink: ArtifactSink | None = None,
    ) -> None:
        """``model_factory`` makes a fresh client for the task's model, restarting its server if it
        is gone; without one, a model that stops answering fails the attempt at once. ``code`` is how
        this node gets the task's commits from the head and sends its checkpoints back."""
        self.spec = spec
        self.attempt_id = attempt_id
        self.attempt_no = attempt_no
        self.controller = controller
        self.model = model
        self.workdir = workdir
        self.code = code
        self.start_step = start_step
        self.resume_commit = resume_commit
        self.answer = answer
        """The answer to the question this attempt resumes after (its conversation is in ``pending``)."""
        self.sandbox_factory = sandbox_factory
        self.model_factory = model_factory
        self.transcripts = workdir.parent.parent / "tasks" / spec.task_id / "transcripts"
        self.builder = StepBuilder(spec.config.artifacts, project=spec.config.name, task_id=spec.task_id,
                                   workspace=workdir, staging=self.transcripts.parent / "artifacts-staging")
        self.kept = Checkpoints(
            spec, attempt_id=attempt_id, attempt_no=attempt_no, workdir=workdir, code=code, builder=self.builder,
            # artifacts go to the head's store through Ray, or (in-process) to a local one
            artifact_sink=artifact_sink or LocalArtifactSink(workdir.parent.parent / "artifacts"),
            transcripts=self.transcripts, emit=self._emit)

    def _emit(self, event_type: Any, **fields: Any) -> None:
        self.controller.emit(event_type(task_id=self.spec.task_id, attempt_id=self.attempt_id, **fields))

    def _workspace(self) -> tuple[git.Repo, int]:
        """The clone to work in and the step to start from.

        Resuming (after a pre-emption or an answer) continues from the last checkpoint commit: in the
        clone this node kept, or, on another node, in a fresh clone of that commit from the head.
        Otherwise the attempt starts at step 0 from the task's base commit."""
        if self.resume_commit:
            try:
                repo = open_task_repo(self.workdir)
                repo.commit(self.resume_commit)
                if not (self.answer and repo.head.commit.hexsha == self.resume_commit):
                    # after an answer: keep the step's work; else keep the build outputs for the next build
                    reset_workspace(repo, self.resume_commit, keep=self.spec.config.artifacts.paths)
                self.code.adopt(self.resume_commit)
                return repo, self.start_step
            except (git.BadName, ValueError, git.GitCommandError, git.InvalidGitRepositoryError):
                pass
        if self.resume_commit:
            return self.code.workspace(self.resume_commit, self.workdir), self.start_step
        repo = self.code.workspace(self.spec.base_commit, self.workdir)
        if self.spec.prd_seed is not None and self.spec.prd_relpath:
            seed_prd(repo, self.spec.prd_relpath, self.spec.prd_seed, self.spec.task_id)
        return repo, 0

    def run(self) -> RunResult:
        sandbox: Sandbox | None = None
        next_step = self.start_step
        try:
            repo, next_step = self._workspace()
            cfg = self.spec.config
            sandbox = self.sandbox_factory(cfg.sandbox, self.workdir, cfg.limits,
                                           f"{self.spec.task_id}-{self.attempt_no}")
            steps = self.spec.plan.steps
            previous = (repo.head.commit.hexsha, sandbox.snapshot())
            for index in range(next_step, len(steps)):
                try:
                    previous = self._run_step(index, repo, sandbox, previous)
                except StepEnded as ended:
                    return RunResult(reason=ended.reason, message=ended.message, next_step=index)
                next_step = index + 1
                if next_step < len(steps):
                    verdict = self.controller.at_checkpoint(steps[index].id)
                    if verdict == "yield":
                        return RunResult(reason=TerminationReason.preempted, next_step=next_step,
                                         resume_commit=previous[0])
                    if verdict == "cancel":
                        return RunResult(reason=TerminationReason.cancelled, next_step=next_step)
            commits = [c.hexsha for c in repo.iter_commits(f"{self.spec.base_commit}..HEAD")]
            self._emit(TaskCompleted, branch=task_branch(self.spec.task_id), commits=commits[::-1])
            return RunResult(reason=TerminationReason.completed, next_step=len(steps))
        except Parked as parked:
            return RunResult(reason=TerminationReason.waiting_input, next_step=parked.index,
                             resume_commit=parked.commit)
        except Exception as exc:
            detail = "".join(traceback.format_exception_only(exc)).strip()
            return RunResult(reason=TerminationReason.error, message=detail, next_step=next_step)
        finally:
            if sandbox is not None:
                sandbox.destroy()
            with contextlib.suppress(Exception):  # best effort: the result matters more than a copy
                self.kept.send_transcripts()

    def _run_step(
        self, index: int, repo: git.Repo, sandbox: Sandbox, previous: tuple[str, str]
    ) -> tuple[str, str]:
        """Run, checkpoint and (if wanted) get approval for one step.

        Returns the new (commit, snapshot id); raises StepEnded when the step ran out of budget or got stuck.
        """
        spec, step = self.spec, self.spec.plan.steps[index]
        total = len(spec.plan.steps)
        self._emit(StepStarted, step_id=step.id, title=step.title, index=index, total=total)
        feedback, started, turns = "", time.monotonic(), 0
        tokens = [0, 0]  # prompt, completion: this step, all its tries
        while True:
            ctx = StepContext(
                task_id=spec.task_id,
                step=step,
                sandbox=sandbox,
                check_command=spec.config.check,
                budget=spec.config.budget,
                transcript_path=self.transcripts / f"{step.id}.attempt-{self.attempt_no}.json",
                on_action=lambda turn, tool, summary: self._emit(
                    AgentAction, step_id=step.id, turn=turn, tool=tool, summary=summary
                ),
                on_check=lambda passed, output: self.kept.check_ran(step.id, passed, output),
                on_accept=lambda: self._build(step.id, sandbox),
                on_checkpoint=lambda summary: self.kept.work_in_progress(repo, step.id, summary),
                on_turn=lambda usage: self._emit_turn(step.id, usage),
                feedback=feedback,
                memory=self._memory(index),
            )
            pending = self.kept.take_pending(step.id, self.answer)
            if pending:
                ctx.messages = pending
            result = self._converse(ctx)
            turns += result.turns
            tokens = [tokens[0] + result.prompt_tokens, tokens[1] + result.completion_tokens]
            while result.outcome == "needs_input":
                self._emit(ClarificationRequested, step_id=step.id, question=result.question)
                answer = self.controller.await_answer(step.id, result.question)
                if answer is None:
                    self.kept.park(step.id, result.messages, result.call_id)
                    commit = repo.head.commit.hexsha
                    if repo.is_dirty(untracked_files=True):  # the step's work so far goes with it
                        commit = self.kept.work_in_progress(repo, step.id, "waiting for an answer")
                    raise Parked(index, commit)
                ctx.messages = [*result.messages, answer_message(result.call_id, answer.text, answer.who)]
                result = self._converse(ctx)
                turns += result.turns
                tokens = [tokens[0] + result.prompt_tokens, tokens[1] + result.completion_tokens]
            if result.outcome in ("budget", "stuck"):
                reason = TerminationReason.stuck if result.outcome == "stuck" else TerminationReason.budget
                build = self.builder.last.get(step.id)
                problem = f"; the last build failed: {build.output.splitlines()[0]}" if build and not build.ok else ""
                raise StepEnded(reason, f"step {step.id}: {result.summary}{problem}")
            self.kept.append_progress(repo, index, result, previous[0], time.monotonic() - started)
            commit, snapshot = self.kept.checkpoint(index, repo, sandbox, result.summary, result.check_output,
                                                    previous[0], checked=result.checked,
                                                    needs_approval=self._needs_approval(index, total))
            if self._needs_approval(index, total):
                decision = self.controller.await_decision(step.id)
                if not decision.approve:
                    sandbox.restore(previous[1])
                    reset_workspace(repo, previous[0])
                    self.code.send_checkpoint(repo)
                    feedback = decision.reason or "no reason given"
                    continue
            self._emit(StepCompleted, step_id=step.id, commit=commit, turns=turns,
                       duration_s=round(time.monotonic() - started, 3),
                       prompt_tokens=tokens[0], completion_tokens=tokens[1])
            return commit, snapshot

    def _build(self, step_id: str, sandbox: Sandbox) -> str:
        """The step's build after a passing check; the problem ("" when it passed or there is none)."""
        if not self.spec.config.artifacts.enabled:
            return ""
        outcome = self.builder.build(sandbox, step_id)
        self._emit(BuildRan, step_id=step_id, passed=outcome.ok, output_tail=outcome.output[-1500:],
                   duration_s=outcome.duration_s)
        return "" if outcome.ok else outcome.output

    def _emit_turn(self, step_id: str, usage: TurnUsage) -> None:
        self._emit(ModelTurn, step_id=step_id, turn=usage.turn, prompt_tokens=usage.prompt_tokens,
                   completion_tokens=usage.completion_tokens, finish_reason=usage.finish_reason,
                   elided=usage.elided)

    def _memory(self, index: int) -> StepMemory:
        """What step ``index`` knows beyond its story: the PRD, the other stories, the progress file."""
        plan = self.spec.plan
        instructions_file, instructions = read_instructions(self.workdir)
        return StepMemory(
            prd_name=plan.name, prd_description=plan.description,
            done=[f"{story} (done before this task)" for story in plan.skipped]
            + [f"{s.id}: {s.title}" for s in plan.steps[:index]],
            todo=[f"{s.id}: {s.title}" for s in plan.steps[index + 1:]],
            progress=read_progress(self.workdir), instructions=instructions, instructions_file=instructions_file,
        )

    def _converse(self, ctx: StepContext) -> StepResult:
        """``run_step``, riding out model outages: when the model stops answering (its container
        crashed or was evicted), get it back and go on with the same conversation in the same
        sandbox. Gives up ``budget.model_wait_s`` after the step's first outage (``ModelGone``)."""
        deadline: float | None = None
        while True:
            result = run_step(ctx, self.model)
            if result.outcome != "model_lost":
                return result
            if deadline is None:
                deadline = time.monotonic() + self.spec.config.budget.model_wait_s
            ctx.messages = result.messages
            self._reconnect(ctx.step.id, result.summary, deadline)

    def _reconnect(self, step_id: str, lost: str, deadline: float) -> None:
        problem, delay = lost, 0.5
        while self.model_factory is not None:
            try:
                fresh = self.model_factory()
            except ModelError as exc:
                problem = str(exc)
            else:
                close = getattr(self.model, "close", None)
                if callable(close):
                    close()
                self.model = fresh
                self._emit(ModelOutage, step_id=step_id, model=self.spec.model, message=lost, recovered=True)
                return
            if time.monotonic() + delay > deadline:
                break
            time.sleep(delay)  # back off while the server restarts
            delay = min(delay * 2, 10.0)
        self._emit(ModelOutage, step_id=step_id, model=self.spec.model, message=problem, recovered=False)
        wait = self.spec.config.budget.model_wait_s
        raise ModelGone(f"step {step_id}: model {self.spec.model} did not come back within {wait:g} s: {problem}")

    def _needs_approval(self, index: int, total: int) -> bool:
        mode = self.spec.config.approval
        return mode == "each-step" or (mode == "final" and index == total - 1)
