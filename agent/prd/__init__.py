"""PRDs in, ordered steps out: ralph-tui prd.json, ralph markdown PRDs and beads issues.

    ValueError
    └── PrdError        bad PRD input; str() names the file, the story and the field

``load_prd``/``parse_prd_text`` detect the format, validate it with ralph-tui's rules plus Hearth's
stricter ones (unknown dependencies and cycles are errors), and order the open steps: dependencies
first, then priority (1 = highest), then id. ``mark_story_passed`` is the only writer of prd.json and
changes nothing but the one story's ``passes``/``completionNotes``. Formats: docs/prd-formats.md.

Imports point one way: ``model`` ← ``ralph_json``, ``ralph_markdown``, ``beads`` ← ``reader`` ← ``writer``.
"""

from agent.prd.model import PrdError, PrdFormat, Step, TaskPlan
from agent.prd.reader import MAX_PRD_BYTES, load_prd, parse_prd_text
from agent.prd.writer import mark_story_passed, with_story_passed

__all__ = ["MAX_PRD_BYTES", "PrdError", "PrdFormat", "Step", "TaskPlan", "load_prd", "mark_story_passed",
           "parse_prd_text", "with_story_passed"]
