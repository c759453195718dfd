"""Reading a PRD of any supported format: detect it, hand it to its format module, return the plan.

``load_prd``/``parse_prd_text`` are the entry points (files and HTTP bodies); every problem,
including I/O and invalid JSON, is a ``PrdError``. Imports point one way: this module uses the
format modules, which use only ``agent.prd.model``.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any, NoReturn

from agent.prd import beads, ralph_markdown
from agent.prd.model import PrdError, TaskPlan
from agent.prd.ralph_json import parse_prd_json

MAX_PRD_BYTES = 2**20
"""The largest PRD accepted (1 MiB, some thousand stories): a PRD is a plan, and every scheduler
cycle and approval card works from it, so a bigger one is refused at submit."""


def _too_big(source: str) -> PrdError:
    return PrdError(source, f"larger than the {MAX_PRD_BYTES // 1024} KiB a PRD may be; split it into several PRDs")


def load_prd(path: Path) -> TaskPlan:
    """Read a PRD file of any supported format; every problem, including I/O, is a PrdError."""
    path = Path(path)
    return parse_prd_text(read_text(path), str(path), filename_hint=path.name)


def parse_prd_text(text: str, source: str, *, filename_hint: str = "") -> TaskPlan:
    """Parse PRD text (the HTTP API's entry point); ``filename_hint`` helps tell JSONL from JSON."""
    hint = filename_hint or source
    if len(text) > MAX_PRD_BYTES or len(text.encode("utf-8", errors="surrogatepass")) > MAX_PRD_BYTES:
        raise _too_big(source)
    body = text.removeprefix("\ufeff")
    if not body.strip():
        raise PrdError(source, "empty file: no PRD")
    if "\x00" in body:
        raise PrdError(source, "binary data: neither JSON, JSONL nor a markdown PRD")
    if hint.lower().endswith(".jsonl"):
        return beads.beads_plan(_jsonl_values(body, source), source, hint, "beads-jsonl")
    if body.lstrip()[0] in "{[" or hint.lower().endswith(".json"):
        first = body.lstrip().split("\n", 1)[0]
        with contextlib.suppress(PrdError):  # 2+ lines and the first is a whole object: one issue per line
            if "\n" in body.strip() and isinstance(_json_value(first, source), dict):
                return beads.beads_plan(_jsonl_values(body, source), source, hint, "beads-jsonl")
        return _from_json(_json_value(body, source), source, hint)
    if ralph_markdown.looks_like_markdown_prd(body):
        return ralph_markdown.markdown_plan(body, source)
    raise PrdError(source, "neither JSON, JSONL nor a markdown PRD (no '# PRD: Title' line and no "
                           "'### US-001: Title' story heading)")


def read_text(path: Path) -> str:
    """A PRD file's text; a missing, unreadable, non-regular, too big or non-UTF-8 file is a PrdError."""
    try:  # O_NONBLOCK: a FIFO named as a PRD must not block the reader (the scheduler) for ever
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except IsADirectoryError:
        raise PrdError(str(path), "is a directory, not a PRD file") from None
    except OSError as exc:
        raise PrdError(str(path), f"cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise PrdError(str(path), "is a directory, not a PRD file")
        if not stat.S_ISREG(mode):
            raise PrdError(str(path), "is not a regular file (a FIFO or device?), not a PRD file")
        data = os.read(fd, MAX_PRD_BYTES + 1)
        while len(data) <= MAX_PRD_BYTES and (more := os.read(fd, MAX_PRD_BYTES + 1 - len(data))):
            data += more
    except OSError as exc:
        raise PrdError(str(path), f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_PRD_BYTES:
        raise _too_big(str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PrdError(str(path), f"not valid UTF-8: byte {data[exc.start]:#04x} on line {line}") from None


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")  # JSON.parse (ralph-tui) rejects it too


def _json_value(text: str, source: str, line: int | None = None) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        where = f"line {line or exc.lineno} column {exc.colno}"
        raise PrdError(source, f"invalid JSON at {where}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # NaN, 4300+ digit numbers, absurd nesting
        raise PrdError(source, f"invalid JSON{f' on line {line}' if line else ''}: {exc}") from None


def _jsonl_values(body: str, source: str) -> list[tuple[str, Any]]:
    lines = enumerate(body.split("\n"), 1)
    return [(f"line {n}", _json_value(line, source, n)) for n, line in lines if line.strip()]


def _from_json(value: Any, source: str, hint: str) -> TaskPlan:
    if isinstance(value, dict) and not beads.looks_like_beads(value):
        return parse_prd_json(value, source)
    if isinstance(value, dict | list):
        return beads.beads_plan(beads.unwrap_bd_json(value, source), source, hint, "beads-json")
    kind = "null" if value is None else type(value).__name__
    raise PrdError(source, f"expected a JSON object (prd.json) or array (bd --json output), got {kind}")
