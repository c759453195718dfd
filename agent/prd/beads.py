"""beads issues (``bd … --json`` output, ``.beads/issues.jsonl``) → steps.

A step is an issue that is not an epic. Closed issues are finished steps; tombstones (deleted issues)
and non-issue export lines (``"_type": "memory"``) are left out. Ordering edges follow ``bd ready``:

* ``blocks``, ``conditional-blocks`` and ``waits-for`` make the issue wait for the target. A target
  that is an epic stands for the epic's (non-epic) children; an unknown target is ignored (``bd ready``
  output only lists open issues, so the missing ones are usually closed).
* ``parent-child`` is not an ordering edge: a child is not blocked by its parent being open, but it
  inherits its parents' blocking dependencies (bd: "a child of a blocked parent is blocked").

Priority 0-4 (0 = highest) becomes Step.priority 1-5. Acceptance criteria come from
``acceptance_criteria``, else from the ``## Acceptance Criteria`` checklist in the description (the
form ``ralph-tui convert --to beads`` writes), which is then cut from the step's description.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

from agent.prd.model import PrdError, PrdFormat, Step, TaskPlan, build_plan, show_json

_BLOCKING = frozenset({"blocks", "conditional-blocks", "waits-for"})
_CRITERIA_HEADING = re.compile(r"^#{1,6}[ \t]*Acceptance Criteria[ \t]*:?[ \t]*$", re.I | re.M)
_HEADING = re.compile(r"^#{1,6}\s", re.M)
_ITEM = re.compile(r"^[-*][ \t]+(?:\[[ xX]\][ \t]+)?(.+)$")


def looks_like_beads(obj: dict[str, Any]) -> bool:
    """A bd envelope or a single issue object (``bd show``/``bd create --json``), not a prd.json."""
    if "userStories" in obj:
        return False
    envelope = "schema_version" in obj and ("data" in obj or "error" in obj)
    return envelope or "issue_type" in obj or ("id" in obj and "status" in obj and "passes" not in obj)


def unwrap_bd_json(value: dict[str, Any] | list[Any], source: str) -> list[tuple[str, Any]]:
    """Issues from ``bd list/ready/show --json``: a bare array, a single object, or an envelope."""
    if isinstance(value, dict) and "schema_version" in value and ("data" in value or "error" in value):
        if "error" in value:
            problem = f"bd reported an error: {show_json(value['error'])} (code {show_json(value.get('code'))})"
            raise PrdError(source, problem)
        value = value["data"]
    if isinstance(value, dict):
        return [("issue", value)]
    if isinstance(value, list):
        return [(f"[{i}]", item) for i, item in enumerate(value)]
    raise PrdError(source, f"bd envelope data must be an issue or an array of issues, got {show_json(value)}")


def beads_plan(values: list[tuple[str, Any]], source: str, hint: str, fmt: PrdFormat) -> TaskPlan:
    """The plan of parsed issues; without a single epic it is named after the file."""
    default_name = Path(hint).stem if hint and not hint.startswith("<") else "beads"
    name, description, steps, done = read_beads(values, source, default_name)
    return build_plan(source, fmt, name, description, None, steps, done, "dependencies")


def read_beads(
    values: list[tuple[str, Any]], source: str, default_name: str
) -> tuple[str, str, list[Step], set[str]]:
    """(plan name, description, steps in input order, ids of closed steps)."""
    issues: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}
    for place, value in values:
        if not isinstance(value, dict):
            raise PrdError(source, f"expected an issue object, got {show_json(value)}", story=place)
        if value.get("_type", "issue") != "issue":
            continue  # memory lines and any other non-issue export record
        issue = _checked(value, place, source)
        if issue["id"] in issues:
            raise PrdError(source, f"duplicate issue id (also {where[issue['id']]})", story=issue["id"],
                           field="id")
        if issue["status"] != "tombstone":
            issues[issue["id"]] = issue
            where[issue["id"]] = place
    epics = [i for i in issues.values() if i["issue_type"] == "epic"]
    children: dict[str, list[str]] = {}
    for issue in issues.values():
        if issue["parent"] in issues:
            children.setdefault(issue["parent"], []).append(issue["id"])
    steps = [_step(issue, issues, children) for issue in issues.values() if issue["issue_type"] != "epic"]
    done = {issue["id"] for issue in issues.values() if issue["status"] == "closed"}
    if not steps:
        raise PrdError(source, "empty PRD: no issues other than epics" if issues else "empty PRD: no issues")
    if len(epics) == 1:
        return epics[0]["title"], epics[0]["description"], steps, done
    return default_name, "", steps, done


def _checked(raw: dict[str, Any], place: str, source: str) -> dict[str, Any]:
    """The fields Hearth uses, type-checked, with bd's defaults filled in."""
    label = raw["id"] if isinstance(raw.get("id"), str) and raw["id"] else place

    def fail(field: str, problem: str) -> NoReturn:
        raise PrdError(source, problem, story=label, field=field)

    if label != raw.get("id"):
        fail("id", f"missing required field: a non-empty string, got {show_json(raw.get('id'))}")
    title = raw.get("title")
    if not isinstance(title, str):
        fail("title", f"missing required field: a string, got {show_json(title)}")
    issue: dict[str, Any] = {"id": label, "title": title}
    for key, default in (("description", ""), ("acceptance_criteria", ""), ("notes", ""), ("status", "open"),
                         ("issue_type", "task"), ("parent", None)):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            fail(key, f"must be a string, got {show_json(value)}")
        issue[key] = default if value is None else value
    priority = 2 if raw.get("priority") is None else raw["priority"]
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 4:
        fail("priority", f"must be an integer 0-4 (0 = highest), got {show_json(priority)}")
    issue["priority"] = priority
    labels = [] if raw.get("labels") is None else raw["labels"]
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        fail("labels", f"must be a list of strings, got {show_json(labels)}")
    issue["labels"] = labels
    edges = [] if raw.get("dependencies") is None else raw["dependencies"]
    if not isinstance(edges, list):
        fail("dependencies", f"must be a list, got {show_json(edges)}")
    issue["edges"] = []
    for edge in edges:
        # bd list/export: {issue_id, depends_on_id, type}; bd show: an issue with dependency_type
        record = edge if isinstance(edge, dict) else {}
        target = record.get("depends_on_id", record.get("id"))
        kind = record.get("type") or record.get("dependency_type") or "blocks"
        if not isinstance(target, str) or not isinstance(kind, str):
            fail("dependencies", f"each dependency needs a depends_on_id and a type, got {show_json(edge)}")
        if record.get("issue_id", label) != label:
            continue  # a record about some other issue (bd dep list --direction up)
        if kind == "parent-child" and issue["parent"] is None:
            issue["parent"] = target
        issue["edges"].append((target, kind))
    return issue


