"""Benchmark Hearth's agent loop against a minimal bash-only loop on small stories.

    python bench/agent.py [--turns 4] [--max-tokens 256] [--only id,id] [--model embedded:smollm2-135m]

Each story of ``bench/agent_stories.toml`` (a workspace, a story, a check) runs twice with the same
model in the same run, each time in a fresh copy of its workspace in a bwrap sandbox:

* **hearth** — ``agent.loop.run_step``: the prompt class, tools, context fitting and checks the
  model's catalogue entry selects (the embedded SmolLM2-135M gets the ``tiny`` class);
* **baseline** — ``bench/bash_loop.py``: mini-swe-agent's shape, one bash block a turn.

A story passes when its check passes in the workspace after the run (whatever the loop believed).
Turns and tokens (prompt + completion, as the server counted them) are averaged over all stories.
Per-story lines go to stderr; the last line on stdout is one JSON object::

    {"stories": N, "hearth": {"passed": n, "turns_per_story": x, "tokens_per_story": y},
     "baseline": {"passed": n, "turns_per_story": x, "tokens_per_story": y}}
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import BudgetConfig
from agent.loop import StepContext, run_step
from agent.models import EMBEDDED_LIMITS, chat_model_for
from agent.models.openai_chat import OpenAIChat
from agent.prd import Step
from agent.sandbox import SandboxConfig, open_sandbox
from bench.bash_loop import run_bash_loop

STORIES = Path(__file__).with_name("agent_stories.toml")
EMBEDDED = "embedded:smollm2-135m"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def load_stories(only: set[str] | None = None) -> list[dict[str, Any]]:
    stories: list[dict[str, Any]] = tomllib.loads(STORIES.read_text())["stories"]
    ids = [s["id"] for s in stories]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{STORIES}: story ids are not unique")
    if only:
        unknown = only - set(ids)
        if unknown:
            raise SystemExit(f"unknown story ids: {', '.join(sorted(unknown))} (known: {', '.join(ids)})")
        stories = [s for s in stories if s["id"] in only]
    return stories


def make_workspace(story: dict[str, Any], root: Path) -> Path:
    """A git repository holding the story's files, as a project would be."""
    root.mkdir(parents=True)
    for name, spec in story.get("files", {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, dict):
            spec = "".join(spec["template"].format(n=n) + "\n" for n in range(1, spec["lines"] + 1))
        path.write_text(spec)
    env = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b", "PATH": "/usr/bin:/bin"}
    for command in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                    ["git", "commit", "-q", "--allow-empty", "-m", "story"]):
        subprocess.run(command, cwd=root, check=True, env=env)
    return root


def task_text(story: dict[str, Any]) -> str:
    criteria = "\n".join(f"- {c}" for c in story.get("acceptance", []))
    return f"{story['title']}: {story['description']}\nAcceptance criteria:\n{criteria}"


def run_hearth(model: OpenAIChat, story: dict[str, Any], root: Path, turns: int) -> dict[str, Any]:
    sandbox = open_sandbox("bwrap", make_workspace(story, root / "ws"), SandboxConfig(), name=f"bench-h-{story['id']}")
    try:
        ctx = StepContext(
            task_id="BENCH", sandbox=sandbox, check_command=story["check"],
            step=Step(id=story["id"], title=story["title"], description=story["description"],
                      acceptance=story.get("acceptance", [])),
            budget=BudgetConfig(max_turns=turns), transcript_path=root / "hearth.json")
        result = run_step(ctx, model)
        passed = sandbox.exec(story["check"]).ok
        return {"passed": passed, "turns": result.turns, "outcome": result.outcome,
                "tokens": result.prompt_tokens + result.completion_tokens}
    finally:
        sandbox.destroy()


def run_baseline(model: OpenAIChat, story: dict[str, Any], root: Path, turns: int) -> dict[str, Any]:
    sandbox = open_sandbox("bwrap", make_workspace(story, root / "ws-b"), SandboxConfig(),
                           name=f"bench-b-{story['id']}")
    try:
        run = run_bash_loop(model.endpoint.base_url, model.endpoint.model, sandbox, task_text(story),
                            max_turns=turns, max_tokens=model.limits.max_output_tokens)
        passed = sandbox.exec(story["check"]).ok
        return {"passed": passed, "turns": run.turns, "outcome": "submitted" if run.submitted else run.error or "turns",
                "tokens": run.prompt_tokens + run.completion_tokens}
    finally:
        sandbox.destroy()


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = max(1, len(rows))
    return {"passed": sum(1 for r in rows if r["passed"]),
            "turns_per_story": round(sum(r["turns"] for r in rows) / n, 2),
            "tokens_per_story": round(sum(r["tokens"] for r in rows) / n, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=4, help="turns per story, both loops")
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="most tokens a reply may take, both loops (the 135M model decodes ~5 tokens/s "
                             "on a busy 2-core machine, and the baseline's replies run to the cap)")
    parser.add_argument("--only", default="", help="comma-separated story ids")
    parser.add_argument("--model", default=EMBEDDED, help="a model spec served over HTTP (embedded:, openai:, docker:)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the model server
    stories = load_stories({s for s in args.only.split(",") if s} or None)

    with tempfile.TemporaryDirectory(prefix="hearth-bench-agent-") as tmp:
        runtime = None
        if args.model == EMBEDDED:
            from agent.models.embedded import EmbeddedRuntime

            runtime = EmbeddedRuntime(Path(tmp) / "state", auto_install=False)
            model = OpenAIChat(runtime.ensure(EMBEDDED.split(":", 1)[1]), limits=EMBEDDED_LIMITS,
                               max_tokens=args.max_tokens)
        else:
            chat = chat_model_for(args.model)
            if not isinstance(chat, OpenAIChat):
                raise SystemExit(f"{args.model} is not served over HTTP; the baseline needs an endpoint")
            model = chat
            model.limits = model.limits.model_copy(update={"max_output_tokens": args.max_tokens})
        hearth: list[dict[str, Any]] = []
        baseline: list[dict[str, Any]] = []
        try:
            for story in stories:
                root = Path(tmp) / story["id"]
                started = time.monotonic()
                hearth.append(run_hearth(model, story, root, args.turns))
                middle = time.monotonic()
                baseline.append(run_baseline(model, story, root, args.turns))
                log(f"{story['id']}: hearth {hearth[-1]} in {middle - started:.0f} s; "
                    f"baseline {baseline[-1]} in {time.monotonic() - middle:.0f} s")
        finally:
            model.close()
            if runtime is not None:
                runtime.release(EMBEDDED.split(":", 1)[1])
    print(json.dumps({"stories": len(stories), "hearth": summary(hearth), "baseline": summary(baseline)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
