"""The baseline for bench/agent.py: a minimal bash-only agent loop in mini-swe-agent's shape.

No tools API, no context management, no checks: the model answers in plain text with one fenced
```bash block; the loop runs it in the sandbox and sends the output back as the next user message
(cut to ``OUTPUT_LIMIT`` characters); the run ends when the model's command prints the sentinel
``COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT`` or after ``max_turns``. Written for this benchmark from the
published description of mini-swe-agent's default agent, not copied from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

from agent.sandbox.base import Sandbox

SENTINEL = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
OUTPUT_LIMIT = 1500
SYSTEM = f"""You are a helpful assistant that can interact with a computer shell to solve tasks.
Your reply must contain exactly ONE bash code block with ONE command, like this:

```bash
ls -la
```

You are in the task's directory. When the task is done, run: echo {SENTINEL}"""
FORMAT_ERROR = "Please always provide EXACTLY ONE action in triple backticks (```bash ... ```)."
_BLOCK = re.compile(r"```(?:bash|sh)?\s*\n(.*?)\n```", re.DOTALL)


@dataclass
class BashRun:
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    submitted: bool = False
    error: str = ""


def run_bash_loop(base_url: str, model: str, sandbox: Sandbox, task: str, *, max_turns: int,
                  max_tokens: int = 512, timeout_s: float = 300) -> BashRun:
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": f"Please solve this task:\n{task}"}]
    run = BashRun()
    with httpx.Client(timeout=timeout_s) as client:
        while run.turns < max_turns:
            run.turns += 1
            try:
                response = client.post(f"{base_url.rstrip('/')}/chat/completions", json={
                    "model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens})
                response.raise_for_status()
                data = response.json()
            except httpx.HTTPError as exc:  # e.g. the conversation outgrew the window: the run ends
                run.error = f"{type(exc).__name__}: {exc}"[:300]
                return run
            usage = data.get("usage") or {}
            run.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            run.completion_tokens += int(usage.get("completion_tokens") or 0)
            text = data["choices"][0]["message"].get("content") or ""
            messages.append({"role": "assistant", "content": text})
            blocks = _BLOCK.findall(text)
            if len(blocks) != 1:
                messages.append({"role": "user", "content": FORMAT_ERROR})
                continue
            result = sandbox.exec(blocks[0], timeout_s=60)
            output = (result.stdout + result.stderr).strip()
            if output.splitlines()[:1] == [SENTINEL] or output.endswith(SENTINEL):
                run.submitted = True
                return run
            if len(output) > OUTPUT_LIMIT:
                output = output[:OUTPUT_LIMIT // 2] + "\n…\n" + output[-OUTPUT_LIMIT // 2:]
            messages.append({"role": "user",
                             "content": f"<returncode>{result.exit_code}</returncode>\n<output>\n{output}\n</output>"})
    return run
