"""What one attempt keeps: its checkpoints (commits sent to the head) and the files people read there.

A step's checkpoint writes its progress entry and marks its story done in the PRD, commits with the
``Hearth-Task/Step/Attempt`` trailers, sends the commit to the head, publishes the step's artifacts,
snapshots the sandbox and emits ``CheckpointReady``. Work in progress (the ``checkpoint`` tool, or
parking on a question) is committed and sent the same way. Transcripts, every check's whole output
and a parked conversation go to the head as blobs, so another node can resume the task.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import git

from agent.artifacts import ArtifactSink
from agent.build import StepBuilder
from agent.card import diff_excerpt
from agent.events import CheckpointReady, CheckRan
from agent.loop import StepResult
from agent.messages import answer_message
from agent.prd import PrdError, with_story_passed
from agent.progress import ProgressEntry, append_progress
from agent.project import checkpoint_commit, diff_summary
from agent.sandbox import Sandbox
from agent.sandbox.files import check_disk_limit, read_workspace_file, write_workspace_file
from agent.task_spec import Answer, TaskSpec
from agent.transport import NodeCode
from agent.writeback import record_step_done

PENDING_QUESTION = "question.json"
"""Blob (kind ``pending``) holding the conversation of a step parked on a question."""


class Checkpoints:
    """One attempt's checkpoints and the blobs it keeps on the head; ``emit`` makes and sends an event."""

    def __init__(self, spec: TaskSpec, *, attempt_id: str, attempt_no: int, workdir: Path, code: NodeCode,
                 builder: StepBuilder, artifact_sink: ArtifactSink, transcripts: Path,
                 emit: Callable[..., None]) -> None:
        self.spec = spec
        self.attempt_id = attempt_id
        self.attempt_no = attempt_no
        self.workdir = workdir
        self.code = code
        self.builder = builder
        self.artifact_sink = artifact_sink
        self.transcripts = transcripts
        self.emit = emit
        self._checks = 0

    def append_progress(self, repo: git.Repo, index: int, result: StepResult, parent: str, took: float) -> None:
        """The step's entry in .ralph-tui/progress.md, written before its checkpoint commit so it is part of it."""
        step = self.spec.plan.steps[index]
        repo.git.add("-A")
        files = [f for f in repo.git.diff("--cached", "--name-only", parent).splitlines() if f]
        entry = ProgressEntry(step_id=step.id, title=step.title, duration_s=took, files_changed=files,
                              notes=result.summary, learnings=result.learnings)
        append_progress(self.workdir, entry)

    def checkpoint(self, index: int, repo: git.Repo, sandbox: Sandbox, summary: str, check_output: str,
                   parent: str, *, checked: bool, needs_approval: bool) -> tuple[str, str]:
        """The step's checkpoint; returns its (commit, snapshot id)."""
        spec, step = self.spec, self.spec.plan.steps[index]
        check_disk_limit(self.workdir, spec.config.limits)  # before git and the snapshot copy it all
        if spec.prd_relpath and spec.plan.format == "prd-json":
            self._mark_passed(spec.prd_relpath, step.id, f"Completed by Hearth: {summary}"[:500])
        else:  # beads closed, markdown converted then marked (agent/writeback.py)
            record_step_done(self.workdir, spec.prd_relpath, spec.plan.format, step.id, summary)
        commit = checkpoint_commit(repo, task_id=spec.task_id, step_id=step.id, attempt_id=self.attempt_id,
                                   message=f"{step.id}: {step.title}")
        self.code.send_checkpoint(repo)
        self.send_transcripts()
        build = self.builder.last.get(step.id)
        artifacts = self.builder.publish(step.id, self.artifact_sink)
        snapshot = sandbox.snapshot()
        stat, files = diff_summary(repo, parent, commit)
        diff, truncated = diff_excerpt(repo, parent, commit)
        self.emit(
            CheckpointReady,
            step_id=step.id,
            commit=commit,
            snapshot_id=snapshot,
            diff_stat=stat,
            files_changed=files,
            check_summary=check_output[-500:],
            needs_approval=needs_approval,
            checked=checked,
            diff=diff,
            diff_truncated=truncated,
            build_summary=build.output[-500:] if build else "",
            artifacts=artifacts,
            final=index == len(spec.plan.steps) - 1,
        )
        return commit, snapshot

    def work_in_progress(self, repo: git.Repo, step_id: str, summary: str) -> str:
        """A checkpoint inside a step (the ``checkpoint`` tool, or parking on a question), sent to the head.
        Over the disk limit it is refused and the model is told."""
        check_disk_limit(self.workdir, self.spec.config.limits)
        checkpoint_commit(repo, task_id=self.spec.task_id, step_id=step_id, attempt_id=self.attempt_id,
                          message=f"{step_id} (work in progress): {summary}"[:200])
        return self.code.send_checkpoint(repo)

    def _mark_passed(self, relpath: str, step_id: str, notes: str) -> None:
        """Write ``passes`` into the workspace's prd.json. The file is sandbox output: a link there
        (into the user's checkout, say) is refused, never followed (``agent.sandbox.files``)."""
        data = read_workspace_file(self.workdir, relpath)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PrdError(relpath, "not UTF-8 any more (a step rewrote it)") from None
        updated = with_story_passed(text, relpath, step_id, notes)
        if updated != text:
            write_workspace_file(self.workdir, relpath, updated.encode("utf-8"))

    def check_ran(self, step_id: str, passed: bool, output: str) -> None:
        """The event carries the tail; the whole output is kept on the head (``hearth transcript``)."""
        self._checks += 1
        self.code.host.put_blob("checks", f"{step_id}.attempt-{self.attempt_no}.{self._checks}.txt",
                                output.encode())
        self.emit(CheckRan, step_id=step_id, passed=passed, output_tail=output[-1500:])

    def send_transcripts(self) -> None:
        """This attempt's step transcripts to the head (at each checkpoint, on parking, at the end)."""
        for path in sorted(self.transcripts.glob(f"*.attempt-{self.attempt_no}.json")):
            self.code.host.put_blob("transcripts", path.name, path.read_bytes())

    def park(self, step_id: str, messages: list[dict[str, Any]], call_id: str) -> None:
        """Keep the parked conversation on the head: the answer may resume it on another node."""
        body = {"step_id": step_id, "call_id": call_id, "messages": messages}
        self.code.host.put_blob("pending", PENDING_QUESTION, json.dumps(body).encode())
        self.send_transcripts()

    def take_pending(self, step_id: str, answer: Answer | None) -> list[dict[str, Any]]:
        """The parked conversation of ``step_id`` with ``answer`` appended; [] without either."""
        if answer is None:
            return []
        raw = self.code.host.get_blob("pending", PENDING_QUESTION)
        if raw is None:
            return []
        body = json.loads(raw)
        if body["step_id"] != step_id:
            return []
        messages: list[dict[str, Any]] = body["messages"]
        return [*messages, answer_message(body["call_id"], answer.text, answer.who)]
