"""The Ray actor that hosts ``TaskRunner`` attempts on a worker node, one after another.

The actor is detached and named (the store records which host runs which attempt), so a restarted
scheduler can find it again and keep waiting for its result. The runner runs in a thread; ``run()``
returns its result and ``result()`` waits for it again. Every
call back to the scheduler goes through ``SchedulerLink``, which re-resolves the named scheduler
and retries while it is being restarted, so a scheduler crash loses no report.

The attempt's files live under this node's own state dir (``HEARTH_STATE_DIR`` or the platform
default): ``work/<task>`` (the workspace), ``repos/<project>.git`` (the cache of the head's commits).
Code and the files a person reads move to and from the head through ``RayCodeHost``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import ray

from agent.artifacts import ArtifactRef, StagedArtifact, read_chunks
from agent.events import Event, TerminationReason
from agent.models import chat_model_for
from agent.runner import Answer, Decision, RunResult, TaskRunner, TaskSpec, Verdict
from agent.transport import NodeCode, TransferError
from cluster.local import state_dir

SCHEDULER_NAME = "hearth-scheduler"
NAMESPACE = "hearth"


HOST_PREFIX = "hearth-host-"
"""Every task host's actor name starts with this (``cluster/task_hosts.py``)."""


class SchedulerLink:
    """Calls the scheduler, surviving its restarts (retries until ``deadline_s``)."""

    def __init__(self, attempt_id: str, deadline_s: float = 120.0) -> None:
        self.attempt_id = attempt_id
        self.deadline_s = deadline_s
        self._handle: Any = None

    def call(self, method: str, *args: Any) -> Any:
        give_up = time.monotonic() + self.deadline_s
        while True:
            try:
                if self._handle is None:
                    self._handle = ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
                return ray.get(getattr(self._handle, method).remote(self.attempt_id, *args))
            except (ray.exceptions.RayActorError, ValueError):
                self._handle = None
                if time.monotonic() > give_up:
                    raise
                time.sleep(0.5)


class RayController:
    """The runner's controller, backed by the scheduler actor."""

    def __init__(self, link: SchedulerLink) -> None:
        self.link = link

    def emit(self, event: Event) -> None:
        self.link.call("report", event)

    def at_checkpoint(self, step_id: str) -> Verdict:
        verdict: Verdict = self.link.call("at_checkpoint", step_id)
        return verdict

    def await_decision(self, step_id: str) -> Decision:
        decision: Decision = self.link.call("await_decision", step_id)
        return decision

    def await_answer(self, step_id: str, question: str) -> Answer | None:
        return None  # park: free the node while people think; the answer starts a new attempt


class RayArtifactSink:
    """Artifacts go to the head through Ray's object store (boxes share no filesystem): the staged
    file is ``ray.put`` in chunks and the scheduler actor writes them into the head's store."""

    def __init__(self, link: SchedulerLink) -> None:
        self.link = link

    def store(self, staged: StagedArtifact) -> ArtifactRef:
        chunks = [ray.put(chunk) for chunk in read_chunks(Path(staged.file))] if staged.file else []
        try:
            return ArtifactRef.model_validate(
                self.link.call("store_artifact", staged.ref.model_dump(mode="json"), chunks))
        finally:
            del chunks  # release the chunks in the object store as soon as the head has them


class RayCodeHost:
    """``agent.transport.CodeHost`` over the scheduler actor: bundle bytes travel as call arguments
    and results, which Ray moves through its object store (no second server, Ray's auth)."""

    def __init__(self, link: SchedulerLink) -> None:
        self.link = link

    def bundle(self, commit: str, have: list[str]) -> bytes:
        reply = self.link.call("code_bundle", commit, have)
        if "error" in reply:
            raise TransferError(reply["error"])
        return bytes(reply["bundle"])

    def checkpoint(self, commit: str, bundle: bytes) -> None:
        problem = self.link.call("code_checkpoint", commit, bundle)
        if problem:
            raise TransferError(problem)

    def put_blob(self, kind: str, name: str, data: bytes) -> None:
        problem = self.link.call("put_blob", kind, name, data)
        if problem:
            raise TransferError(problem)

    def get_blob(self, kind: str, name: str) -> bytes | None:
        data = self.link.call("get_blob", kind, name)
        return None if data is None else bytes(data)


