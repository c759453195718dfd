"""agent.prd: ralph-tui prd.json and markdown PRDs → ordered steps; mark_story_passed.

Inputs under tests/data/prd/ were made by the real ralph-tui 0.11.0 (see its README.md).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agent.prd.writer
from agent.prd import PrdError, Step, TaskPlan, load_prd, mark_story_passed, parse_prd_text

DATA = Path(__file__).parent / "data" / "prd"


def story(sid: str, **fields: Any) -> dict[str, Any]:
    return {"id": sid, "title": f"Title of {sid}", "passes": False, **fields}


def prd(*stories: dict[str, Any], **top: Any) -> str:
    return json.dumps({"name": "Demo", "userStories": list(stories), **top}, indent=2)


def ids(plan: TaskPlan) -> list[str]:
    return [s.id for s in plan.steps]


def error_of(text: str, source: str = "tasks/prd.json", hint: str = "") -> PrdError:
    with pytest.raises(PrdError) as caught:
        parse_prd_text(text, source, filename_hint=hint)
    return caught.value


# --- reading ralph-tui's own files ---------------------------------------------------------------


def test_ralph_converted_greeting_prd_json_is_read_as_written() -> None:
    plan = load_prd(DATA / "prd-greeting.json")
    assert (plan.format, plan.name, plan.branch_name) == ("prd-json", "Greeting Tool", "ralph/greeting")
    assert plan.description == "A tiny CLI that writes greeting files."
    assert plan.source == str(DATA / "prd-greeting.json")
    assert ids(plan) == ["US-001", "US-002", "US-003"]
    assert plan.skipped == []
    assert plan.steps[1] == Step(
        id="US-002",
        title="Create goodbye file",
        description="As a user, I want goodbye.txt.",
        acceptance=["goodbye.txt exists"],
        depends_on=["US-001"],
        priority=2,
    )
    assert plan.plan_json() == {
        "name": "Greeting Tool",
        "steps": [
            {"id": "US-001", "title": "Create hello file", "depends_on": []},
            {"id": "US-002", "title": "Create goodbye file", "depends_on": ["US-001"]},
            {"id": "US-003", "title": "Greet by name", "depends_on": []},
        ],
    }


@pytest.mark.parametrize(
    ("markdown", "converted"),
    [
        ("prd-greeting.md", "prd-greeting.json"),
        ("prd-notes-app.md", "prd-notes-app.json"),
    ],
)
def test_markdown_prd_gives_the_same_steps_as_ralph_tui_convert(markdown: str, converted: str) -> None:
    from_md, from_json = load_prd(DATA / markdown), load_prd(DATA / converted)
    assert from_md.format == "ralph-markdown"
    assert (from_md.name, from_md.description) == (from_json.name, from_json.description)
    assert [s.model_dump() for s in from_md.steps] == [s.model_dump() for s in from_json.steps]


def test_markdown_branch_line_and_ralph_priority_rules() -> None:
    plan = load_prd(DATA / "prd-notes-app.md")
    assert plan.branch_name == "ralph/notes-sync"  # `convert --branch` overrode it in the .json
    assert plan.description.startswith("Add offline sync and full-text search to the notes app.\nSearch")
    by_id = {s.id: s for s in plan.steps}
    assert by_id["US-004"].priority == 1  # **Priority:** P0 clamps to 1, like ralph's clamp(p - 1, 0, 4)
    assert by_id["US-003"].priority == 3  # no priority line: its position
    assert by_id["US-003"].description == 'As a user, I want to search notes by "phrase".'
    assert by_id["US-001"].acceptance == [
        "Notes persist across restarts",
        "Schema has a `version` column",
        "Plain bullet criterion",
    ]
    assert ids(plan) == ["US-001", "US-002", "US-003", "US-004"]


def test_ralph_run_output_with_every_story_passing_has_no_steps_left() -> None:
    plan = load_prd(DATA / "prd.json.after")
    assert plan.steps == []
    assert plan.skipped == ["US-001", "US-002"]


def test_probe_markdown_matches_the_prd_json_ralph_made_from_it() -> None:
    before = load_prd(DATA / "prd.json.before")
    assert ids(before) == ["US-001", "US-002"]
    assert before.steps[1].depends_on == ["US-001"]


# --- ordering ------------------------------------------------------------------------------------


def test_order_is_dependencies_first_then_priority_then_id() -> None:
    plan = parse_prd_text(
        prd(
            story("US-005", priority=1, dependsOn=["US-003"]),
            story("US-004", priority=2),
            story("US-003", priority=3),
            story("US-002", priority=2),
            story("US-001", priority=4, dependsOn=["US-004", "US-002"]),
        ),
        "<request>",
    )
    assert ids(plan) == ["US-002", "US-004", "US-003", "US-005", "US-001"]


def test_passing_stories_are_skipped_and_count_as_satisfied_dependencies() -> None:
    plan = parse_prd_text(
        prd(story("US-001", passes=True), story("US-002", dependsOn=["US-001"]), story("US-003")),
        "<request>",
    )
    assert ids(plan) == ["US-002", "US-003"]
    assert plan.skipped == ["US-001"]
    assert plan.steps[0].depends_on == []


def test_priority_mapping_follows_ralph_tui() -> None:
    plan = parse_prd_text(
        prd(story("A", priority=0), story("B", priority=9), story("C"), story("D", priority=2)), "<request>"
    )
    assert {s.id: s.priority for s in plan.steps} == {"A": 1, "B": 5, "C": 3, "D": 2}


def test_legacy_project_key_unknown_story_keys_and_snarktank_shape_are_accepted() -> None:
    text = json.dumps(
        {
            "project": "MyApp",
            "branchName": "ralph/task-priority",
            "description": "Task Priority System",
            "extraTopLevel": {"kept": True},
            "userStories": [story("US-001", priority=1, notes="", estimate="S", acceptanceCriteria=["a"])],
        }
    )
    plan = parse_prd_text(text, "<request>")
    assert (plan.name, plan.branch_name, ids(plan)) == ("MyApp", "ralph/task-priority", ["US-001"])


def test_markdown_variants_feature_ids_crlf_and_plain_criteria_header() -> None:
    text = (
        "# Tool\r\n\r\nIntro line one\r\nline two\r\n\r\n## User Stories\r\n"
        "### Feature 1.2: Parse input\r\nReads **stdin**.\r\n\r\nAcceptance Criteria:\r\n- [x] done item\r\n"
        "#### EPIC-7: Wire it\r\n**Depends on:** FEAT-1-2\r\n**Priority:** P4\r\n"
    )
    plan = parse_prd_text(text, "<request>")
    assert (plan.name, plan.description) == ("Tool", "Intro line one line two")
    assert [(s.id, s.priority, s.depends_on) for s in plan.steps] == [
        ("FEAT-1-2", 1, []),
        ("EPIC-7", 4, ["FEAT-1-2"]),
    ]
    assert plan.steps[0].description == "Reads stdin."
    assert plan.steps[0].acceptance == ["done item"]
    assert plan.steps[1].description == "Wire it"  # ralph falls back to the title


# --- errors --------------------------------------------------------------------------------------

ERRORS = [
    # (case, text, story, field, words in the message)
    (
        "unknown dep",
        prd(story("US-001"), story("US-002", dependsOn=["US-009"])),
        "US-002",
        "dependsOn",
        "unknown story id 'US-009'",
    ),
    (
        "cycle",
        prd(story("US-001", dependsOn=["US-002"]), story("US-002", dependsOn=["US-001"])),
        "US-001",
        "dependsOn",
        "dependency cycle US-001 -> US-002 -> US-001",
    ),
    (
        "self cycle",
        prd(story("US-001", dependsOn=["US-001"])),
        "US-001",
        "dependsOn",
        "dependency cycle US-001 -> US-001",
    ),
    (
        "3-cycle behind a passing story",
        prd(
            story("A", passes=True),
            story("B", dependsOn=["D"]),
            story("C", dependsOn=["B"]),
            story("D", dependsOn=["C"]),
        ),
        "B",
        "dependsOn",
        "dependency cycle B -> D -> C -> B",
    ),
    ("duplicate id", prd(story("US-001"), story("US-001")), "US-001", "id", "duplicate story id"),
    (
        "passes yes",
        prd(story("US-001", passes="yes")),
        "US-001",
        "passes",
        'must be true or false, got "yes"',
    ),
    ("passes missing", prd({"id": "US-001", "title": "t"}), "US-001", "passes", "missing required field"),
    ("priority high", prd(story("US-001", priority="high")), "US-001", "priority", 'integer, got "high"'),
    ("priority bool", prd(story("US-001", priority=True)), "US-001", "priority", "integer, got true"),
    (
        "criteria string",
        prd(story("US-001", acceptanceCriteria="works")),
        "US-001",
        "acceptanceCriteria",
        "must be a list of strings",
    ),
    (
        "criteria numbers",
        prd(story("US-001", acceptanceCriteria=[1, 2])),
        "US-001",
        "acceptanceCriteria",
        "must be a list of strings, got [1, 2]",
    ),
    (
        "dependsOn string",
        prd(story("US-001"), story("US-002", dependsOn="US-001")),
        "US-002",
        "dependsOn",
        "must be a list of strings",
    ),
    ("labels", prd(story("US-001", labels=[None])), "US-001", "labels", "must be a list of strings"),
    ("notes", prd(story("US-001", notes=3)), "US-001", "notes", "must be a string, got 3"),
    ("description", prd(story("US-001", description=["x"])), "US-001", "description", "must be a string"),
    ("completionNotes", prd(story("US-001", completionNotes={})), "US-001", "completionNotes", "string"),
    (
        "status not passes",
        prd({"id": "US-001", "title": "t", "status": "open"}),
        "US-001",
        "status",
        'found "status" but expected "passes"',
    ),
    ("status beside passes", prd(story("US-001", status="done")), "US-001", "status", "unsupported field"),
    (
        "subtasks",
        prd(story("US-001", subtasks=[], files=[])),
        "US-001",
        "subtasks",
        "unsupported fields subtasks, files",
    ),
    ("estimated_hours", prd(story("US-001", estimated_hours=3)), "US-001", "estimated_hours", "unsupported"),
    ("story not object", prd(story("US-001"), "US-002"), "userStories[1]", None, 'got "US-002"'),
    ("story id missing", prd({"title": "t", "passes": False}), "userStories[0]", "id", "missing required"),
    ("story id empty", prd(story("")), "userStories[0]", "id", 'got ""'),
    ("title missing", prd({"id": "US-001", "passes": False}), "US-001", "title", "missing required field"),
    (
        "top-level prd",
        json.dumps({"prd": {"name": "x"}, "userStories": []}),
        None,
        "prd",
        'found top-level "prd"',
    ),
    ("top-level tasks", json.dumps({"name": "x", "tasks": []}), None, "tasks", 'found top-level "tasks"'),
    ("name missing", json.dumps({"userStories": [story("US-001")]}), None, "name", "missing required field"),
    (
        "name wrong type",
        json.dumps({"name": 5, "userStories": [story("US-001")]}),
        None,
        "name",
        "non-empty string",
    ),
    ("branch wrong type", prd(story("US-001"), branchName=1), None, "branchName", "must be a string"),
    ("userStories missing", json.dumps({"name": "x"}), None, "userStories", "missing required field"),
    (
        "userStories object",
        json.dumps({"name": "x", "userStories": {}}),
        None,
        "userStories",
        "must be an array of stories, got {}",
    ),
    ("empty PRD", prd(), None, "userStories", "empty PRD: no user stories"),
]


@pytest.mark.parametrize(("case", "text", "story_id", "field", "words"), ERRORS, ids=[e[0] for e in ERRORS])
def test_prd_json_errors_name_file_story_and_field(
    case: str, text: str, story_id: str | None, field: str | None, words: str
) -> None:
    error = error_of(text)
    assert (error.file, error.story, error.field) == ("tasks/prd.json", story_id, field)
    assert words in error.problem
    assert str(error).startswith("tasks/prd.json: ")
    for part in (f"story {story_id}: " if story_id else "", f"field {field}: " if field else "", words):
        assert part in str(error)


def test_unknown_dependency_message_is_exactly_as_documented() -> None:
    error = error_of(prd(story("US-001"), story("US-002", dependsOn=["US-009"])))
    assert str(error) == "tasks/prd.json: story US-002: field dependsOn: unknown story id 'US-009'"


MARKDOWN_ERRORS = [
    (
        "unknown dep",
        "# PRD: X\n### US-001: A\n**Depends on:** US-009\n",
        "US-001",
        "Depends on",
        "unknown story id 'US-009'",
    ),
    (
        "cycle",
        "# PRD: X\n### US-001: A\n**Depends on:** US-002\n### US-002: B\n**Depends on:** US-001\n",
        "US-001",
        "Depends on",
        "dependency cycle US-001 -> US-002 -> US-001",
    ),
    ("duplicate", "# PRD: X\n### US-001: A\n### US-001: B\n", "US-001", "id", "duplicate story id"),
    ("no stories", "# PRD: Only a title\n\n## Overview\nNothing to do.\n", None, None, "empty PRD"),
]


@pytest.mark.parametrize(
    ("case", "text", "story_id", "field", "words"), MARKDOWN_ERRORS, ids=[e[0] for e in MARKDOWN_ERRORS]
)
def test_markdown_errors_name_file_story_and_field(
    case: str, text: str, story_id: str | None, field: str | None, words: str
) -> None:
    error = error_of(text, "tasks/prd-x.md")
    assert (error.file, error.story, error.field) == ("tasks/prd-x.md", story_id, field)
    assert words in str(error)


@pytest.mark.parametrize(
    ("text", "hint", "words"),
    [
        ("", "", "empty file"),
        ("  \n\t\n", "prd.json", "empty file"),
        ("just some notes\nnothing else", "", "neither JSON, JSONL nor a markdown PRD"),
        ("PK\x03\x04\x00\x00binary", "", "binary data"),
        ("42", "", "neither JSON"),
        ("# PRD: in a .json file", "prd.json", "invalid JSON at line 1 column 1: Expecting value"),
        ('{"name": NaN}', "", "NaN is not valid JSON"),
        ("[" * 100_000, "", "invalid JSON"),
        ('"just a string"', "x.json", "got str"),
    ],
)
def test_inputs_that_are_not_a_prd(text: str, hint: str, words: str) -> None:
    error = error_of(text, "<request>", hint)
    assert (error.file, error.story, error.field) == ("<request>", None, None)
    assert words in str(error)


def test_json_syntax_error_names_line_and_column() -> None:
    text = '{\n  "name": "x",\n  "userStories": [\n    {"id": "US-001",}\n  ]\n}'
    error = error_of(text)
    assert (
        str(error) == "tasks/prd.json: invalid JSON at line 4 column 21: Expecting property name enclosed "
        "in double quotes"
    )


@pytest.mark.parametrize(
    ("text", "kind"), [("null", "null"), ("42", "int"), ('"s"', "str"), ("true", "bool")]
)
def test_json_scalar_in_a_json_file_is_rejected(text: str, kind: str) -> None:
    error = error_of(text, hint="prd.json")
    assert (
        str(error)
        == f"tasks/prd.json: expected a JSON object (prd.json) or array (bd --json output), got {kind}"
    )


def test_load_prd_path_errors(tmp_path: Path) -> None:
    with pytest.raises(PrdError, match=r"missing\.json: cannot read: No such file or directory"):
        load_prd(tmp_path / "missing.json")
    with pytest.raises(PrdError, match=r"is a directory, not a PRD file") as caught:
        load_prd(tmp_path)
    assert caught.value.file == str(tmp_path)
    bad = tmp_path / "prd.json"
    bad.write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(PrdError, match=r"prd\.json: not valid UTF-8: byte 0xe9 on line 1"):
        load_prd(bad)


def load_error_as_nobody(path: Path) -> str:
    """``load_prd(path)``'s error message, read as an unprivileged user (root reads any file).

    A forked child drops to uid/gid 65534 and reports through a pipe; the modules are already
    imported, so the child touches no file but ``path``.
    """
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():  # Python ≥ 3.12 warns about fork() beside Ray's threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        message = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            load_prd(path)
        except PrdError as exc:
            message = str(exc)
        except BaseException as exc:
            message = f"unexpected {type(exc).__name__}: {exc}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


def test_load_prd_unreadable_file(tmp_path: Path) -> None:
    locked = tmp_path / "prd.json"
    locked.write_text(prd(story("US-001")))
    locked.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(PrdError, match="cannot read: Permission denied"):
            load_prd(locked)
    else:
        tmp_path.chmod(0o755)
        assert "prd.json: cannot read: Permission denied" in load_error_as_nobody(locked)


def test_utf8_bom_is_tolerated() -> None:
    assert ids(parse_prd_text("\ufeff" + prd(story("US-001")), "<request>")) == ["US-001"]


def test_prd_error_is_a_value_error_and_survives_pickling() -> None:
    error = PrdError("tasks/prd.json", "unknown story id 'X'", story="US-002", field="dependsOn")
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.file, copy.story, copy.field, copy.problem, str(copy)) == (
        error.file,
        error.story,
        error.field,
        error.problem,
        str(error),
    )


# --- fuzzing: only PrdError ever escapes ---------------------------------------------------------

JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
JUNK = JSON_LEAVES | st.lists(JSON_LEAVES, max_size=2)  # cheap wrong-typed field values
STORY_IDS = st.sampled_from(["US-001", "US-002", "US-003", "US-004"])


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a well-typed value, sometimes junk, so examples get past the first field check."""
    return st.integers(0, 9).flatmap(lambda n: JUNK if n == 0 else valid)


