"""Writing a finished step back into the PRD, the way each format's own tool would.

* ``prd-json``: ``passes: true`` and ``completionNotes`` (``agent.prd.mark_story_passed``).
* ``ralph-markdown``: ralph-tui never ticks a markdown PRD off; it converts it once
  (``ralph-tui convert --to json``) and tracks the JSON. Hearth does the same: the task branch gains
  the converted ``prd.json`` beside the markdown (the same bytes the converter writes: 2-space
  indent, no trailing newline), and that file is written back.
* ``beads-jsonl``: the step's issue is closed in ``.beads/issues.jsonl`` as ``bd close`` leaves
  it: ``"status":"closed"``, ``updated_at`` and ``closed_at`` set to the same RFC 3339 time, and a
  ``close_reason``, in bd's field order (``internal/types/types.go``: …, ``updated_at``,
  ``closed_at``, ``close_reason``, …). Only that line changes, and in it only those members: the
  edit is textual and checked by parsing the result.

``seed_prd`` puts a PRD that was not committed when it was submitted onto the task branch first.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import git

from agent.prd import PrdError, TaskPlan, load_prd, mark_story_passed

CONVERTER_VERSION = "1.0.0"
"""``metadata.version`` as ralph-tui's converter writes it."""


def bd_timestamp(now: dt.datetime | None = None) -> str:
    """Go's RFC 3339 with fractional seconds, trailing zeros trimmed, UTC as ``Z`` (bd's JSON time)."""
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return text + (f".{fraction}" if fraction else "") + "Z"


def go_json(value: Any) -> str:
    """``json.Marshal``'s bytes: compact, UTF-8 kept, ``<``, ``>``, ``&``, U+2028/9 escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def _members(line: str) -> list[tuple[str, int, int]]:
    """(key, value start, value end) of each top-level member of a one-line JSON object."""
    decoder = json.JSONDecoder()
    found: list[tuple[str, int, int]] = []
    pos = line.index("{") + 1
    while True:
        match = re.compile(r'\s*(?:,\s*)?(")').match(line, pos)
        if not match:
            return found
        key, pos = json.decoder.scanstring(line, match.end(1))  # type: ignore[attr-defined]
        colon = re.compile(r"\s*:\s*").match(line, pos)
        assert colon is not None
        _, end = decoder.raw_decode(line, colon.end())
        found.append((key, colon.end(), end))
        pos = end


def close_bead_line(line: str, reason: str, now: str) -> str:
    """The JSONL line of an issue after ``bd close --reason``; other members keep their bytes."""
    record = json.loads(line)
    expected = dict(record)
    expected.update(status="closed", updated_at=now, closed_at=now, close_reason=reason)
    spans = {key: (start, end) for key, start, end in _members(line)}
    edits: list[tuple[int, int, str]] = []
    for key in ("status", "updated_at", "closed_at", "close_reason"):
        if key in spans:
            edits.append((*spans[key], go_json(expected[key])))
    missing = [key for key in ("closed_at", "close_reason") if key not in spans]
    if missing:
        after = max((spans[k][1] for k in ("updated_at", "started_at") if k in spans), default=None)
        if after is None:
            after = max(end for _, end in spans.values())
        edits.append((after, after, "".join(f',"{key}":{go_json(expected[key])}' for key in missing)))
    edited = line
    for start, end, text in sorted(edits, reverse=True):
        edited = edited[:start] + text + edited[end:]
    if json.loads(edited) != expected:  # the textual edit went wrong: write it as bd would, whole
        order = list(record)
        for key in missing:
            order.insert(order.index("updated_at") + 1 if "updated_at" in order else len(order), key)
        edited = go_json({key: expected[key] for key in dict.fromkeys([*order, *expected])})
    return edited


def close_bead(path: Path, issue_id: str, reason: str, now: str | None = None) -> bool:
    """Close ``issue_id`` in a beads JSONL export; False if it was already closed (nothing written)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    for number, raw in enumerate(lines):
        text = raw.decode("utf-8")
        body = text.rstrip("\r")
        if not body.strip() or f'"{issue_id}"' not in body:
            continue
        record = json.loads(body)
        if record.get("id") != issue_id or record.get("_type", "issue") != "issue":
            continue
        if record.get("status") == "closed":
            return False
        closed = close_bead_line(body, reason, now or bd_timestamp())
        lines[number] = (closed + text[len(body):]).encode("utf-8")
        _atomic_write(path, b"\n".join(lines))
        return True
    raise PrdError(str(path), f"no issue {issue_id!r} to close", story=issue_id)


