"""What an approval card shows beyond the diff stat: the diff itself, cut to fit a chat message.

The whole diff is one command away (``hearth diff T-1 [STEP]``, ``GET /v1/tasks/{id}/diff``), so
the card carries only the first ``DIFF_LIMIT`` characters, cut at a line end.
"""

from __future__ import annotations

import git

DIFF_LIMIT = 3000


def diff_excerpt(repo: git.Repo, old: str, new: str, limit: int = DIFF_LIMIT) -> tuple[str, bool]:
    """(the diff from ``old`` to ``new`` cut at ``limit`` characters, whether it was cut)."""
    text = repo.git.diff("--no-color", "--no-ext-diff", old, new)
    if len(text) <= limit:
        return text, False
    cut = text.rfind("\n", 0, limit)
    return text[: cut if cut > 0 else limit], True
