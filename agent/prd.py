"""PRDs in, ordered steps out: ralph-tui prd.json, ralph markdown PRDs and beads issues.

    ValueError
    └── PrdError        bad PRD input; str() names the file, the story and the field

``load_prd``/``parse_prd_text`` detect the format, validate it with ralph-tui's rules plus Hearth's
stricter ones (unknown dependencies and cycles are errors), and order the open steps: dependencies
first, then priority (1 = highest), then id. ``mark_story_passed`` is the only writer of prd.json and
changes nothing but the one story's ``passes``/``completionNotes``. Formats: docs/prd-formats.md.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Literal, NoReturn

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field

PrdFormat = Literal["prd-json", "ralph-markdown", "beads-jsonl", "beads-json"]


MAX_PRD_BYTES = 2**20
"""The largest PRD accepted (1 MiB, some thousand stories): a PRD is a plan, and every scheduler
cycle and approval card works from it, so a bigger one is refused at submit."""


def _too_big(source: str) -> PrdError:
    return PrdError(source, f"larger than the {MAX_PRD_BYTES // 1024} KiB a PRD may be; split it into several PRDs")


class PrdError(ValueError):
    """Bad PRD input, e.g. "tasks/prd.json: story US-002: field dependsOn: unknown story id 'US-009'"."""

    def __init__(self, file: str, problem: str, story: str | None = None, field: str | None = None):
        self.file, self.problem, self.story, self.field = file, problem, story, field
        where = [file] + [f"story {story}"] * (story is not None) + [f"field {field}"] * (field is not None)
        super().__init__(": ".join([*where, problem]))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across Ray actors despite the extra fields
        return (type(self), (self.file, self.problem, self.story, self.field))


class Step(BaseModel):
    """One user story or one leaf bead: what an agent is asked to finish in one attempt."""

    model_config = ConfigDict(extra="forbid")

    id: str
    title: str
    description: str = ""
    acceptance: list[str] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list)  # open steps only: finished ones are dropped
    priority: int = 2  # Ralph semantics, 1 = highest; beads 0-4 map to 1-5
    labels: list[str] = Field(default_factory=list)
    notes: str = ""


class TaskPlan(BaseModel):
    """A PRD reduced to what a scheduler needs: the open steps in the order to run them."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    branch_name: str | None = None
    source: str  # the path as given, or "<request>" for API bodies
    format: PrdFormat
    steps: list[Step]  # dependencies first, then priority (lower first), then id
    skipped: list[str] = Field(default_factory=list)  # passes:true stories / closed beads

    def plan_json(self) -> dict[str, Any]:
        steps = [{"id": s.id, "title": s.title, "depends_on": list(s.depends_on)} for s in self.steps]
        return {"name": self.name, "steps": steps}


# --- reading and format detection ---------------------------------------------------------------


def load_prd(path: Path) -> TaskPlan:
    """Read a PRD file of any supported format; every problem, including I/O, is a PrdError."""
    path = Path(path)
    return parse_prd_text(_read_text(path), str(path), filename_hint=path.name)


def parse_prd_text(text: str, source: str, *, filename_hint: str = "") -> TaskPlan:
    """Parse PRD text (the HTTP API's entry point); ``filename_hint`` helps tell JSONL from JSON."""
    hint = filename_hint or source
    if len(text) > MAX_PRD_BYTES or len(text.encode("utf-8", errors="surrogatepass")) > MAX_PRD_BYTES:
        raise _too_big(source)
    body = text.removeprefix("\ufeff")
    if not body.strip():
        raise PrdError(source, "empty file: no PRD")
    if "\x00" in body:
        raise PrdError(source, "binary data: neither JSON, JSONL nor a markdown PRD")
    if hint.lower().endswith(".jsonl"):
        return _beads_plan(_jsonl_values(body, source), source, hint, "beads-jsonl")
    if body.lstrip()[0] in "{[" or hint.lower().endswith(".json"):
        first = body.lstrip().split("\n", 1)[0]
        with contextlib.suppress(PrdError):  # 2+ lines and the first is a whole object: one issue per line
            if "\n" in body.strip() and isinstance(_json_value(first, source), dict):
                return _beads_plan(_jsonl_values(body, source), source, hint, "beads-jsonl")
        return _from_json(_json_value(body, source), source, hint)
    from agent import prd_markdown  # deferred: the format adapters import this module's models

    if prd_markdown.looks_like_markdown_prd(body):
        name, description, branch, steps = prd_markdown.parse_markdown(body, source)
        _check_ids(source, steps, "Depends on")
        return _plan(source, "ralph-markdown", name, description, branch, steps, set(), "Depends on")
    raise PrdError(source, "neither JSON, JSONL nor a markdown PRD (no '# PRD: Title' line and no "
                           "'### US-001: Title' story heading)")


