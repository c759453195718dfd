"""ralph-tui ``prd.json`` → a plan, with ralph-tui's rules plus Hearth's stricter ones.

Unknown dependencies and cycles are errors; an AI-written schema (top-level ``prd``/``tasks``, story
``status``/``subtasks``) is refused with a message that says how to regenerate the file. Writing
prd.json back (``mark_story_passed``) is ``agent.prd.writer``'s job. Format: docs/prd-formats.md.
"""

from __future__ import annotations

from typing import Any, NoReturn

from agent.prd.model import PrdError, Step, TaskPlan, build_plan, check_ids, show_json

_UNSUPPORTED_STORY_FIELDS = ("subtasks", "estimated_hours", "files", "status")


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
        fail(key, f"must be {'an' if kind == 'integer' else 'a'} {kind}, got {show_json(value)}")
    return value


def parse_prd_json(obj: dict[str, Any], source: str) -> TaskPlan:
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
             else f"must be an array of stories, got {show_json(stories)}")
    if not stories:
        fail("userStories", "empty PRD: no user stories")
    steps: list[Step] = []
    done: set[str] = set()
    for index, raw in enumerate(stories):
        step, passes = _story(raw, index, source)
        steps.append(step)
        if passes:
            done.add(step.id)
    check_ids(source, steps, "dependsOn")
    return build_plan(source, "prd-json", name, description, branch, steps, done, "dependsOn")


def _story(raw: Any, index: int, source: str) -> tuple[Step, bool]:
    label = f"userStories[{index}]"
    if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
        label = raw["id"]

    def fail(field: str, problem: str) -> NoReturn:
        raise PrdError(source, problem, story=label, field=field)

    if not isinstance(raw, dict):
        raise PrdError(source, f"a story must be an object, got {show_json(raw)}", story=label)
    if label != raw.get("id"):
        fail("id", f"missing required field: a non-empty string, got {show_json(raw.get('id'))}")
    title = raw.get("title")
    if not isinstance(title, str) or not title:
        fail("title", f"missing required field: a non-empty string, got {show_json(title)}")
    passes = raw.get("passes")
    if not isinstance(passes, bool):
        if "status" in raw and "passes" not in raw:
            fail("status", 'found "status" but expected "passes" (boolean): false = open, true = done')
        fail("passes", "missing required field: true or false" if "passes" not in raw
             else f"must be true or false, got {show_json(passes)}")
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


