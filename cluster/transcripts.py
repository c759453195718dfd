"""What ``hearth transcript T-1 [STEP]`` and ``GET /v1/tasks/{id}/transcripts`` show: the step
conversations and check outputs that attempts sent to the head (cluster/blobs.py), by step.

Blob names (written by agent/runner.py): ``transcripts/<step>.attempt-<n>.json`` and
``checks/<step>.attempt-<n>.<k>.txt`` (the k-th check run of that step in that attempt).
"""

from __future__ import annotations

import json
import re
from typing import Any

from cluster.blobs import BlobStore

TRANSCRIPT = re.compile(r"^(?P<step>.+)\.attempt-(?P<attempt>\d+)\.json$")
CHECK = re.compile(r"^(?P<step>.+)\.attempt-(?P<attempt>\d+)\.(?P<run>\d+)\.txt$")


def steps(blobs: BlobStore, task_id: str) -> list[dict[str, Any]]:
    """Each step with a transcript on the head: its id and the attempts that worked on it."""
    found: dict[str, list[int]] = {}
    for name in blobs.names(task_id, "transcripts"):
        if match := TRANSCRIPT.match(name):
            found.setdefault(match["step"], []).append(int(match["attempt"]))
    return [{"step_id": step, "attempts": sorted(attempts)} for step, attempts in found.items()]


def step_record(blobs: BlobStore, task_id: str, step_id: str) -> dict[str, Any] | None:
    """A step's conversation per attempt and its check outputs, oldest first (None: nothing kept)."""
    attempts = []
    for name in blobs.names(task_id, "transcripts"):
        match = TRANSCRIPT.match(name)
        if match and match["step"] == step_id:
            raw = blobs.get(task_id, "transcripts", name) or b"[]"
            attempts.append({"attempt": int(match["attempt"]), "messages": json.loads(raw)})
    checks = []
    for name in blobs.names(task_id, "checks"):
        match = CHECK.match(name)
        if match and match["step"] == step_id:
            output = (blobs.get(task_id, "checks", name) or b"").decode(errors="replace")
            checks.append({"attempt": int(match["attempt"]), "run": int(match["run"]), "output": output})
    if not attempts and not checks:
        return None
    attempts.sort(key=lambda a: a["attempt"])
    checks.sort(key=lambda c: (c["attempt"], c["run"]))
    return {"task_id": task_id, "step_id": step_id, "attempts": attempts, "checks": checks}
