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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.artifacts import ArtifactRef, ContentStore
from agent.events import CheckpointReady
from cluster.errors import RequestRefused
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


@dataclass(frozen=True)
class ArtifactFile:
    """An artifact's bytes on the head, as a download serves them."""

    path: Path
    filename: str
    """What the download is called (an image is a ``docker save`` tar)."""
    sha256: str


class ArtifactUnavailable(RequestRefused):
    """Why an artifact cannot be downloaded; ``status`` is its HTTP status (404, 409 or 410)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def artifact_file(db: Store, state_dir: Path, task_id: str, name: str, step_id: str | None = None) -> ArtifactFile:
    """The stored bytes of artifact ``name`` (the API's and the web page's downloads)."""
    found = find_artifact(db, task_id, name, step_id)
    if found is None:
        where = f" from step {step_id}" if step_id else ""
        raise ArtifactUnavailable(f"{task_id} has no artifact {name!r}{where}", 404)
    if not found["stored"]:
        raise ArtifactUnavailable(f"artifact {name} ({found['image_tag']}) lives only in its node's Docker engine; "
                                  "set [artifacts.image] export = 'save' (or 'push') to get images off the node", 409)
    path = ContentStore(state_dir / ARTIFACTS_DIR).path_of(found["sha256"])
    if not path.exists():
        gone = f"artifact {name}: its blob {found['sha256'][:12]}… is gone from the head's store"
        raise ArtifactUnavailable(gone, 410)
    filename = found["name"].replace("/", "_") + (".tar" if found["kind"] != "file" else "")
    return ArtifactFile(path=path, filename=filename, sha256=found["sha256"])