PRD_SHAPED = st.fixed_dictionaries(
    {
        "name": mostly(st.text(min_size=1, max_size=6)),
        "userStories": mostly(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "id": mostly(STORY_IDS),
                        "title": mostly(st.text(min_size=1, max_size=6)),
                        "passes": mostly(st.booleans()),
                    },
                    optional={
                        "priority": mostly(st.integers(-2, 9)),
                        "dependsOn": mostly(st.lists(STORY_IDS, max_size=3)),
                        "acceptanceCriteria": mostly(st.lists(st.text(max_size=5), max_size=2)),
                        "labels": mostly(st.lists(st.text(max_size=3), max_size=2)),
                        "notes": mostly(st.text(max_size=5)),
                        "description": mostly(st.text(max_size=5)),
                        "completionNotes": mostly(st.text(max_size=5)),
                        "extra": JSON_VALUES,
                    },
                ),
                min_size=1,
                max_size=4,
            )
        ),
    },
    optional={
        "project": JUNK,
        "description": mostly(st.text(max_size=5)),
        "branchName": mostly(st.text()),
        "metadata": JSON_VALUES,
    },
)
FUZZ = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
HINTS = st.sampled_from(["", "prd.json", "issues.jsonl", "prd.md"])


def check_plan_invariants(plan: TaskPlan) -> None:
    seen: set[str] = set()
    for step in plan.steps:
        assert set(step.depends_on) <= seen, "a step came before one of its dependencies"
        seen.add(step.id)
    assert not seen & set(plan.skipped)


