"""The tools the model works with, run against the step's sandbox.

Two sets, chosen by the model's catalogue entry (``ModelLimits.prompt``):

* ``capable`` — ``read_file`` with line numbers and ranges, ``write_file``, ``edit_file`` (replace
  one exact, unique piece of text), ``search`` (grep and glob), ``shell``, plus the loop's own
  ``step_done``, ``ask_user`` and ``checkpoint``.
* ``tiny`` — ``write_file``, ``read_file`` (plain text), ``shell``, ``step_done`` and ``ask_user``:
  a 135M model picks the wrong tool from a long list.

Long output is never lost: what the model sees is cut to ``output_limit`` characters, and the whole
of it is written to ``.hearth/output/<n>.txt`` in the workspace (ignored by git) for the model to page
through with ``read_file`` ranges. A mistake the model can act on (no match, several matches, a
missing argument) raises ``ToolError``, whose message goes back to the model as the call's result.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
from pathlib import Path
from typing import Any, Literal

from agent.sandbox.base import Sandbox, SandboxError
from agent.sandbox.files import read_workspace_file, write_workspace_file

Profile = Literal["capable", "tiny"]
OUTPUT_DIR = ".hearth/output"
SEARCH_MATCHES = 100
"""Most grep lines or file names one search returns (the rest are counted, not shown)."""


class ToolError(Exception):
    """The model's call cannot be carried out as given; str() tells it what to do instead."""


def _schema(name: str, description: str, required: dict[str, Any],
            optional: dict[str, Any] | None = None) -> dict[str, Any]:
    properties = {**required, **(optional or {})}
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": list(required),
                       "additionalProperties": False},
    }}


_TEXT = {"type": "string"}
_LINE = {"type": "integer", "minimum": 1}
LOOP_TOOLS = [
    _schema("step_done", "Say the story is finished; its checks then run. Put what you learnt about "
            "this codebase (useful for later stories) in 'learnings'.",
            {"summary": _TEXT}, {"learnings": _TEXT}),
    _schema("ask_user", "Ask the people on the project a question and wait for the answer.", {"question": _TEXT}),
    _schema("checkpoint", "Save the work so far as a checkpoint commit.", {"summary": _TEXT}),
]
CAPABLE_TOOLS = [
    _schema("read_file", "Read a text file; lines come numbered. Give start_line/end_line (1-based, "
            "inclusive) to read part of a long file.", {"path": _TEXT}, {"start_line": _LINE, "end_line": _LINE}),
    _schema("write_file", "Create a file, or overwrite one whole (append=true adds to its end instead). "
            "For changes to an existing file use edit_file.",
            {"path": _TEXT, "content": _TEXT}, {"append": {"type": "boolean"}}),
    _schema("edit_file", "Replace old_text with new_text in a file. old_text must occur exactly once: copy it "
            "exactly (without line numbers), with enough surrounding lines to be unique.",
            {"path": _TEXT, "old_text": _TEXT, "new_text": _TEXT}),
    _schema("search", "Find files and text. 'pattern' is a regular expression searched in file contents "
            "(grep); 'glob' (e.g. '**/*.py') limits which files, or lists them when no pattern is given.",
            {}, {"pattern": _TEXT, "glob": _TEXT}),
    _schema("shell", "Run a bash command in the workspace; returns the exit code and output. Long output "
            "is cut, and saved whole to a file you can read_file.", {"command": _TEXT}),
    *LOOP_TOOLS,
]
TINY_TOOLS = [  # short: every word here is prompt tokens on each turn, and a 135M model reads none of them well
    _schema("write_file", "Create or overwrite a file in the workspace.", {"path": _TEXT, "content": _TEXT}),
    _schema("read_file", "Read a file in the workspace.", {"path": _TEXT}),
    _schema("shell", "Run a shell command in the workspace; returns exit code and output.", {"command": _TEXT}),
    _schema("step_done", "Say the story is finished; the check then runs.", {"summary": _TEXT}),
    LOOP_TOOLS[1],
]


def tool_schemas(profile: Profile) -> list[dict[str, Any]]:
    return CAPABLE_TOOLS if profile == "capable" else TINY_TOOLS


def tool_names(profile: Profile) -> set[str]:
    return {t["function"]["name"] for t in tool_schemas(profile)}


