"""What accepts a step: the project's check plus the story's own checks.

A PRD gives a story a check the way Ralph TUI's quality gates read: an acceptance criterion that
names a command in backticks and says it passes, e.g. ``"`python3 -m pytest tests/test_cart.py` passes"``
(also "succeeds", "exits 0", "is green"), or ``"Check: `make lint`"``. Each such command must exit 0 in
the sandbox, after the project's ``check``, for ``step_done`` to be accepted.

With no check anywhere, nothing but the model's word accepts a step: ``submit_warnings`` says so at
submit, and every checkpoint records ``checked=False`` so its approval card says so too.
"""

from __future__ import annotations

import re

from agent.prd import Step, TaskPlan

_CHECK = re.compile(
    r"(?:^\s*check:\s*`(?P<a>[^`]+)`)"
    r"|(?:`(?P<b>[^`]+)`\s+(?:passes|succeeds|exits (?:with )?(?:code )?0|is green|runs clean))",
    re.IGNORECASE,
)
MODEL_WORD = "accepted on the model's word"


def story_checks(step: Step) -> list[str]:
    """The commands the story's acceptance criteria (and notes) ask to pass, in order, once each."""
    found: list[str] = []
    for text in [*step.acceptance, *step.notes.splitlines()]:
        for match in _CHECK.finditer(text):
            command = (match.group("a") or match.group("b") or "").strip()
            if command and command not in found:
                found.append(command)
    return found


def step_checks(project_check: str, step: Step) -> list[str]:
    """Every command that must pass for ``step`` to be accepted: the project's first, then the story's."""
    checks = [project_check] if project_check.strip() else []
    return checks + [c for c in story_checks(step) if c not in checks]


def submit_warnings(plan: TaskPlan, project_check: str) -> list[str]:
    """Sentences for the person submitting ``plan``: today, only "nothing will check this work"."""
    if project_check.strip():
        return []
    unchecked = [s.id for s in plan.steps if not story_checks(s)]
    if not unchecked:
        return []
    which = "any step" if len(unchecked) == len(plan.steps) else "steps " + ", ".join(unchecked)
    return [f"no check: the project has no `check` command in hearth.toml and the PRD gives no check for "
            f"{which}, so those steps will be {MODEL_WORD}. Add `check = \"...\"` to hearth.toml, or an "
            f"acceptance criterion like \"`python3 -m pytest` passes\"."]