def _step(issue: dict[str, Any], issues: dict[str, dict[str, Any]], children: dict[str, list[str]]) -> Step:
    deps: list[str] = []
    for target in _blocking_targets(issue, issues):
        deps.extend(_leaves(target, issues, children, set()))
    acceptance, description = _acceptance(issue)
    return Step(
        id=issue["id"],
        title=issue["title"],
        description=description,
        acceptance=acceptance,
        depends_on=[d for d in dict.fromkeys(deps) if d != issue["id"]],
        priority=issue["priority"] + 1,
        labels=issue["labels"],
        notes=issue["notes"],
    )


def _blocking_targets(issue: dict[str, Any], issues: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's own blocking targets, then those of each ancestor (bd propagates parent blocking)."""
    targets: list[str] = []
    seen = {issue["id"]}
    current: dict[str, Any] | None = issue
    while current is not None:
        targets += [target for target, kind in current["edges"] if kind in _BLOCKING]
        parent = current["parent"]
        current = issues.get(parent) if parent not in seen else None
        seen.add(parent)
    return targets


def _leaves(target: str, issues: dict[str, dict[str, Any]], children: dict[str, list[str]],
            seen: set[str]) -> list[str]:
    """A known non-epic target itself; an epic stands for all its non-epic descendants."""
    if target not in issues or target in seen:
        return []
    if issues[target]["issue_type"] != "epic":
        return [target]
    seen.add(target)
    return [leaf for child in children.get(target, []) for leaf in _leaves(child, issues, children, seen)]


def _acceptance(issue: dict[str, Any]) -> tuple[list[str], str]:
    description: str = issue["description"]
    if issue["acceptance_criteria"].strip():
        text = issue["acceptance_criteria"]
        items = _checklist(text)
        return items or [line.strip() for line in text.split("\n") if line.strip()], description
    heading = _CRITERIA_HEADING.search(description)
    if not heading:
        return [], description
    following = _HEADING.search(description, heading.end())
    end = following.start() if following else len(description)
    rest = description[:heading.start()].rstrip() + "\n\n" + description[end:].lstrip()
    return _checklist(description[heading.end() : end]), rest.strip()


def _checklist(text: str) -> list[str]:
    """Top-level ``- [ ] item`` / ``- item`` lines; indented lines continue the item above."""
    items: list[str] = []
    for line in text.split("\n"):
        if item := _ITEM.match(line):
            items.append(item.group(1).strip())
        elif items and line[:1] in (" ", "\t") and line.strip():
            items[-1] += "\n" + line.rstrip()
    return items
