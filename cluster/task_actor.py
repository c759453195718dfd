"""The Ray actor that hosts one ``TaskRunner`` attempt on a worker node.

The actor is detached and named after its attempt, so a restarted scheduler can find it again
and keep waiting for its result. The runner runs in a thread; ``result()`` waits for it. Every
call back to the scheduler goes through ``SchedulerLink``, which re-resolves the named scheduler
and retries while it is being restarted, so a scheduler crash loses no report.

The attempt's files live under this node's own state dir (``HEARTH_STATE_DIR`` or the platform
default): ``work/<task>`` (the workspace), ``repos/<project>.git`` (the cache of the head's commits).
Code and the files a person reads move to and from the head through ``RayCodeHost``.
"""

from __future__ import annotations

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


def attempt_actor_name(attempt_id: str) -> str:
    return f"hearth-attempt-{attempt_id}"


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
    """This node's side of the task's code: its cache of the project under the node's state dir."""
    cache = state_dir() / "repos" / f"{spec.config.name}.git"
    return NodeCode(RayCodeHost(link), cache, spec.task_id)


@ray.remote(num_cpus=0, max_concurrency=4)  # type: ignore[call-overload]
class TaskActor:
    def __init__(self, spec: TaskSpec, attempt_id: str, attempt_no: int, start_step: int,
                 resume_commit: str | None, answer: dict[str, str] | None = None,
                 gpu_index: int | None = None) -> None:
        self.spec = spec
        self.attempt_id = attempt_id
        self.attempt_no = attempt_no
        self.start_step = start_step
        self.resume_commit = resume_commit
        self.answer = Answer.model_validate(answer) if answer else None
        self.gpus = None if gpu_index is None else [str(gpu_index)]
        """The GPU the scheduler planned the task's model server on (``docker:`` models)."""
        self._done = threading.Event()
        self._result: RunResult | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"runner-{self.attempt_id}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            link = SchedulerLink(self.attempt_id)
            model = chat_model_for(self.spec.model, gpus=self.gpus)
            runner = TaskRunner(
                self.spec,
                attempt_id=self.attempt_id,
                attempt_no=self.attempt_no,
                controller=RayController(link),
                artifact_sink=RayArtifactSink(link),
                model=model,
                workdir=state_dir() / "work" / self.spec.task_id,
                code=node_code(link, self.spec),
                start_step=self.start_step,
                resume_commit=self.resume_commit,
                answer=self.answer,
                model_factory=lambda: chat_model_for(self.spec.model, gpus=self.gpus),
            )
            self._result = runner.run()
        except Exception as exc:  # the runner catches its own errors; this is set-up failing
            self._result = RunResult(reason=TerminationReason.error, message=f"{type(exc).__name__}: {exc}",
                                     next_step=self.start_step)
        finally:
            self._done.set()

    def result(self) -> RunResult:
        self._done.wait()
        assert self._result is not None
        return self._result
