"""docs/task-states.md draws the lifecycle table that ``transition()`` enforces, and every reason an
attempt can end has an ending (pure: no Ray)."""

from __future__ import annotations

import re
from pathlib import Path

from agent.events import TerminationReason
from cluster.scheduling.endings import ENDINGS
from cluster.scheduling.states import ALLOWED, TERMINAL, TaskState

DOC = Path(__file__).parent.parent / "docs" / "task-states.md"


def _drawn_edges() -> set[tuple[TaskState, TaskState]]:
    diagram = DOC.read_text().split("```mermaid", 1)[1].split("```", 1)[0]
    edges = set()
    for line in diagram.splitlines():
        match = re.match(r"\s*(\w+) --> (\w+)", line)
        if match and match.group(1) != "[*]":
            edges.add((TaskState(match.group(1)), TaskState(match.group(2))))
    return edges


def test_the_diagram_draws_exactly_the_allowed_edges() -> None:
    drawn = _drawn_edges()
    assert drawn - set(ALLOWED) == set(), "the diagram draws edges transition() refuses"
    # Edges into failed/cancelled exist from every live state; the doc says so in one sentence.
    specific = {edge for edge in ALLOWED if edge[1] not in {TaskState.failed, TaskState.cancelled}}
    assert specific - drawn == set(), "ALLOWED has edges the diagram does not draw"
    assert "Any non-terminal state may also go to `failed` or `cancelled`." in DOC.read_text()


def test_every_termination_reason_has_an_ending_the_lifecycle_allows() -> None:
    assert set(ENDINGS) == set(TerminationReason)
    for reason, ending in ENDINGS.items():
        assert (TaskState.running, ending.next_state) in ALLOWED or ending.next_state == TaskState.running, reason
        assert not (ending.retry and ending.next_state in TERMINAL), reason


def test_the_docs_reason_table_lists_every_reason_and_no_other() -> None:
    table = DOC.read_text().split("## Why an attempt ended", 1)[1]
    listed = {m.group(1) for m in re.finditer(r"^\| (\w+) \|", table, re.M)} - {"reason"}
    assert listed == {r.value for r in TerminationReason}
