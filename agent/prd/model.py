"""The PRD model: a plan of ordered steps, the error every bad PRD raises, and how steps are ordered.

    ValueError
    └── PrdError        bad PRD input; str() names the file, the story and the field

Every format module (``ralph_json``, ``ralph_markdown``, ``beads``) imports this one and nothing
else of the package; ``build_plan`` drops finished steps, rejects cycles and orders the open steps:
dependencies first, then priority (1 = highest), then id.
"""

from __future__ import annotations

import heapq
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PrdFormat = Literal["prd-json", "ralph-markdown", "beads-jsonl", "beads-json"]


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


def show_json(value: Any) -> str:
    """A value as JSON, cut to 40 characters: how error messages quote what they got."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- ordering ------------------------------------------------------------------------------------


def check_ids(source: str, steps: list[Step], field: str) -> None:
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


def build_plan(
    source: str, fmt: PrdFormat, name: str, description: str, branch: str | None,
    steps: list[Step], done: set[str], dep_field: str,
) -> TaskPlan:
    """Drop finished steps, keep only dependencies on open steps, reject cycles, order (Kahn)."""
    known = {step.id for step in steps}
    cycle = find_cycle({s.id: [d for d in s.depends_on if d in known] for s in steps})
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


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
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