def parses_or_prd_error(text: str, hint: str = "") -> None:
    try:
        plan = parse_prd_text(text, "<request>", filename_hint=hint)
    except PrdError:
        return
    check_plan_invariants(plan)


@FUZZ
@given(value=JSON_VALUES, hint=HINTS)
def test_arbitrary_json_gives_a_plan_or_prd_error(value: Any, hint: str) -> None:
    parses_or_prd_error(json.dumps(value), hint)
    parses_or_prd_error(json.dumps(value, indent=2), hint)


@FUZZ
@given(value=PRD_SHAPED, hint=HINTS)
def test_prd_shaped_json_with_random_fields_gives_a_plan_or_prd_error(value: Any, hint: str) -> None:
    parses_or_prd_error(json.dumps(value, indent=2), hint)


MARKDOWN_LINES = st.sampled_from(
    [
        "# PRD: Fuzz",
        "## Overview",
        "## User Stories",
        "### US-001: One",
        "### US-002: Two",
        "## EPIC-3: x",
        "**Depends on:** US-001",
        "**Depends on:** US-002, US-001",
        "**Priority:** P0",
        "**Priority:** P9",
        "**Acceptance Criteria:**",
        "- [ ] item",
        "- [x] done",
        "- plain",
        "---",
        "",
        "> Branch: `b`",
        "**Description:** words",
        "### Feature 1.1: feat",
    ]
)


