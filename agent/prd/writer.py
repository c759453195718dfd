"""The only writer of prd.json: ``mark_story_passed`` changes one story's ``passes`` and
``completionNotes`` and no other byte (ralph-tui's own writer re-serializes the whole file).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock

from agent.prd.model import PrdError
from agent.prd.reader import parse_prd_text, read_text


def mark_story_passed(prd_path: Path, story_id: str, completion_notes: str) -> None:
    """Set one story's ``passes`` to true and its ``completionNotes``, changing no other byte.

    Idempotent; atomic (temp file in the same directory, fsync, ``os.replace``) under a FileLock on
    ``<path>.lock``. Unlike ralph-tui it does not bump ``metadata.updatedAt``.
    """
    prd_path = Path(prd_path)
    source = str(prd_path)
    if not prd_path.is_file():
        read_text(prd_path)  # raises the right PrdError (missing, directory, unreadable)
        raise PrdError(source, "not a regular file")
    with FileLock(source + ".lock"):
        text = read_text(prd_path)
        updated = with_story_passed(text, source, story_id, completion_notes, filename_hint=prd_path.name)
        if updated != text:
            _atomic_write(Path(os.path.realpath(prd_path)), updated.encode("utf-8"))


def with_story_passed(text: str, source: str, story_id: str, completion_notes: str,
                      *, filename_hint: str = "") -> str:
    """The prd.json ``text`` with one story's ``passes`` true and its ``completionNotes`` set,
    no other byte changed (what ``mark_story_passed`` writes; the runner uses it on the workspace
    copy, which it reads and writes without following links)."""
    plan = parse_prd_text(text, source, filename_hint=filename_hint or source)
    if plan.format != "prd-json":
        raise PrdError(source, f"only prd.json files are marked here, this is {plan.format}")
    return _with_story_passed(text, source, story_id, completion_notes)


def _with_story_passed(text: str, source: str, story_id: str, notes: str) -> str:
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    body = text[len(bom) :]
    expected = json.loads(body)
    index = next((i for i, s in enumerate(expected["userStories"]) if s["id"] == story_id), None)
    if index is None:
        raise PrdError(source, f"no story with id {story_id!r}", story=story_id, field="id")
    expected["userStories"][index].update(passes=True, completionNotes=notes)
    with contextlib.suppress(ValueError, IndexError, KeyError, StopIteration):
        edited = _minimal_edit(body, index, notes)
        if json.loads(edited) == expected:
            return bom + edited
    indent = re.search(r"\n([ \t]+)\S", body)  # fallback: re-serialize in the file's own style
    rewritten = _js_json(expected, indent.group(1) if indent else None)
    return bom + rewritten + body[len(body.rstrip()) :]


def _minimal_edit(body: str, index: int, notes: str) -> str:
    """Replace the story's ``passes`` value and add or replace ``completionNotes``, nothing else."""
    top = _members(body, _skip(body, 0))
    stories_at = [m for m in top if m[0] == "userStories"][-1][3]
    story_at = _items(body, stories_at)[index]
    members = _members(body, story_at)
    edits: list[tuple[int, int, str]] = []
    *_, value_at, value_end = [m for m in members if m[0] == "passes"][-1]
    if body[value_at:value_end] != "true":
        edits.append((value_at, value_end, "true"))
    existing = [m for m in members if m[0] == "completionNotes"]
    if existing:
        *_, value_at, value_end = existing[-1]
        if json.loads(body[value_at:value_end]) != notes:
            edits.append((value_at, value_end, _js_json(notes)))
    else:  # append after the last member, copying its separator and colon style
        _, key_at, key_end, value_at, value_end = members[-1]
        before = body[members[-2][4] : key_at] if len(members) > 1 else "," + body[story_at + 1 : key_at]
        separator = before[before.index(",") :]
        colon = body[key_end:value_at]
        edits.append((value_end, value_end, f'{separator}"completionNotes"{colon}{_js_json(notes)}'))
    for start, end, replacement in sorted(edits, reverse=True):
        body = body[:start] + replacement + body[end:]
    return body


_DECODER = json.JSONDecoder()


def _skip(text: str, pos: int) -> int:
    while text[pos] in " \t\n\r":
        pos += 1
    return pos


def _members(text: str, at: int) -> list[tuple[str, int, int, int, int]]:
    """(key, key start, key end, value start, value end) of the already-valid object at ``text[at]``."""
    members = []
    pos = _skip(text, at + 1)
    while text[pos] != "}":
        key, key_end = _DECODER.raw_decode(text, pos)
        value_at = _skip(text, _skip(text, key_end) + 1)  # past the colon
        _, value_end = _DECODER.raw_decode(text, value_at)
        members.append((key, pos, key_end, value_at, value_end))
        pos = _skip(text, value_end)
        if text[pos] == ",":
            pos = _skip(text, pos + 1)
    return members


def _items(text: str, at: int) -> list[int]:
    """Start offsets of the items of the already-valid array at ``text[at]``."""
    starts = []
    pos = _skip(text, at + 1)
    while text[pos] != "]":
        starts.append(pos)
        _, end = _DECODER.raw_decode(text, pos)
        pos = _skip(text, end)
        if text[pos] == ",":
            pos = _skip(text, pos + 1)
    return starts


def _js_json(value: Any, indent: str | None = None) -> str:
    """JSON as ``JSON.stringify`` writes it: non-ASCII kept, lone surrogates escaped."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))  # mkstemp makes 0600; keep the file's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)
