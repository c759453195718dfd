"""The capable model's tools, acceptance checks, progress file and prompts, against a real bwrap sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.acceptance import MODEL_WORD, step_checks, story_checks, submit_warnings
from agent.prd import Step, TaskPlan
from agent.progress import PROGRESS_FILE, ProgressEntry, append_progress, codebase_patterns, recent_progress
from agent.prompts import StepMemory, capable_story_prompt, read_instructions, system_prompt
from agent.sandbox import SandboxConfig, open_sandbox
from agent.tools import OUTPUT_DIR, ToolBox, ToolError


@pytest.fixture
def box(tmp_path: Path) -> ToolBox:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "big.py").write_text("".join(f"value_{n} = {n}\n" for n in range(1, 301)))
    (workspace / "pkg").mkdir()
    source = "def total(xs):\n    return sum(xs)\n\n\ndef mean(xs):\n    return total(xs)\n"
    (workspace / "pkg" / "a.py").write_text(source)
    (workspace / "pkg" / "b.txt").write_text("total is mentioned here too\n")
    return ToolBox(open_sandbox("bwrap", workspace, SandboxConfig(), name="tools-test"),
                   profile="capable", output_limit=2000)


def test_read_file_numbers_lines_and_reads_ranges(box: ToolBox) -> None:
    part = box.run("read_file", {"path": "big.py", "start_line": 150, "end_line": 152})
    assert part.splitlines()[:3] == ["150\tvalue_150 = 150", "151\tvalue_151 = 151", "152\tvalue_152 = 152"]
    assert "[lines 150-152 of 300]" in part
    whole = box.run("read_file", {"path": "big.py"})  # too long for the model's share: says where to go on
    assert whole.startswith("  1\tvalue_1 = 1") and "read on with start_line=" in whole
    with pytest.raises(ToolError, match="has 300 lines; start_line 400 is past the end"):
        box.run("read_file", {"path": "big.py", "start_line": 400})


def test_edit_file_replaces_one_exact_match_and_explains_misses(box: ToolBox) -> None:
    with pytest.raises(ToolError, match=r"occurs 2 times in pkg/a.py \(at lines 2, 6\)"):
        box.run("edit_file", {"path": "pkg/a.py", "old_text": "return", "new_text": "yield"})
    with pytest.raises(ToolError, match=r"was not found in pkg/a\.py.*line 2"):
        box.run("edit_file", {"path": "pkg/a.py", "old_text": "  return sum(xs)  ", "new_text": "x"})
    edited = box.run("edit_file", {"path": "pkg/a.py", "old_text": "return total(xs)",
                                   "new_text": "return total(xs) / len(xs)"})
    assert edited.startswith("edited pkg/a.py: replaced lines 6-6")
    assert "return total(xs) / len(xs)" in (box.sandbox.workspace / "pkg" / "a.py").read_text()


def test_search_greps_and_globs(box: ToolBox) -> None:
    hits = box.run("search", {"pattern": r"def \w+"})
    assert "pkg/a.py:1:def total(xs):" in hits and "pkg/a.py:5:def mean(xs):" in hits
    only_py = box.run("search", {"pattern": "total", "glob": "**/*.py"})
    assert "pkg/a.py" in only_py and "b.txt" not in only_py
    assert box.run("search", {"glob": "pkg/*"}).splitlines()[1:] == ["pkg/a.py", "pkg/b.txt"]
    assert box.run("search", {"pattern": "no_such_name"}) == "no match for 'no_such_name'"


def test_long_shell_output_is_cut_for_the_model_but_kept_whole_in_a_file(box: ToolBox) -> None:
    seen = box.run("shell", {"command": "seq 1 5000"})
    assert len(seen) <= 2000 and f"{OUTPUT_DIR}/1.txt" in seen
    saved = box.run("read_file", {"path": f"{OUTPUT_DIR}/1.txt", "start_line": 4000, "end_line": 4001})
    assert saved.splitlines()[:2] == ["4000\t3999", "4001\t4000"]  # line 1 is the exit status
    assert (box.sandbox.workspace / OUTPUT_DIR / "1.txt").read_text().count("\n") == 5000
    excluded = (box.sandbox.workspace / ".git" / "info" / "exclude")
    assert not excluded.exists() or ".hearth/" in excluded.read_text()


def test_story_checks_come_from_acceptance_criteria() -> None:
    step = Step(id="US-1", title="t", acceptance=[
        "`python3 -m pytest tests/test_cart.py` passes", "Check: `ruff check .`", "README mentions `mean`"])
    assert story_checks(step) == ["python3 -m pytest tests/test_cart.py", "ruff check ."]
    assert step_checks("make test", step) == ["make test", "python3 -m pytest tests/test_cart.py", "ruff check ."]
    plan = TaskPlan(name="p", source="x", format="prd-json", steps=[step, Step(id="US-2", title="u")])
    [warning] = submit_warnings(plan, "")
    assert "steps US-2" in warning and MODEL_WORD in warning
    assert submit_warnings(plan, "make test") == []


def test_progress_file_speaks_ralph_tuis_format(tmp_path: Path) -> None:
    for n in range(1, 8):
        append_progress(tmp_path, ProgressEntry(step_id=f"US-00{n}", title=f"story {n}", duration_s=3,
                                                files_changed=["a.py"], notes="did it", learnings=f"fact {n}"),
                        now=1_780_000_000 + n)
    text = (tmp_path / PROGRESS_FILE).read_text()
    assert text.startswith("# Ralph Progress Log\n") and "## Codebase Patterns (Study These First)" in text
    assert "## ✓ Iteration 7 - US-007: story 7\n*2026-" in text and "**Files Changed:**\n- a.py" in text
    recent = recent_progress(text)
    assert recent.startswith("## Recent Progress (last 5 iterations)") and "Iteration 3 -" in recent
    assert "Iteration 2 -" not in recent
    assert codebase_patterns(text) == []
    patterned = text.replace("*Add reusable patterns discovered during development here.*", "- Use pytest fixtures")
    assert codebase_patterns(patterned) == ["Use pytest fixtures"]


def test_prompts_carry_the_prd_the_other_stories_progress_and_agents_md(tmp_path: Path) -> None:
    (tmp_path / "AGENTS.md").write_text("Always run `make lint`.\n")
    (tmp_path / "src").mkdir()
    name, text = read_instructions(tmp_path)
    memory = StepMemory(prd_name="Shop", prd_description="A tiny shop.", done=["US-1: fix total"],
                        todo=["US-3: docs"], progress="## ✓ Iteration 1 - US-1: fix total\nlearnt X\n",
                        instructions=text, instructions_file=name)
    assert "The repository's AGENTS.md" in system_prompt("capable", memory, max_output=2048)
    assert "make lint" in system_prompt("capable", memory, max_output=2048)
    assert "make lint" not in system_prompt("tiny", memory, max_output=512)
    story = capable_story_prompt(Step(id="US-2", title="add mean", acceptance=["`pytest` passes"]), memory,
                                 checks=["pytest"], feedback="", workspace=tmp_path, progress_limit=4000)
    assert "# PRD: Shop\nA tiny shop." in story and "### Progress: 1/3 stories complete" in story
    assert "- US-3: docs" in story and "learnt X" in story and "- `pytest`" in story and "src/" in story


def test_an_approval_card_for_unchecked_work_says_it_was_accepted_on_the_models_word() -> None:
    from agent.events import CheckpointReady
    from cluster.openclaw import render

    fields = {"task_id": "T-1", "step_id": "US-1", "commit": "c" * 40, "snapshot_id": "s", "diff_stat": "",
              "files_changed": [], "needs_approval": True}
    assert MODEL_WORD in render(CheckpointReady(**fields, check_summary="", checked=False)).text
    assert MODEL_WORD not in render(CheckpointReady(**fields, check_summary="ok: 3 passed")).text