@FUZZ
@given(lines=st.lists(MARKDOWN_LINES | st.text(max_size=20), max_size=14))
def test_arbitrary_markdown_gives_a_plan_or_prd_error(lines: list[str]) -> None:
    parses_or_prd_error("\n".join(lines))


# --- mark_story_passed ---------------------------------------------------------------------------


def story_span(text: str, story_id: str) -> tuple[int, int]:
    """Where a pretty-printed story object starts ('{') and ends (its closing '}' line)."""
    at = text.index(f'"id": "{story_id}"')
    start = text.rindex("{", 0, at)
    indent = text[text.rindex("\n", 0, start) + 1 : start]
    return start, text.index("\n" + indent + "}", at)


def assert_only_story_changed(before: str, after: str, story_id: str) -> None:
    start, end = story_span(before, story_id)
    assert after[:start] == before[:start]
    assert after.endswith(before[end:])


def copy_of(name: str, tmp_path: Path, as_name: str = "prd.json") -> Path:
    target = tmp_path / as_name
    shutil.copyfile(DATA / name, target)
    return target


def test_mark_story_passed_reproduces_ralph_tui_own_write(tmp_path: Path) -> None:
    path = copy_of("prd.json.before", tmp_path)
    mark_story_passed(path, "US-001", "Completed by agent")
    mark_story_passed(path, "US-002", "Completed by agent")
    ralph_after = (DATA / "prd.json.after").read_text()
    # ralph-tui also bumps metadata.updatedAt on every write; Hearth changes nothing else
    assert path.read_text() == ralph_after.replace(',\n    "updatedAt": "2026-11-25T04:04:36.956Z"', "")


