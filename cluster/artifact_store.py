"""The head's artifact store: build outputs of every task, content-addressed, under the state dir.

Boxes share no filesystem, so bytes travel through Ray's object store: the attempt on the worker
``ray.put``s a staged artifact in chunks and hands the references to the scheduler actor
(``Scheduler.store_artifact``), which writes them here through ``ContentStore`` (verified sha256 and
size, renamed into place only when whole). Which artifacts a task has is read from its
``CheckpointReady`` events: the event is journaled after every artifact of its step is stored, so
nothing listed is missing, and a later checkpoint of the same step (a redo after a reject) replaces
the earlier one's list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.artifacts import ArtifactRef, ContentStore
from agent.events import CheckpointReady
from cluster.store import Store

ARTIFACTS_DIR = "artifacts"


class HeadArtifactStore:
    def __init__(self, state_dir: Path) -> None:
        self.content = ContentStore(state_dir / ARTIFACTS_DIR)

    async def receive(self, ref: ArtifactRef, chunks: list[Any]) -> ArtifactRef:
        """Write ``chunks`` (Ray object refs of bytes, in order) as ``ref``'s blob."""
        if not ref.stored:
            return ref
        blob = self.content.open_blob(sha256=ref.sha256, size=ref.size, name=ref.name)
        try:
            for chunk in chunks:
                blob.write(await chunk)
            blob.commit()
        finally:
            blob.abort()
        return ref


def checkpoints(db: Store, task_id: str) -> list[CheckpointReady]:
    """Each step's latest checkpoint, in step order of first appearance."""
    latest: dict[str, CheckpointReady] = {}
    after = 0
    while batch := db.events(task_id, after):
        for event in batch:
            after = event.seq or after
            if isinstance(event, CheckpointReady):
                latest[event.step_id] = event
    return list(latest.values())


def task_artifacts(db: Store, task_id: str) -> list[dict[str, Any]]:
    """Every artifact of a task: its reference plus ``step_id`` and ``commit``."""
    return [{**ref.model_dump(mode="json"), "step_id": cp.step_id, "commit": cp.commit}
            for cp in checkpoints(db, task_id) for ref in cp.artifacts]


def find_artifact(db: Store, task_id: str, name: str, step_id: str | None = None) -> dict[str, Any] | None:
    """The artifact called ``name`` from ``step_id`` (default: the last step that has one)."""
    found = [a for a in task_artifacts(db, task_id) if a["name"] == name and step_id in (None, a["step_id"])]
    return found[-1] if found else None
