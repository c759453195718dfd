"""Ralph markdown PRDs (``tasks/prd-*.md``) → steps, the way ralph-tui's ``src/prd/parser.ts`` reads them.

Same regexes, same description and priority rules, so a markdown PRD and the prd.json that
``ralph-tui convert --to json`` makes from it give the same steps. One deliberate difference:
ralph-tui guesses stories from any "Heading: text" when no ``### US-001: Title`` heading exists;
Hearth refuses such a file instead of guessing. Ordering is ``agent.prd.model.build_plan``'s job.
"""

from __future__ import annotations

import re

from agent.prd.model import PrdError, Step, TaskPlan, build_plan, check_ids

TITLE = re.compile(r"^#[^\S\n]+(?:PRD:[^\S\n]*)?(.+)$", re.M)  # ralph matches line by line
STORY = re.compile(
    r"^#{2,4}\s+(US-[0-9]{3}|US-[0-9]+(?:\.[0-9]+)+|(?!US-)[A-Z]+-[0-9]+|Feature\s+[0-9]+\.[0-9]+)"
    r":\s*(.+)$",
    re.I,
)
_OVERVIEW = re.compile(r"^##\s+Overview\s*\n+([\s\S]*?)(?=\n##|\n---|\n$)", re.M)
_BRANCH = re.compile(r"^>\s*Branch:\s*`?([^`\n]+)`?", re.M)
_CRITERIA = re.compile(r"\*\*Acceptance Criteria:\*\*|^Acceptance Criteria:$", re.M)
_PRIORITY = re.compile(r"\*\*Priority:\*\*\s*P?([0-9])")
_DEPENDS = re.compile(r"\*\*Depends on:\*\*\s*(.+)")
_CHECKBOX = re.compile(r"^-\s+\[[\sx]\]\s+(.+)$")
_BULLET = re.compile(r"^-\s+(.+)$")
_DESCRIPTION_STOP = re.compile(r"^\*\*(Acceptance Criteria|Priority|Depends on|Labels|Notes):\*\*")


def looks_like_markdown_prd(text: str) -> bool:
    return bool(TITLE.search(text)) or any(STORY.match(line) for line in text.split("\n"))


def markdown_plan(text: str, source: str) -> TaskPlan:
    """A markdown PRD's plan: ids checked, open steps ordered (markdown has no finished stories)."""
    name, description, branch, steps = parse_markdown(text, source)
    check_ids(source, steps, "Depends on")
    return build_plan(source, "ralph-markdown", name, description, branch, steps, set(), "Depends on")


def parse_markdown(text: str, source: str) -> tuple[str, str, str | None, list[Step]]:
    """(name, description, branch name, stories in file order); all stories start open."""
    text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    headers = [(i, m) for i, line in enumerate(lines) if (m := STORY.match(line))]
    if not headers:
        raise PrdError(source, "empty PRD: no user stories (expected '### US-001: Title' headings)")
    steps = []
    for n, (start, match) in enumerate(headers):
        end = headers[n + 1][0] if n + 1 < len(headers) else len(lines)
        steps.append(_story(match, lines[start:end], n, source))
    title = TITLE.search(text)
    overview = _OVERVIEW.search(text)
    branch = _BRANCH.search(text)
    return (
        title.group(1).strip() if title else "Untitled PRD",
        overview.group(1).strip() if overview else _first_paragraph(lines),
        branch.group(1).strip() if branch else None,
        steps,
    )


def _story(match: re.Match[str], section: list[str], index: int, source: str) -> Step:
    raw_id, title = match.group(1), match.group(2).strip()
    feature = re.fullmatch(r"Feature\s+([0-9]+)\.([0-9]+)", raw_id, re.I)
    story_id = f"FEAT-{feature.group(1)}-{feature.group(2)}" if feature else raw_id
    if not title:
        raise PrdError(source, "empty story title", story=story_id, field="title")
    joined = "\n".join(section)
    priority = _PRIORITY.search(joined)
    number = int(priority.group(1)) if priority else 2
    number = 2 if number > 4 else number
    depends = _DEPENDS.search(joined)
    deps = [d.strip() for d in re.split(r",\s*", depends.group(1)) if d.strip()] if depends else []
    return Step(
        id=story_id,
        title=title,
        description=_description(section, title) or title,
        acceptance=_criteria(joined),
        depends_on=list(dict.fromkeys(deps)),
        # ralph-tui quirk, kept so the .md and its converted prd.json agree: an explicit P2 (or no
        # priority) becomes the story's position capped at 4; P0 then clamps to 1 like prd.json's 0.
        priority=max(number if number != 2 else min(index + 1, 4), 1),
    )


def _description(section: list[str], title: str) -> str:
    start = next(i for i, line in enumerate(section) if title in line)
    words: list[str] = []
    for line in (s.strip() for s in section[start + 1 :]):
        if _CRITERIA.search(line) or _DESCRIPTION_STOP.match(line) or line.startswith(("#", "---")):
            break
        line = re.sub(r"^\*\*Description:\*\*\s*", "", line)
        if line:
            words.append(line)
        elif words:
            break
    return re.sub(r"\*\*([^*]+)\*\*", r"\1", " ".join(words))


def _criteria(section: str) -> list[str]:
    found = _CRITERIA.search(section)
    if not found:
        return []
    criteria = []
    for line in section[found.end() :].split("\n")[1:]:
        if (line.startswith("**") and not line.startswith("**Acceptance")) or line.startswith(("#", "---")):
            break
        if checkbox := _CHECKBOX.match(line):
            criteria.append(checkbox.group(1).strip())
        elif (bullet := _BULLET.match(line)) and not bullet.group(1).startswith("["):
            criteria.append(bullet.group(1).strip())
    return criteria


def _first_paragraph(lines: list[str]) -> str:
    paragraph: list[str] = []
    after_title = False
    for line in lines:
        if TITLE.match(line):
            after_title = True
        elif after_title and not line.startswith(("#", ">")):
            if line.strip():
                paragraph.append(line.strip())
            elif paragraph:
                break
    return " ".join(paragraph) or "No description"