def _read_text(path: Path) -> str:
    try:  # O_NONBLOCK: a FIFO named as a PRD must not block the reader (the scheduler) for ever
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except IsADirectoryError:
        raise PrdError(str(path), "is a directory, not a PRD file") from None
    except OSError as exc:
        raise PrdError(str(path), f"cannot read: {exc.strerror or exc}") from None
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise PrdError(str(path), "is a directory, not a PRD file")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PrdError(str(path), "is not a regular file (a FIFO or device?), not a PRD file")
        data = os.read(fd, MAX_PRD_BYTES + 1)
        while len(data) <= MAX_PRD_BYTES and (more := os.read(fd, MAX_PRD_BYTES + 1 - len(data))):
            data += more
    except OSError as exc:
        raise PrdError(str(path), f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_PRD_BYTES:
        raise _too_big(str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PrdError(str(path), f"not valid UTF-8: byte {data[exc.start]:#04x} on line {line}") from None


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")  # JSON.parse (ralph-tui) rejects it too


def _json_value(text: str, source: str, line: int | None = None) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        where = f"line {line or exc.lineno} column {exc.colno}"
        raise PrdError(source, f"invalid JSON at {where}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # NaN, 4300+ digit numbers, absurd nesting
        raise PrdError(source, f"invalid JSON{f' on line {line}' if line else ''}: {exc}") from None


def _jsonl_values(body: str, source: str) -> list[tuple[str, Any]]:
    lines = enumerate(body.split("\n"), 1)
    return [(f"line {n}", _json_value(line, source, n)) for n, line in lines if line.strip()]


def _from_json(value: Any, source: str, hint: str) -> TaskPlan:
    from agent import prd_beads

    if isinstance(value, dict) and not prd_beads.looks_like_beads(value):
        return _parse_prd_json(value, source)
    if isinstance(value, dict | list):
        return _beads_plan(prd_beads.unwrap_bd_json(value, source), source, hint, "beads-json")
    kind = "null" if value is None else type(value).__name__
    raise PrdError(source, f"expected a JSON object (prd.json) or array (bd --json output), got {kind}")


def _beads_plan(values: list[tuple[str, Any]], source: str, hint: str, fmt: PrdFormat) -> TaskPlan:
    from agent import prd_beads

    default_name = Path(hint).stem if hint and not hint.startswith("<") else "beads"
    name, description, steps, done = prd_beads.read_beads(values, source, default_name)
    return _plan(source, fmt, name, description, None, steps, done, "dependencies")


# --- prd.json ------------------------------------------------------------------------------------

_UNSUPPORTED_STORY_FIELDS = ("subtasks", "estimated_hours", "files", "status")


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _typed(record: dict[str, Any], key: str, kind: str, fail: Any, default: Any = None) -> Any:
    """``record[key]`` checked against a JSON kind; null or absent gives ``default``."""
    value = record.get(key)
    if value is None:
        return default
    ok = {
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "list of strings": isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[kind]
    if not ok:
        fail(key, f"must be {'an' if kind == 'integer' else 'a'} {kind}, got {_show(value)}")
    return value


def _parse_prd_json(obj: dict[str, Any], source: str) -> TaskPlan:
    def fail(field: str, problem: str) -> NoReturn:
        raise PrdError(source, problem, field=field)

    for key in ("prd", "tasks"):
        if key in obj:
            fail(key, f'found top-level "{key}" instead of "name" and "userStories" (a common AI-written '
                      'schema); regenerate it with "ralph-tui convert --to json <prd.md>"')
    name = obj["name"] if "name" in obj else obj.get("project")
    if not isinstance(name, str) or not name:
        fail("name", 'missing required field: the PRD name, a non-empty string ("project" also accepted)')
    description = _typed(obj, "description", "string", fail, "")
    branch = _typed(obj, "branchName", "string", fail)
    stories = obj.get("userStories")
    if not isinstance(stories, list):
        fail("userStories", "missing required field: an array of stories" if stories is None
             else f"must be an array of stories, got {_show(stories)}")
    if not stories:
        fail("userStories", "empty PRD: no user stories")
    steps: list[Step] = []
    done: set[str] = set()
    for index, raw in enumerate(stories):
        step, passes = _story(raw, index, source)
        steps.append(step)
        if passes:
            done.add(step.id)
    _check_ids(source, steps, "dependsOn")
    return _plan(source, "prd-json", name, description, branch, steps, done, "dependsOn")


def _story(raw: Any, index: int, source: str) -> tuple[Step, bool]:
    label = f"userStories[{index}]"
    if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
        label = raw["id"]

    def fail(field: str, problem: str) -> NoReturn:
        raise PrdError(source, problem, story=label, field=field)

    if not isinstance(raw, dict):
        raise PrdError(source, f"a story must be an object, got {_show(raw)}", story=label)
    if label != raw.get("id"):
        fail("id", f"missing required field: a non-empty string, got {_show(raw.get('id'))}")
    title = raw.get("title")
    if not isinstance(title, str) or not title:
        fail("title", f"missing required field: a non-empty string, got {_show(title)}")
    passes = raw.get("passes")
    if not isinstance(passes, bool):
        if "status" in raw and "passes" not in raw:
            fail("status", 'found "status" but expected "passes" (boolean): false = open, true = done')
        fail("passes", "missing required field: true or false" if "passes" not in raw
             else f"must be true or false, got {_show(passes)}")
    unsupported = [key for key in _UNSUPPORTED_STORY_FIELDS if key in raw]
    if unsupported:
        fail(unsupported[0], f"unsupported field{'s' * (len(unsupported) > 1)} {', '.join(unsupported)}: "
                             'prd.json has no subtasks, time estimates, file lists or status (use "passes")')
    priority = _typed(raw, "priority", "integer", fail)
    step = Step(
        id=label,
        title=title,
        description=_typed(raw, "description", "string", fail, ""),
        acceptance=_typed(raw, "acceptanceCriteria", "list of strings", fail, []),
        depends_on=list(dict.fromkeys(_typed(raw, "dependsOn", "list of strings", fail, []))),
        # ralph-tui: clamp(priority - 1, 0, 4), missing = 2 (medium); Step is that + 1
        priority=3 if priority is None else min(max(priority, 1), 5),
        labels=_typed(raw, "labels", "list of strings", fail, []),
        notes=_typed(raw, "notes", "string", fail, ""),
    )
    _typed(raw, "completionNotes", "string", fail)
    return step, passes


# --- ordering ------------------------------------------------------------------------------------


def _check_ids(source: str, steps: list[Step], field: str) -> None:
    """PRD formats only: ids are unique and every dependency names a story (beads ignores unknowns)."""
    known: set[str] = set()
    for step in steps:
        if step.id in known:
            raise PrdError(source, "duplicate story id", story=step.id, field="id")
        known.add(step.id)
    for step in steps:
        for dep in step.depends_on:
            if dep not in known:
                raise PrdError(source, f"unknown story id {dep!r}", story=step.id, field=field)


def _plan(
    source: str, fmt: PrdFormat, name: str, description: str, branch: str | None,
    steps: list[Step], done: set[str], dep_field: str,
) -> TaskPlan:
    """Drop finished steps, keep only dependencies on open steps, reject cycles, order (Kahn)."""
    known = {step.id for step in steps}
    cycle = _find_cycle({s.id: [d for d in s.depends_on if d in known] for s in steps})
    if cycle:
        raise PrdError(source, "dependency cycle " + " -> ".join(cycle), story=cycle[0], field=dep_field)
    open_steps = {
        s.id: s.model_copy(update={"depends_on": [d for d in s.depends_on if d in known and d not in done]})
        for s in steps if s.id not in done
    }
    waiting = {sid: set(s.depends_on) for sid, s in open_steps.items()}
    dependents: dict[str, list[str]] = {sid: [] for sid in open_steps}
    for sid, deps in waiting.items():
        for dep in deps:
            dependents[dep].append(sid)
    ready = [(s.priority, sid) for sid, s in open_steps.items() if not waiting[sid]]
    heapq.heapify(ready)
    ordered: list[Step] = []
    while ready:
        _, sid = heapq.heappop(ready)
        ordered.append(open_steps[sid])
        for child in dependents[sid]:
            waiting[child].discard(sid)
            if not waiting[child]:
                heapq.heappush(ready, (open_steps[child].priority, child))
    skipped = [s.id for s in steps if s.id in done]
    return TaskPlan(name=name, description=description, branch_name=branch, source=source, format=fmt,
                    steps=ordered, skipped=skipped)


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """First cycle found by an iterative DFS from the smallest id, as [a, b, ..., a]."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for root in sorted(graph):
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(graph[root]))]
        while stack:
            node, edges = stack[-1]
            nxt = next(edges, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                path = [n for n, _ in stack]
                return [*path[path.index(nxt):], nxt]
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(graph[nxt])))
    return None


# --- writing prd.json ----------------------------------------------------------------------------


def mark_story_passed(prd_path: Path, story_id: str, completion_notes: str) -> None:
    """Set one story's ``passes`` to true and its ``completionNotes``, changing no other byte.

    Idempotent; atomic (temp file in the same directory, fsync, ``os.replace``) under a FileLock on
    ``<path>.lock``. Unlike ralph-tui it does not bump ``metadata.updatedAt``.
    """
    prd_path = Path(prd_path)
    source = str(prd_path)
    if not prd_path.is_file():
        _read_text(prd_path)  # raises the right PrdError (missing, directory, unreadable)
        raise PrdError(source, "not a regular file")
    with FileLock(source + ".lock"):
        text = _read_text(prd_path)
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
