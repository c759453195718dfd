"""A capable-model stand-in (a scripted model, NOT a language model) does a 3-story PRD on a real
small Python package with failing tests, through the real TaskRunner, git and a bwrap sandbox.

The stand-in acts the way a capable coder model does with these tools: it searches, reads the line
ranges its searches point at, makes several calls in one reply, edits with exact matches, runs the
tests, and relies on what the progress file told it in the prompt (a fact learnt in story 1 that
story 2 needs). If the loop lost parallel calls, ranges, search or the progress file, a story fails.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import git
from tests_support import RecordingController, runner_for

from agent.events import CheckpointReady, TerminationReason
from agent.models.base import ChatReply, ModelLimits
from agent.models.scripted import scripted_reply
from agent.prd import load_prd
from agent.progress import PROGRESS_FILE, recent_progress
from agent.project import init_project, open_project, task_branch
from agent.runner import TaskSpec

PACKAGE = {
    "shop/__init__.py": '"""A tiny shopping cart."""\n',
    "shop/pricing.py": '"""Prices."""\n\n\ndef apply_discount(amount, percent):\n'
                       '    """``amount`` less ``percent`` per cent."""\n    return amount - percent\n',
    "shop/cart.py": '"""The cart."""\n\nfrom shop.pricing import apply_discount\n\n\n'
                    'def total(items, discount_percent=0):\n    """What the items cost together."""\n'
                    '    subtotal = sum(price for _name, price, qty in items)\n'
                    '    return apply_discount(subtotal, discount_percent)\n',
    "tests/__init__.py": "",
    "tests/test_cart.py": 'import unittest\n\nfrom shop.cart import total\n\n\nclass CartTest(unittest.TestCase):\n'
                          '    def test_total_counts_quantities(self):\n'
                          '        self.assertEqual(total([("pen", 150, 2), ("pad", 300, 1)]), 600)\n\n'
                          '    def test_discount_is_a_percentage(self):\n'
                          '        self.assertEqual(total([("pen", 1000, 1)], discount_percent=10), 900)\n',
    "README.md": "# shop\n\nA tiny shopping cart.\n\n## Usage\n\n```python\nfrom shop.cart import total\n```\n",
    "AGENTS.md": "# Notes for agents\n\nRun the tests with `python3 -m unittest` (no pytest here).\n",
    ".gitignore": "__pycache__/\n.pytest_cache/\n",
}
UNITTEST = "python3 -m unittest -q"
PRD = {
    "name": "Shop fixes", "description": "Make the cart add up, then grow it a little.",
    "userStories": [
        {"id": "US-001", "title": "Fix cart totals", "passes": False, "priority": 1,
         "description": "Totals ignore quantities and discounts are wrong.",
         "acceptanceCriteria": [f"`{UNITTEST} tests/test_cart.py` passes"]},
        {"id": "US-002", "title": "Add mean item price", "passes": False, "priority": 2, "dependsOn": ["US-001"],
         "description": "shop.stats.mean_price(items): the mean unit price, with its test.",
         "acceptanceCriteria": [f"`{UNITTEST} tests/test_stats.py` passes"]},
        {"id": "US-003", "title": "Document mean_price", "passes": False, "priority": 3, "dependsOn": ["US-002"],
         "description": "The README's usage section shows mean_price.",
         "acceptanceCriteria": ["`grep -q 'mean_price' README.md` passes"]},
    ],
}
LEARNT = "Items are (name, price, qty) tuples; prices are integer cents."
STATS = '"""Statistics over cart items."""\n\n\ndef mean_price(items):\n' \
        '    """Mean unit price of ``items`` ((name, price, qty) tuples), in cents."""\n' \
        '    return sum(price for _name, price, _qty in items) / len(items) if items else 0\n'
STATS_TEST = 'import unittest\n\nfrom shop.stats import mean_price\n\n\nclass StatsTest(unittest.TestCase):\n' \
             '    def test_mean_price(self):\n' \
             '        self.assertEqual(mean_price([("a", 100, 3), ("b", 300, 1)]), 200)\n' \
             '        self.assertEqual(mean_price([]), 0)\n'


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


class CapableStandIn:
    """Scripted: acts like a capable model (searches, ranges, parallel calls, exact edits), not a model."""

    def __init__(self) -> None:
        self.name = "scripted:capable-stand-in"
        self.limits = ModelLimits(context_window=16384, max_output_tokens=2048)
        self.prompts: dict[str, list[dict[str, Any]]] = {}
        self.replies: list[list[dict[str, Any]]] = []

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 *, temperature: float | None = None, max_tokens: int | None = None) -> ChatReply:
        story = messages[1]["content"]
        story_id = re.search(r"## Your story: (US-\d+)", story)
        assert story_id, story
        self.prompts.setdefault(story_id.group(1), messages)
        turn = sum(1 for m in messages if m["role"] == "assistant")
        last = [m["content"] for m in messages[len(messages) - 4:] if m["role"] == "tool"]
        reply = getattr(self, "story_" + story_id.group(1).replace("-", "_"))(turn, story, last)
        self.replies.append(reply)
        return scripted_reply(reply, messages)

    def story_US_001(self, turn: int, story: str, last: list[str]) -> list[dict[str, Any]]:
        if turn == 0:
            return [call("search", pattern=r"def (total|apply_discount)", glob="shop/*.py"),
                    call("shell", command=f"{UNITTEST} tests/test_cart.py")]
        if turn == 1:  # read just the functions the search found
            lines = dict(re.findall(r"shop/(\w+)\.py:(\d+):def", last[0]))
            return [call("read_file", path=f"shop/{name}.py", start_line=int(n), end_line=int(n) + 4)
                    for name, n in sorted(lines.items())]
        if turn == 2:
            return [call("edit_file", path="shop/cart.py", old_text="sum(price for _name, price, qty in items)",
                         new_text="sum(price * qty for _name, price, qty in items)"),
                    call("edit_file", path="shop/pricing.py", old_text="return amount - percent",
                         new_text="return amount * (100 - percent) // 100")]
        if turn == 3:
            return [call("shell", command=f"{UNITTEST} tests/test_cart.py")]
        return [call("step_done", summary="Totals multiply by quantity; discounts are percentages.",
                     learnings=LEARNT)]

    def story_US_002(self, turn: int, story: str, last: list[str]) -> list[dict[str, Any]]:
        if turn == 0:
            if LEARNT not in story:  # without the progress file it would have to guess the item shape
                return [call("ask_user", question="What shape do cart items have?")]
            return [call("write_file", path="shop/stats.py", content=STATS),
                    call("write_file", path="tests/test_stats.py", content=STATS_TEST),
                    call("shell", command=UNITTEST)]
        return [call("step_done", summary="mean_price with its test", learnings="")]

    def story_US_003(self, turn: int, story: str, last: list[str]) -> list[dict[str, Any]]:
        if turn == 0:
            return [call("search", pattern="^## Usage", glob="README.md")]
        if turn == 1:
            line = int(last[0].splitlines()[1].split(":")[1])
            return [call("read_file", path="README.md", start_line=line, end_line=line + 4)]
        if turn == 2:
            return [call("edit_file", path="README.md", old_text="from shop.cart import total\n```",
                         new_text="from shop.cart import total\nfrom shop.stats import mean_price\n```\n\n"
                                  "`mean_price(items)` is the mean unit price in cents.")]
        return [call("step_done", summary="README shows mean_price")]


def make_shop(tmp_path: Path) -> Path:
    path = tmp_path / "shop"
    for name, text in PACKAGE.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    (path / "tasks").mkdir()
    (path / "tasks" / "prd.json").write_text(json.dumps(PRD, indent=2))
    repo = git.Repo.init(path, initial_branch="main")
    repo.git.add("-A")
    repo.git.commit("-m", "shop with failing tests", author="t <t@t>")
    init_project(path, config={"check": UNITTEST})
    failing = subprocess.run(UNITTEST.split(), cwd=path, capture_output=True, text=True)
    assert failing.returncode != 0 and "failures=2" in failing.stderr  # the package really starts broken
    return path


def test_capable_stand_in_completes_a_three_story_prd_on_a_real_package(tmp_path: Path) -> None:
    project = make_shop(tmp_path)
    spec = TaskSpec(task_id="T-7", project_path=str(project), plan=load_prd(project / "tasks" / "prd.json"),
                    prd_relpath="tasks/prd.json", model="scripted:capable-stand-in",
                    base_commit=open_project(project).head_commit(), config=open_project(project).config)
    model, controller = CapableStandIn(), RecordingController()
    result = runner_for(spec, controller, model).run()
    assert result.reason == TerminationReason.completed, result.message

    branch = task_branch("T-7")
    checkout = tmp_path / "checkout"
    git.Repo(project).git.worktree("add", str(checkout), branch)
    passing = subprocess.run(UNITTEST.split(), cwd=checkout, capture_output=True, text=True)
    assert passing.returncode == 0 and "Ran 3 tests" in passing.stderr, passing.stderr
    assert "mean_price" in (checkout / "README.md").read_text()
    assert all(s["passes"] for s in json.loads((checkout / "tasks" / "prd.json").read_text())["userStories"])
    # One checkpoint per story, each accepted by a check (not on the model's word).
    checkpoints = [e for e in controller.events if isinstance(e, CheckpointReady)]
    assert [c.step_id for c in checkpoints] == ["US-001", "US-002", "US-003"] and all(c.checked for c in checkpoints)
    assert set(checkpoints[0].files_changed) >= {"shop/cart.py", "shop/pricing.py", PROGRESS_FILE}

    # The progress file on the branch is Ralph TUI's, with what each step did and learnt.
    progress = (checkout / PROGRESS_FILE).read_text()
    assert progress.startswith("# Ralph Progress Log") and progress.count("## ✓ Iteration") == 3
    assert LEARNT in recent_progress(progress) and "- shop/stats.py" in progress

    # What the model was shown: AGENTS.md, the PRD, the stories done and to do, earlier progress.
    system, story2 = model.prompts["US-002"][0]["content"], model.prompts["US-002"][1]["content"]
    assert "The repository's AGENTS.md" in system and "no pytest here" in system
    assert "# PRD: Shop fixes" in story2 and "### Progress: 1/3 stories complete" in story2
    assert "- US-001: Fix cart totals" in story2 and "- US-003: Document mean_price" in story2
    assert LEARNT in story2 and f"`{UNITTEST} tests/test_stats.py`" in story2
    # And it used the tools a capable model uses.
    calls = [c for reply in model.replies for c in reply]
    assert sum(1 for reply in model.replies if len(reply) > 1) >= 3
    assert any(c["name"] == "read_file" and "start_line" in c["arguments"] for c in calls)
    assert {"search", "edit_file", "shell"} <= {c["name"] for c in calls}