def converted_json_path(markdown: Path) -> Path:
    """Where the converted prd.json goes: ``prd.json`` beside the markdown, unless another PRD has it."""
    beside = markdown.with_name("prd.json")
    if beside.exists():
        try:
            source = json.loads(beside.read_text(encoding="utf-8")).get("metadata", {}).get("sourcePrd")
        except (ValueError, AttributeError):
            source = None
        if source != markdown.name:
            return markdown.with_name(f"{markdown.stem}.json")
    return beside


def markdown_to_prd_json(markdown: Path, plan: TaskPlan, created_at: str) -> str:
    """What ``ralph-tui convert --to json`` writes for this markdown PRD (stories in file order)."""
    text = markdown.read_text(encoding="utf-8")
    position = {step.id: text.find(f"{step.id}:") for step in plan.steps}
    ordered = sorted(plan.steps, key=lambda s: position[s.id])
    stories = []
    for number, step in enumerate(ordered):
        section = text[position[step.id]:position[ordered[number + 1].id] if number + 1 < len(ordered) else None]
        explicit = re.search(r"\*\*Priority:\*\*\s*P?(\d)", section)
        # The plan clamps P0 to 1 for ordering; the converter writes the 0 it read.
        priority = 0 if explicit and explicit.group(1) == "0" else step.priority
        stories.append({"id": step.id, "title": step.title, "description": step.description,
                        "acceptanceCriteria": step.acceptance, "priority": priority, "passes": False,
                        "labels": step.labels, "dependsOn": step.depends_on})
    document: dict[str, Any] = {"name": plan.name}
    if plan.description:
        document["description"] = plan.description
    if plan.branch_name:
        document["branchName"] = plan.branch_name
    document["userStories"] = stories
    document["metadata"] = {"createdAt": created_at, "version": CONVERTER_VERSION, "sourcePrd": markdown.name}
    return json.dumps(document, indent=2, ensure_ascii=False)


def ensure_converted(markdown: Path) -> Path:
    """The prd.json tracking ``markdown``, converted now if the branch does not have it yet."""
    target = converted_json_path(markdown)
    if not target.exists():
        created = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        _atomic_write(target, markdown_to_prd_json(markdown, load_prd(markdown), created).encode("utf-8"))
    return target


def record_step_done(workspace: Path, prd_relpath: str | None, fmt: str, step_id: str, summary: str) -> list[str]:
    """Write a finished step back into the PRD in ``workspace``; the files it changed (relative)."""
    if not prd_relpath:
        return []
    path = workspace / prd_relpath
    notes = f"Completed by Hearth: {summary}"[:500]
    if fmt == "prd-json":
        mark_story_passed(path, step_id, notes)
        return [prd_relpath]
    if fmt == "ralph-markdown":
        target = ensure_converted(path)
        mark_story_passed(target, step_id, notes)
        return [str(target.relative_to(workspace))]
    if fmt == "beads-jsonl":
        close_bead(path, step_id, notes)
        return [prd_relpath]
    return []  # bd --json output or API text: there is no file to write back


def seed_prd(repo: git.Repo, prd_relpath: str, text: str, task_id: str) -> bool:
    """Commit the PRD as submitted on the task branch (it was not committed at submit); False if
    the branch already has exactly that text."""
    path = Path(str(repo.working_tree_dir)) / prd_relpath
    data = text.encode("utf-8")
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data)
    repo.git.add("-f", "--", prd_relpath)
    repo.git.commit("--no-verify", "-m", f"hearth: add {prd_relpath} as submitted\n\n"
                    f"It was not committed when task {task_id} was submitted.")
    return True


def _atomic_write(path: Path, data: bytes) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