def parse_arguments(name: str, raw: str) -> dict[str, Any]:
    try:
        args = json.loads(raw or "{}", strict=False)
    except json.JSONDecodeError as exc:
        raise ToolError(f"arguments of {name} are not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise ToolError(f"arguments of {name} must be a JSON object")
    return {k: v for k, v in args.items() if v is not None}  # grammar-made nulls mean "not given"


def text_arg(args: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = args.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ToolError(f"argument {key!r} is required and must be a string")
    return value


def _line_arg(args: dict[str, Any], key: str) -> int | None:
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ToolError(f"argument {key!r} must be a line number (1 or more)")
    return value


def clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n…[{len(text) - limit} characters cut]…\n{text[-half:]}"


class ToolBox:
    """Runs the file, search and shell tools of one step against its sandbox."""

    def __init__(self, sandbox: Sandbox, *, profile: Profile, output_limit: int) -> None:
        self.sandbox = sandbox
        self.profile = profile
        self.output_limit = output_limit
        self.saved = 0
        self.names = tool_names(profile) - {"step_done", "ask_user", "checkpoint"}
        _ignore_output_dir(sandbox.workspace)

    def run(self, name: str, args: dict[str, Any]) -> str:
        if name not in self.names:
            raise ToolError(f"unknown tool {name!r}; use one of {', '.join(sorted(tool_names(self.profile)))}")
        result: str = getattr(self, "tool_" + name)(args)
        return result

    # -- files ------------------------------------------------------------------------------------

    def tool_read_file(self, args: dict[str, Any]) -> str:
        path = text_arg(args, "path")
        text = self.sandbox.read_file(path)
        if self.profile == "tiny":
            return clip(text, self.output_limit)
        lines = text.splitlines()
        start, end = _line_arg(args, "start_line") or 1, _line_arg(args, "end_line") or len(lines)
        if not lines:
            return f"{path} is empty"
        if start > len(lines):
            raise ToolError(f"{path} has {len(lines)} lines; start_line {start} is past the end")
        end = max(start, min(end, len(lines)))
        shown: list[str] = []
        size = 0
        width = len(str(end))
        for number in range(start, end + 1):
            row = f"{number:>{width}}\t{lines[number - 1]}"
            if shown and size + len(row) + 1 > self.output_limit:
                return "\n".join(shown) + (
                    f"\n[lines {start}-{number - 1} of {len(lines)} shown; read on with start_line={number}]")
            shown.append(row)
            size += len(row) + 1
        tail = "" if (start, end) == (1, len(lines)) else f"\n[lines {start}-{end} of {len(lines)}]"
        return "\n".join(shown) + tail

    def tool_write_file(self, args: dict[str, Any]) -> str:
        path, content = text_arg(args, "path"), text_arg(args, "content")
        if path.strip() in tool_names(self.profile):  # a weak model's slip: the tool's name given as the file
            raise ToolError(f"{path!r} is the tool's name, not a file: put the file's path in 'path'")
        if args.get("append") is True and self.profile == "capable":
            try:
                before = self.sandbox.read_file(path)
            except FileNotFoundError:
                before = ""
            self.sandbox.write_file(path, before + content)
            return f"appended {len(content)} characters to {path} (now {len(before) + len(content)})"
        self.sandbox.write_file(path, content)
        return f"wrote {len(content)} characters ({content.count(chr(10)) + 1} lines) to {path}"

    def tool_edit_file(self, args: dict[str, Any]) -> str:
        path, old, new = text_arg(args, "path"), text_arg(args, "old_text"), text_arg(args, "new_text")
        if not old:
            raise ToolError("old_text is empty: give the exact text to replace (use write_file for a new file)")
        text = self.sandbox.read_file(path)
        count = text.count(old)
        if count == 0:
            hint = _closest_line(text, old)
            raise ToolError(f"old_text was not found in {path}. Copy it exactly from read_file's output, "
                            f"without the line numbers, keeping its indentation.{hint}")
        if count > 1:
            lines = _match_lines(text, old)
            raise ToolError(f"old_text occurs {count} times in {path} (at lines {', '.join(map(str, lines))}); "
                            "include more surrounding lines so that it matches once")
        at = text.index(old)
        self.sandbox.write_file(path, text[:at] + new + text[at + len(old):])
        first = text.count("\n", 0, at) + 1
        return f"edited {path}: replaced lines {first}-{first + old.count(chr(10))} " \
               f"with {new.count(chr(10)) + 1} line(s)"

    # -- search and shell -------------------------------------------------------------------------

    def tool_search(self, args: dict[str, Any]) -> str:
        pattern, glob = text_arg(args, "pattern", required=False), text_arg(args, "glob", required=False)
        if not pattern and not glob:
            raise ToolError("give a 'pattern' to search for, a 'glob' to list files, or both")
        files = self._files(glob) if glob else None
        if files is not None and not files:
            return f"no files match {glob!r}"
        if not pattern:
            assert files is not None
            return self._listing(files, "file")
        targets = " ".join(shlex.quote(f) for f in files) if files is not None else "."
        command = f"grep -rnHIE --exclude-dir=.git --exclude-dir=.hearth -e {shlex.quote(pattern)} -- {targets}"
        result = self.sandbox.exec(command)
        if result.exit_code == 1:
            return f"no match for {pattern!r}" + (f" in files matching {glob!r}" if glob else "")
        if result.exit_code != 0:
            raise ToolError(f"search failed: {result.tail(500)}")
        found = [line.removeprefix("./") for line in result.stdout.splitlines() if line]
        return self._listing(found, "match")

    def _files(self, glob: str) -> list[str]:
        listing = self.sandbox.exec(
            "git ls-files -co --exclude-standard 2>/dev/null || find . -type f -not -path './.git/*'")
        names = [n.removeprefix("./") for n in listing.stdout.splitlines() if n]
        pattern = glob.removeprefix("./")
        return sorted(n for n in names if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n, pattern.replace("**/", ""))
                      or ("/" not in pattern and fnmatch.fnmatch(Path(n).name, pattern)))

    def _listing(self, rows: list[str], noun: str) -> str:
        shown = "\n".join(clip(row, 300) for row in rows[:SEARCH_MATCHES])
        more = f"\n[{len(rows) - SEARCH_MATCHES} more {noun}es not shown: narrow the search]" \
            if len(rows) > SEARCH_MATCHES else ""
        return self.keep_whole(f"{len(rows)} {noun}{'es' if noun == 'match' else 's'}:\n{shown}{more}")

    def tool_shell(self, args: dict[str, Any]) -> str:
        result = self.sandbox.exec(text_arg(args, "command"))
        status = "timed out" if result.timed_out else f"exit code {result.exit_code}"
        output = (result.stdout + ("\n" + result.stderr if result.stderr else "")).strip()
        return self.keep_whole(f"{status}\n{output}")

    def keep_whole(self, text: str) -> str:
        """``text`` if it fits the model's share; else its head and tail and where the whole is saved."""
        if len(text) <= self.output_limit or self.profile == "tiny":
            return clip(text, self.output_limit)
        self.saved += 1
        path = f"{OUTPUT_DIR}/{self.saved}.txt"
        self.sandbox.write_file(path, text)
        lines = text.count("\n") + 1
        note = f"[output is {lines} lines, {len(text)} characters; all of it is in {path}: " \
               f"read_file it with start_line/end_line]"
        return f"{clip(text, self.output_limit - len(note) - 60)}\n{note}"  # 60: clip's own marker


def _closest_line(text: str, old: str) -> str:
    """A hint naming the line that best matches old_text's first line, e.g. indentation differs."""
    first = next((line.strip() for line in old.splitlines() if line.strip()), "")
    if not first:
        return ""
    for number, line in enumerate(text.splitlines(), 1):
        if first in line:
            return f" Its first line looks like line {number}: {line!r}."
    return ""


def _match_lines(text: str, old: str) -> list[int]:
    lines: list[int] = []
    at = text.find(old)
    while at != -1 and len(lines) < 10:
        lines.append(text.count("\n", 0, at) + 1)
        at = text.find(old, at + 1)
    return lines


def _ignore_output_dir(workspace: Path) -> None:
    """Keep saved tool output out of checkpoint commits even in a repository without hearth init's
    .gitignore (best effort: a workspace that is not a git clone needs nothing)."""
    # A task clone's git dir is host-private (agent/host_git.py adds .hearth/ to its exclude); what
    # is at <workspace>/.git is sandbox output, so it is read and written without following links.
    exclude = ".git/info/exclude"
    try:
        current = read_workspace_file(workspace, exclude).decode("utf-8", errors="replace")
        if ".hearth/" not in current.split():
            text = current + ("" if current.endswith("\n") or not current else "\n") + ".hearth/\n"
            write_workspace_file(workspace, exclude, text.encode("utf-8"))
    except (OSError, SandboxError):
        pass