def node_code(link: SchedulerLink, spec: TaskSpec) -> NodeCode:
    """This node's side of the task's code: its cache of the project under the node's state dir.

    ``node-cache/``, not ``repos/``: on a head that also runs tasks the state dir is shared, and
    ``repos/`` holds the head's own mirrors (the node's fetches must never write into them)."""
    cache = state_dir() / "node-cache" / f"{spec.config.name}.git"
    return NodeCode(RayCodeHost(link), cache, spec.task_id)


class HostedAttempt:
    """One attempt on a host: its id, and its result once the runner thread ends."""

    def __init__(self, attempt_id: str) -> None:
        self.attempt_id = attempt_id
        self.done = threading.Event()
        self.result: RunResult | None = None


@ray.remote(num_cpus=0, max_concurrency=16)  # type: ignore[call-overload]
class TaskActor:
    """A warm task host: one long-lived process on one node that runs attempts one after another.

    Starting a Ray worker process (an interpreter importing Ray and the agent) took most of a short
    attempt's time, so the scheduler keeps one host per busy slot and hands it attempt after attempt
    (``cluster/task_hosts.py``). One attempt at a time: killing the host (cancel, a crash) ends exactly
    that attempt, as when each attempt had its own actor. ``run`` returns the attempt's result;
    ``result`` waits for it again (a restarted scheduler re-attaching by the host's name)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attempt: HostedAttempt | None = None
        """The attempt this host runs, or ran last (kept until the next one starts)."""

    def run(self, spec: TaskSpec, attempt_id: str, attempt_no: int, start_step: int,
            resume_commit: str | None, answer: dict[str, str] | None = None,
            gpu_index: int | None = None) -> RunResult:
        with self._lock:
            if self._attempt is not None and not self._attempt.done.is_set():
                return RunResult(reason=TerminationReason.error, next_step=start_step,
                                 message=f"its task host was still running {self._attempt.attempt_id}")
            attempt = self._attempt = HostedAttempt(attempt_id)
        gpus = None if gpu_index is None else [str(gpu_index)]
        thread = threading.Thread(target=self._run, name=f"runner-{attempt_id}", daemon=True, args=(
            attempt, spec, attempt_no, start_step, resume_commit, Answer.model_validate(answer) if answer else None,
            gpus))
        thread.start()
        return self.result(attempt_id)

    @staticmethod
    def _run(attempt: HostedAttempt, spec: TaskSpec, attempt_no: int, start_step: int,
             resume_commit: str | None, answer: Answer | None, gpus: list[str] | None) -> None:
        """``gpus``: the GPU the scheduler planned the task's model server on (``docker:`` models)."""
        model: Any = None
        try:
            link = SchedulerLink(attempt.attempt_id)
            model = chat_model_for(spec.model, gpus=gpus)
            runner = TaskRunner(
                spec,
                attempt_id=attempt.attempt_id,
                attempt_no=attempt_no,
                controller=RayController(link),
                artifact_sink=RayArtifactSink(link),
                model=model,
                workdir=state_dir() / "work" / spec.task_id,
                code=node_code(link, spec),
                start_step=start_step,
                resume_commit=resume_commit,
                answer=answer,
                model_factory=lambda: chat_model_for(spec.model, gpus=gpus),
            )
            attempt.result = runner.run()
            model = runner.model  # the runner may have replaced it after an outage
        except Exception as exc:  # the runner catches its own errors; this is set-up failing
            attempt.result = RunResult(reason=TerminationReason.error, message=f"{type(exc).__name__}: {exc}",
                                       next_step=start_step)
        finally:
            close = getattr(model, "close", None)
            if callable(close):  # the host outlives the attempt: its model client must not
                with contextlib.suppress(Exception):
                    close()
            attempt.done.set()

    def result(self, attempt_id: str) -> RunResult:
        """The result of ``attempt_id`` once it ends; an ``error`` result if this host does not run it."""
        with self._lock:
            attempt = self._attempt
        if attempt is None or attempt.attempt_id != attempt_id:
            return RunResult(reason=TerminationReason.error,
                             message=f"its task host does not run {attempt_id} (it never started there)")
        attempt.done.wait()
        assert attempt.result is not None
        return attempt.result

    def pid(self) -> int:
        return os.getpid()