def test_mark_story_passed_on_ralph_output_keeps_every_other_byte(tmp_path: Path) -> None:
    path = copy_of("prd-greeting.json", tmp_path)
    before = path.read_text()
    assert not before.endswith("\n")  # ralph-tui writes JSON.stringify(prd, null, 2) with no newline
    mark_story_passed(path, "US-002", 'Done: "goodbye" ✓\nsecond line')
    after = path.read_text()
    assert_only_story_changed(before, after, "US-002")
    assert not after.endswith("\n")
    assert '      "passes": true,\n' in after
    assert after.count('"passes": false') == 2
    assert '      ],\n      "completionNotes": "Done: \\"goodbye\\" ✓\\nsecond line"\n    }' in after
    expected = json.loads(before)
    expected["userStories"][1].update(passes=True, completionNotes='Done: "goodbye" ✓\nsecond line')
    assert json.loads(after) == expected
    assert load_prd(path).skipped == ["US-002"]


def test_mark_story_passed_on_four_space_file_with_unknown_keys(tmp_path: Path) -> None:
    document = {
        "name": "Four",
        "custom": {"owner": "ops"},
        "userStories": [
            story("US-001", extra=[1, 2], priority=1),
            story("US-002", completionNotes="old", meta={"x": "ü"}, passes=False),
            story("US-003"),
        ],
        "metadata": {"updatedAt": "2026-01-01T00:00:00Z"},
    }
    path = tmp_path / "prd.json"
    path.write_text(json.dumps(document, indent=4, ensure_ascii=False) + "\n")
    path.chmod(0o664)
    before = path.read_text()
    mark_story_passed(path, "US-002", "new notes")
    after = path.read_text()
    assert_only_story_changed(before, after, "US-002")
    assert after.endswith("}\n")
    assert after == before.replace(
        '"passes": false,\n            "completionNotes": "old"',
        '"passes": true,\n            "completionNotes": "new notes"',
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prd.json", "prd.json.lock"]  # no temp file left
    assert path.stat().st_mode & 0o777 == 0o664


def test_mark_story_passed_on_compact_and_crlf_files(tmp_path: Path) -> None:
    path = tmp_path / "prd.json"
    path.write_text('{"name":"x","userStories":[{"id":"A","title":"t","passes":false}]}')
    mark_story_passed(path, "A", "ok")
    assert (
        path.read_text()
        == '{"name":"x","userStories":[{"id":"A","title":"t","passes":true,"completionNotes":"ok"}]}'
    )
    crlf = prd(story("A"), story("B")).replace("\n", "\r\n")
    path.write_bytes(crlf.encode())
    mark_story_passed(path, "B", "ok")
    story_b = '"id": "B",\r\n      "title": "Title of B",\r\n      "passes": '
    assert path.read_bytes().decode() == crlf.replace(
        story_b + "false", story_b + 'true,\r\n      "completionNotes": "ok"'
    )


def test_mark_story_passed_is_idempotent_and_does_not_rewrite(tmp_path: Path) -> None:
    path = copy_of("prd-greeting.json", tmp_path)
    mark_story_passed(path, "US-001", "done é \ud800")
    once = path.read_bytes()
    inode = path.stat().st_ino
    mark_story_passed(path, "US-001", "done é \ud800")
    assert path.read_bytes() == once
    assert path.stat().st_ino == inode  # nothing was replaced
    assert json.loads(once)["userStories"][0]["completionNotes"] == "done é \ud800"
    assert b"\\ud800" in once  # a lone surrogate is escaped, as JSON.stringify does


def test_mark_story_passed_errors_leave_the_file_alone(tmp_path: Path) -> None:
    path = copy_of("prd-greeting.json", tmp_path)
    before = path.read_bytes()
    with pytest.raises(PrdError) as caught:
        mark_story_passed(path, "US-404", "x")
    assert (caught.value.story, caught.value.field) == ("US-404", "id")
    assert "no story with id 'US-404'" in str(caught.value)
    assert path.read_bytes() == before
    markdown = copy_of("prd-greeting.md", tmp_path, "prd-greeting.md")
    with pytest.raises(PrdError, match=r"only prd\.json files are marked here, this is ralph-markdown"):
        mark_story_passed(markdown, "US-001", "x")
    with pytest.raises(PrdError, match="cannot read"):
        mark_story_passed(tmp_path / "nope.json", "US-001", "x")
    with pytest.raises(PrdError, match="is a directory"):
        mark_story_passed(tmp_path, "US-001", "x")
    broken = tmp_path / "broken.json"
    broken.write_text(prd(story("A", dependsOn=["Z"])))
    with pytest.raises(PrdError, match="unknown story id 'Z'"):
        mark_story_passed(broken, "A", "x")


def test_mark_story_passed_falls_back_to_reserializing_when_minimal_edit_is_impossible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def impossible(body: str, index: int, notes: str) -> str:
        raise ValueError("simulated: story span not found")

    monkeypatch.setattr(agent.prd.writer, "_minimal_edit", impossible)
    document = {"name": "Four", "userStories": [story("A"), story("B", completionNotes="old")]}
    path = tmp_path / "prd.json"
    path.write_text(json.dumps(document, indent=4, ensure_ascii=False) + "\n")
    mark_story_passed(path, "B", "new")
    document["userStories"][1].update(passes=True, completionNotes="new")
    assert path.read_text() == json.dumps(document, indent=4, ensure_ascii=False) + "\n"


def test_concurrent_marks_of_different_stories_all_land(tmp_path: Path) -> None:
    path = tmp_path / "prd.json"
    path.write_text(prd(*(story(f"US-{n:03}") for n in range(8))))
    threads = [
        threading.Thread(target=mark_story_passed, args=(path, f"US-{n:03}", f"by thread {n}"))
        for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    plan = load_prd(path)
    assert plan.steps == []
    assert len(plan.skipped) == 8
