"""The scheduler's calls for attempts' code and files: ``Scheduler`` inherits them (cluster/scheduler.py).

A node's side is agent/transport.py (through ``RayCodeHost`` in cluster/task_actor.py); the git and
file work is cluster/project_code.py, run in a thread so the scheduler's event loop keeps serving.
Every call names its attempt; a stale attempt (no longer its task's current one) gets nothing done.
Errors come back as data (a sentence naming the box, the project and the cause), never as
exceptions flung across actors.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from agent.events import AttemptEnded, TaskFailed, TerminationReason
from agent.transport import TransferError
from cluster.attempts import Attempts
from cluster.blobs import BlobNameError
from cluster.project_code import ProjectCode, PublishError
from cluster.repos import attempt_key, attempt_ref_name
from cluster.scheduling.states import TERMINAL, TaskState
from cluster.store import Store


class AttemptCodeCalls:
    store: Store
    code: ProjectCode
    attempts: Attempts

    def _box(self, node_id: str | None) -> str:
        """How a person names a node: its host name (or address) and the start of its Ray id."""
        for node in ray.nodes():
            if node_id and node["NodeID"] == node_id:
                host = node.get("NodeManagerHostname") or node.get("NodeManagerAddress") or "?"
                return f"box {host} (node {node_id[:8]})"
        return f"node {(node_id or '?')[:8]}"

    async def code_bundle(self, attempt_id: str, commit: str, have: list[str]) -> dict[str, Any]:
        """``{"bundle": bytes}`` carrying ``commit`` for the attempt's node, or ``{"error": sentence}``."""
        task = self.attempts.current(attempt_id)
        if task is None:
            return {"error": f"attempt {attempt_id} is no longer its task's current attempt"}
        try:
            data = await asyncio.to_thread(self.code.bundle, task.spec.config.name, commit, have)
        except (TransferError, ValueError) as exc:
            return {"error": f"{self._box(task.node_id)}: {exc}"}
        return {"bundle": data}

    async def code_checkpoint(self, attempt_id: str, commit: str, bundle: bytes) -> str:
        """Take a checkpoint into the head's mirror and publish the task branch; '' or what went wrong.

        A push the project's source rejects fails the task at once with that reason (retrying would
        meet the same refusal); the commits stay on the head under the attempt's ref."""
        task = self.attempts.current(attempt_id)
        if task is None:
            return f"attempt {attempt_id} is no longer its task's current attempt"
        project = task.spec.config.name
        try:
            await asyncio.to_thread(self.code.take_checkpoint, project, attempt_id, commit, bundle)
            await asyncio.to_thread(self.code.publish, project, task.spec.project_path, task.id)
        except (TransferError, ValueError) as exc:
            return f"{self._box(task.node_id)}: {exc}"
        except PublishError as exc:
            message = (f"{self._box(task.node_id)}, project {project}: {exc}; the checkpoint is kept on the head "
                       f"at {attempt_ref_name(task.id, attempt_key(attempt_id))}")
            task = self.store.task(task.id)
            if not exc.rejected or task.attempt_id != attempt_id or task.state in TERMINAL:
                self.store.update_task(task.id, message=message)  # the next checkpoint pushes again
                return ""
            self.store.end_attempt(attempt_id, TerminationReason.error.value)
            ended = AttemptEnded(task_id=task.id, attempt_id=attempt_id, reason=TerminationReason.error,
                                 message=message)
            self.store.set_state(task.id, TaskState.failed, ended, attempt_id=None, message=message)
            self.store.append_event(TaskFailed(task_id=task.id, reason=TerminationReason.error, message=message))
            return message
        return ""

    async def put_blob(self, attempt_id: str, kind: str, name: str, data: bytes) -> str:
        """Keep a file of the attempt's task on the head (cluster/blobs.py); '' or what went wrong."""
        task = self.attempts.current(attempt_id)
        if task is None:
            return f"attempt {attempt_id} is no longer its task's current attempt"
        try:
            await asyncio.to_thread(self.code.blobs.put, task.id, kind, name, data)
        except (BlobNameError, OSError) as exc:
            return str(exc)
        return ""

    async def get_blob(self, attempt_id: str, kind: str, name: str) -> bytes | None:
        task = self.attempts.current(attempt_id)
        if task is None:
            return None
        return self.code.blobs.get(task.id, kind, name)
