"""agent.prd on beads input: ``.beads/issues.jsonl`` exports and ``bd … --json`` output.

The two *.sample.jsonl files are real lines from the ralph-tui and beads repositories. The greeting.*
fixtures are built from the bd commands the real ralph-tui issued (`convert --to beads`, recorded
with a stand-in bd, since bd cannot run here); see tests/data/prd/README.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.prd import PrdError, TaskPlan, load_prd, parse_prd_text

DATA = Path(__file__).parent / "data" / "prd"


def ids(plan: TaskPlan) -> list[str]:
    return [s.id for s in plan.steps]


def issue(iid: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": iid,
        "title": f"Title of {iid}",
        "status": "open",
        "priority": 2,
        "issue_type": "task",
        **fields,
    }


def dep(iid: str, target: str, kind: str = "blocks") -> dict[str, str]:
    return {"issue_id": iid, "depends_on_id": target, "type": kind, "created_at": "2026-11-25T10:20:00Z"}


def jsonl(*issues: dict[str, Any]) -> str:
    return "\n".join(json.dumps(i) for i in issues) + "\n"


def sample_line(name: str, number: int, **changes: Any) -> dict[str, Any]:
    lines = [line for line in (DATA / name).read_text().splitlines() if line.strip()]
    record: dict[str, Any] = json.loads(lines[number])
    record.update(changes)
    return record


# --- real lines ----------------------------------------------------------------------------------


def test_ralph_tui_repo_export_closed_are_skipped_and_tombstones_dropped() -> None:
    plan = load_prd(DATA / "ralph-tui-repo.beads.issues.sample.jsonl")
    assert plan.format == "beads-jsonl"
    assert plan.steps == []
    assert plan.skipped == ["ralph-tui-08z", "ralph-tui-0t7"]  # ralph-tui-12c is a tombstone


def test_beads_repo_export_in_progress_issue_is_a_step() -> None:
    plan = load_prd(DATA / "beads-repo.issues.sample.jsonl")
    assert (plan.format, plan.name, ids(plan)) == ("beads-jsonl", "beads-repo.issues.sample", ["bd-main-idj"])
    step = plan.steps[0]
    assert step.priority == 3  # bd priority 2 (medium)
    assert step.acceptance == []
    assert step.description.startswith("Quantify near-duplicate functions")


def test_real_description_checklist_with_nested_bullets_becomes_acceptance() -> None:
    reopened = sample_line("ralph-tui-repo.beads.issues.sample.jsonl", 0, status="open")
    plan = parse_prd_text(jsonl(reopened), ".beads/issues.jsonl")
    (step,) = plan.steps
    assert step.id == "ralph-tui-08z"
    assert step.priority == 2
    assert step.labels == ["image-paste"]
    assert step.depends_on == []  # both blockers are outside this set
    assert step.acceptance[0] == 'Success toast: "Image attached" when image successfully stored'
    assert step.acceptance[5] == (
        "Info toast on missing tools with install hint:\n"
        '  - macOS: "Install pngpaste: `brew install pngpaste`"\n'
        '  - Linux: "Install xclip: `sudo apt install xclip`"'
    )
    assert step.acceptance[-1] == "bun run build passes"
    assert len(step.acceptance) == 9
    assert "## Acceptance Criteria" not in step.description
    assert step.description.startswith("## Description\nProvide user feedback")
    assert "## Technical Notes\n- Integrate with Toast" in step.description


# --- the ralph-tui → bd greeting fixtures --------------------------------------------------------


def test_export_after_first_story_closed() -> None:
    plan = load_prd(DATA / "greeting.beads.issues.jsonl")
    assert (plan.format, plan.name) == ("beads-jsonl", "Greeting Tool")  # the single epic names the plan
    assert plan.description == "A tiny CLI that writes greeting files."
    assert plan.skipped == ["gr-7kq.1"]
    assert ids(plan) == ["gr-7kq.2", "gr-7kq.3"]
    assert plan.steps[0].depends_on == []  # its blocker is closed
    assert plan.steps[0].title == "US-002: Create goodbye file"
    assert plan.steps[0].description == "As a user, I want goodbye.txt."
    assert plan.steps[0].acceptance == ["goodbye.txt exists"]
    assert plan.steps[0].labels == ["ralph"]


def test_bd_list_array_orders_blocks_edges_and_ignores_parent_child_to_epic() -> None:
    plan = load_prd(DATA / "greeting.bd-list.json")
    assert plan.format == "beads-json"
    assert ids(plan) == ["gr-7kq.1", "gr-7kq.2", "gr-7kq.3"]
    assert [s.depends_on for s in plan.steps] == [[], ["gr-7kq.1"], []]
    # ralph-tui passes its 1-based story priority straight to bd's 0-based one, so P1 arrives as 2
    assert [s.priority for s in plan.steps] == [2, 3, 4]
    assert plan.plan_json()["steps"][1] == {
        "id": "gr-7kq.2",
        "title": "US-002: Create goodbye file",
        "depends_on": ["gr-7kq.1"],
    }


def test_bd_ready_envelope() -> None:
    plan = load_prd(DATA / "greeting.bd-ready.envelope.json")
    assert (plan.format, plan.name, ids(plan)) == ("beads-json", "Greeting Tool", ["gr-7kq.1", "gr-7kq.3"])


def test_bd_show_array_with_dependency_objects() -> None:
    plan = load_prd(DATA / "greeting.bd-show.json")
    assert ids(plan) == ["gr-7kq.2"]
    assert plan.steps[0].depends_on == []  # gr-7kq.1 is not in this output


def test_bd_show_dependency_objects_order_when_the_target_is_present() -> None:
    shown = json.loads((DATA / "greeting.bd-show.json").read_text())
    listed = json.loads((DATA / "greeting.bd-list.json").read_text())
    plan = parse_prd_text(json.dumps([listed[1], *shown]), "<request>")
    assert ids(plan) == ["gr-7kq.1", "gr-7kq.2"]
    assert plan.steps[1].depends_on == ["gr-7kq.1"]


def test_single_issue_object_and_legacy_inline_schema_version() -> None:
    plan = parse_prd_text(json.dumps({**issue("x-1"), "schema_version": 1}), "<request>")
    assert (plan.format, plan.name, ids(plan)) == ("beads-json", "beads", ["x-1"])


# --- dependency semantics ------------------------------------------------------------------------


def test_blocking_types_order_and_other_types_do_not() -> None:
    plan = parse_prd_text(
        jsonl(
            issue("p-a", priority=0, dependencies=[dep("p-a", "p-d", "waits-for")]),
            issue("p-b", priority=0, dependencies=[dep("p-b", "p-d", "conditional-blocks")]),
            issue(
                "p-c",
                priority=0,
                dependencies=[dep("p-c", "p-d", "related"), dep("p-c", "p-d", "discovered-from")],
            ),
            issue("p-d", priority=4, dependencies=[dep("p-d", "gone-1"), dep("p-d", "p-e")]),
            issue("p-e", status="closed", closed_at="2026-11-25T00:00:00Z"),
        ),
        "issues.jsonl",
    )
    assert ids(plan) == ["p-c", "p-d", "p-a", "p-b"]
    assert plan.steps[1].depends_on == []  # unknown and closed targets are satisfied
    assert plan.skipped == ["p-e"]


def test_dependency_on_an_epic_means_its_children_and_children_inherit_parent_blockers() -> None:
    plan = parse_prd_text(
        jsonl(
            issue("e-1", issue_type="epic"),
            issue("e-1.1", parent="e-1", dependencies=[dep("e-1.1", "e-1", "parent-child")]),
            issue("e-1.2", priority=0, dependencies=[dep("e-1.2", "e-1", "parent-child")]),
            issue("e-2", issue_type="epic", dependencies=[dep("e-2", "e-1")]),
            issue("e-2.1", priority=0, parent="e-2"),
            issue("t-9", priority=0, dependencies=[dep("t-9", "e-2.1", "blocks")]),
        ),
        "issues.jsonl",
    )
    assert plan.name == "issues"  # two epics: no single name
    by_id = {s.id: s for s in plan.steps}
    assert by_id["e-2.1"].depends_on == ["e-1.1", "e-1.2"]
    assert by_id["t-9"].depends_on == ["e-2.1"]
    assert ids(plan) == ["e-1.2", "e-1.1", "e-2.1", "t-9"]


def test_parent_child_between_tasks_is_not_an_ordering_edge() -> None:
    plan = parse_prd_text(
        jsonl(
            issue("t-1", priority=3),
            issue("t-1.1", priority=0, dependencies=[dep("t-1.1", "t-1", "parent-child")]),
        ),
        "issues.jsonl",
    )
    assert ids(plan) == ["t-1.1", "t-1"]


def test_acceptance_criteria_field_wins_over_description() -> None:
    plan = parse_prd_text(
        jsonl(
            issue(
                "a-1", acceptance_criteria="- [ ] one\n- [x] two", description="## Acceptance Criteria\n- no"
            ),
            issue("a-2", acceptance_criteria="Free text\n\nsecond line"),
            issue("a-3", description="Intro\n\n### acceptance criteria:\n* star item\n\n## After\ntext"),
        ),
        "issues.jsonl",
    )
    by_id = {s.id: s for s in plan.steps}
    assert by_id["a-1"].acceptance == ["one", "two"]
    assert by_id["a-1"].description == "## Acceptance Criteria\n- no"
    assert by_id["a-2"].acceptance == ["Free text", "second line"]
    assert by_id["a-3"].acceptance == ["star item"]
    assert by_id["a-3"].description == "Intro\n\n## After\ntext"


def test_memory_and_other_non_issue_lines_are_skipped() -> None:
    text = jsonl(
        {"_type": "memory", "key": "k", "value": "v"},
        {"_type": "issue", **issue("m-1")},
        {"_type": "config", "anything": 1},
    )
    assert ids(parse_prd_text(text, "issues.jsonl")) == ["m-1"]


# --- errors --------------------------------------------------------------------------------------

BEADS_ERRORS = [
    (
        "cycle",
        jsonl(issue("c-1", dependencies=[dep("c-1", "c-2")]), issue("c-2", dependencies=[dep("c-2", "c-1")])),
        "c-1",
        "dependencies",
        "dependency cycle c-1 -> c-2 -> c-1",
    ),
    (
        "priority word",
        jsonl(issue("x-1", priority="high")),
        "x-1",
        "priority",
        'integer 0-4 (0 = highest), got "high"',
    ),
    ("priority range", jsonl(issue("x-1", priority=7)), "x-1", "priority", "got 7"),
    ("priority bool", jsonl(issue("x-1", priority=False)), "x-1", "priority", "got false"),
    ("id missing", jsonl(issue("x-1"), {"title": "t"}), "line 2", "id", "missing required field"),
    ("title missing", jsonl({"id": "x-1"}), "x-1", "title", "missing required field"),
    ("status type", jsonl(issue("x-1", status=3)), "x-1", "status", "must be a string, got 3"),
    ("labels", jsonl(issue("x-1", labels="ralph")), "x-1", "labels", "must be a list of strings"),
    ("dependencies type", jsonl(issue("x-1", dependencies={})), "x-1", "dependencies", "must be a list"),
    (
        "dependency record",
        jsonl(issue("x-1", dependencies=[{"type": "blocks"}])),
        "x-1",
        "dependencies",
        "needs a depends_on_id",
    ),
    ("duplicate", jsonl(issue("x-1"), issue("x-1")), "x-1", "id", "duplicate issue id (also line 1)"),
    ("not an object", jsonl(issue("x-1")) + "[1]\n", "line 2", None, "expected an issue object, got [1]"),
    (
        "only epics",
        jsonl(issue("e-1", issue_type="epic")),
        None,
        None,
        "empty PRD: no issues other than epics",
    ),
    ("only tombstones", jsonl(issue("x-1", status="tombstone")), None, None, "empty PRD: no issues"),
    (
        "jsonl syntax",
        jsonl(issue("x-1")) + '{"id": "x-2",,}\n',
        None,
        None,
        "invalid JSON at line 2 column 14",
    ),
]


@pytest.mark.parametrize(
    ("case", "text", "story_id", "field", "words"), BEADS_ERRORS, ids=[e[0] for e in BEADS_ERRORS]
)
def test_beads_errors_name_file_story_and_field(
    case: str, text: str, story_id: str | None, field: str | None, words: str
) -> None:
    with pytest.raises(PrdError) as caught:
        parse_prd_text(text, ".beads/issues.jsonl")
    error = caught.value
    assert (error.file, error.story, error.field) == (".beads/issues.jsonl", story_id, field)
    assert words in str(error)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ([], "empty PRD: no issues"),
        (
            {"schema_version": 1, "error": "issue not found: x-9", "code": "not_found"},
            'bd reported an error: "issue not found: x-9" (code "not_found")',
        ),
        ({"schema_version": 1, "data": 5}, "must be an issue or an array of issues, got 5"),
        ([issue("x-1"), "x-2"], 'expected an issue object, got "x-2"'),
    ],
)
def test_bd_json_errors(value: Any, words: str) -> None:
    with pytest.raises(PrdError, match=r"^bd\.json: ") as caught:
        parse_prd_text(json.dumps(value), "bd.json")
    assert words in str(caught.value)


def test_jsonl_detected_without_the_extension() -> None:
    plan = parse_prd_text(jsonl(issue("x-1"), issue("x-2")), "<request>")
    assert (plan.format, plan.name) == ("beads-jsonl", "beads")


# --- fuzzing -------------------------------------------------------------------------------------

JUNK = (
    st.none() | st.booleans() | st.integers(-3, 9) | st.text(max_size=6) | st.lists(st.integers(), max_size=2)
)
IDS = st.sampled_from(["b-1", "b-2", "b-3", "b-4", "b-4.1"])


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(0, 9).flatmap(lambda n: JUNK if n == 0 else valid)


DEPENDENCY = st.fixed_dictionaries(
    {"depends_on_id": mostly(IDS)},
    optional={
        "type": mostly(
            st.sampled_from(["blocks", "parent-child", "waits-for", "related", "conditional-blocks"])
        ),
        "issue_id": mostly(IDS),
    },
)
ISSUE = st.fixed_dictionaries(
    {"id": mostly(IDS), "title": mostly(st.text(max_size=5))},
    optional={
        "status": mostly(st.sampled_from(["open", "closed", "in_progress", "tombstone", "blocked"])),
        "issue_type": mostly(st.sampled_from(["task", "epic", "bug"])),
        "priority": mostly(st.integers(0, 4)),
        "parent": mostly(IDS),
        "dependencies": mostly(st.lists(DEPENDENCY, max_size=3)),
        "description": mostly(st.sampled_from(["", "x\n## Acceptance Criteria\n- [ ] a\n  more\n## B"])),
        "acceptance_criteria": mostly(st.text(max_size=8)),
        "labels": mostly(st.lists(st.text(max_size=3), max_size=2)),
        "_type": st.sampled_from(["issue", "memory"]),
    },
)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(issues=st.lists(ISSUE, max_size=6), envelope=st.booleans())
def test_arbitrary_bead_lists_give_a_plan_or_prd_error(issues: list[dict[str, Any]], envelope: bool) -> None:
    texts = [
        (json.dumps({"schema_version": 1, "data": issues} if envelope else issues), ""),
        ("\n".join(json.dumps(i) for i in issues), "issues.jsonl"),
    ]
    for text, hint in texts:
        try:
            plan = parse_prd_text(text, "<request>", filename_hint=hint)
        except PrdError:
            continue
        seen: set[str] = set()
        for step in plan.steps:
            assert set(step.depends_on) <= seen
            seen.add(step.id)
