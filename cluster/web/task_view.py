"""What a task's page shows: its plan with each step's state, checkpoints with highlighted diffs and
check output, the event log, transcripts, artifacts and tokens (the last three where they exist yet).

Diffs come from the head's mirror of the project (cluster/repos.py; ``git diff`` between a step's checkpoint and
the one before it), never from a worker; ``--no-ext-diff --no-textconv`` so nothing a step wrote into
``.gitattributes`` makes the host run a program while rendering.
"""

from __future__ import annotations

import functools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer

from agent.accounting import usage_from_events
from agent.events import Event
from cluster.artifact_store import task_artifacts
from cluster.blobs import BlobStore
from cluster.store import Store, TaskRow
from cluster.web.board import Waiting, age, pending, priority_label

DIFF_LIMIT = 200_000
"""Characters of one checkpoint's diff rendered; a larger diff is cut with a note."""
FORMATTER = HtmlFormatter(nowrap=False, cssclass="diff")


class StepView(BaseModel):
    id: str
    title: str
    state: str
    """pending, running, waiting, awaiting approval, approved, rejected, done."""
    detail: str = ""


class CheckpointView(BaseModel):
    seq: int
    step_id: str
    commit: str
    diff_stat: str
    check_summary: str
    check_output: str
    check_passed: bool | None
    needs_approval: bool
    decision: str = ""
    """'approved by X', 'rejected by X: reason', or '' while undecided."""
    diff_html: str
    at: str


class EventView(BaseModel):
    seq: int
    kind: str
    at: str
    summary: str


class TranscriptView(BaseModel):
    name: str
    size: int


class TaskPage(BaseModel):
    task: dict[str, Any]
    priority_label: str
    steps: list[StepView]
    checkpoints: list[CheckpointView]
    events: list[EventView]
    last_seq: int
    waiting: Waiting | None
    transcripts: list[TranscriptView]
    transcripts_note: str
    tokens: dict[str, int] | None
    attempts: list[dict[str, Any]]
    artifacts: list[dict[str, Any]] = []
    """Every artifact of the task (``cluster/artifact_store.task_artifacts``), latest checkpoint of each step."""


def describe(event: Event) -> str:
    """One line for the event log."""
    body = event.model_dump(exclude={"task_id", "attempt_id", "at", "seq", "kind"})
    by_kind = {
        "task_submitted": lambda: f"{body['name']}: {len(body['steps'])} steps, priority {body['priority']}",
        "task_placed": lambda: f"attempt {body['attempt_no']} on node {body['node_id'][:12]}",
        "step_started": lambda: f"step {body['index'] + 1}/{body['total']} {body['step_id']}: {body['title']}",
        "agent_action": lambda: f"{body['step_id']} turn {body['turn']}: {body['tool']} {body['summary']}",
        "model_turn": lambda: f"{body['step_id']} turn {body['turn']}: {body['prompt_tokens']} + "
                              f"{body['completion_tokens']} tokens"
                              + (" (reply cut at max_tokens)" if body["finish_reason"] == "length" else ""),
        "check_ran": lambda: f"{body['step_id']} check {'passed' if body['passed'] else 'failed'}",
        "checkpoint_ready": lambda: f"{body['step_id']} checkpoint {body['commit'][:10]}"
                                    + (" (needs approval)" if body["needs_approval"] else ""),
        "clarification_requested": lambda: f"{body['step_id']} asks: {body['question']}",
        "answer_received": lambda: f"{body['who']} answered: {body['answer']}",
        "decision_made": lambda: f"{body['who']} {'approved' if body['approve'] else 'rejected'} {body['step_id']}"
                                 + (f": {body['reason']}" if body["reason"] else ""),
        "step_completed": lambda: f"{body['step_id']} done in {body['turns']} turns, {body['duration_s']:.1f} s",
        "attempt_ended": lambda: "parked until someone answers (its model slot is free)"
        if body["reason"] == "waiting_input" else
        f"attempt ended: {body['reason']}" + (f": {body['message']}" if body["message"] else ""),
        "task_requeued": lambda: f"re-queued ({body['reason']}) from step {body['from_step'] + 1}",
        "task_completed": lambda: f"completed on {body['branch']} ({len(body['commits'])} commits)",
        "task_failed": lambda: f"failed ({body['reason']}): {body['message']}",
        "task_cancelled": lambda: f"cancelled by {body['who']}",
        "priority_changed": lambda: f"priority now {body['priority']}",
        "model_outage": lambda: f"model {body['model']} {'back' if body['recovered'] else 'lost'}: {body['message']}",
    }
    maker = by_kind.get(event.kind)
    try:
        return maker() if maker else json.dumps(body)[:300]
    except (KeyError, TypeError):
        return json.dumps(body)[:300]


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def event_view(event: Event) -> EventView:
    return EventView(seq=event.seq or 0, kind=event.kind, at=clock(event.at), summary=describe(event))


@functools.lru_cache(maxsize=256)
def diff_html(project_path: str, old: str, new: str) -> str:
    """The highlighted diff ``old..new`` in the project's repository (cached: commits never change)."""
    try:
        result = subprocess.run(
            ["git", "-C", project_path, "diff", "--no-ext-diff", "--no-textconv", "--no-color", "--stat",
             "--patch", old, new], capture_output=True, text=True, timeout=20, errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f'<p class="muted">diff unavailable: {type(exc).__name__}</p>'
    if result.returncode != 0:
        return '<p class="muted">This commit is not in the project\'s repository on the head (yet).</p>'
    text = result.stdout
    cut = len(text) > DIFF_LIMIT
    text = text[:DIFF_LIMIT] + ("\n… diff cut here: see `git diff` on the task branch\n" if cut else "")
    return highlight(text, DiffLexer(), FORMATTER)


def _steps(task: TaskRow, events: list[Event]) -> list[StepView]:
    plan = task.spec.plan.steps
    states: dict[str, tuple[str, str]] = {}
    for event in events:
        step = getattr(event, "step_id", None)
        if event.kind == "task_requeued" and getattr(event, "from_step", 1) == 0:
            states.clear()
        elif step is None:
            continue
        elif event.kind == "step_started":
            states[step] = ("running", "")
        elif event.kind == "clarification_requested":
            states[step] = ("waiting", getattr(event, "question", ""))
        elif event.kind == "answer_received":
            states[step] = ("running", "")
        elif event.kind == "checkpoint_ready" and getattr(event, "needs_approval", False):
            states[step] = ("awaiting approval", "")
        elif event.kind == "decision_made":
            approve = getattr(event, "approve", False)
            states[step] = ("approved", "") if approve else ("rejected", getattr(event, "reason", ""))
        elif event.kind == "step_completed":
            states[step] = ("done", "")
    finished = task.state.value in {"failed", "cancelled"}
    views = []
    for step in plan:
        state, detail = states.get(step.id, ("pending", ""))
        if finished and state in {"running", "waiting", "awaiting approval"}:
            state = "stopped"
        views.append(StepView(id=step.id, title=step.title, state=state, detail=detail))
    return views


def _checkpoints(db: Store, task: TaskRow, events: list[Event]) -> list[CheckpointView]:
    # The head's mirror holds every checkpoint, whether the project is a path or a URL (cluster/repos.py).
    mirror = db.path.parent / "repos" / f"{task.spec.config.name}.git"
    project = str(mirror) if mirror.is_dir() else task.spec.project_path
    base = task.spec.base_commit
    previous = base
    views: list[CheckpointView] = []
    last_check: dict[str, tuple[bool, str]] = {}
    for event in events:
        if event.kind == "task_requeued" and getattr(event, "from_step", 1) == 0:
            previous = base
        elif event.kind == "check_ran":
            last_check[getattr(event, "step_id", "")] = (getattr(event, "passed", False),
                                                         getattr(event, "output_tail", ""))
        elif event.kind == "checkpoint_ready":
            commit = getattr(event, "commit", "")
            step = getattr(event, "step_id", "")
            passed, output = last_check.get(step, (None, ""))
            views.append(CheckpointView(
                seq=event.seq or 0, step_id=step, commit=commit, diff_stat=getattr(event, "diff_stat", ""),
                check_summary=getattr(event, "check_summary", ""), check_output=output, check_passed=passed,
                needs_approval=getattr(event, "needs_approval", False), at=clock(event.at),
                diff_html=diff_html(project, previous, commit) if project and previous and commit else ""))
            previous = commit
        elif event.kind == "decision_made" and views:
            who, reason = getattr(event, "who", ""), getattr(event, "reason", "")
            verdict = "approved" if getattr(event, "approve", False) else "rejected"
            views[-1].decision = f"{verdict} by {who}" + (f": {reason}" if reason else "")
            if verdict == "rejected":  # the step is redone from the checkpoint before this one
                previous = views[-2].commit if len(views) > 1 else base
    return views


def transcripts_dir(db: Store, task: TaskRow) -> Path:
    """Where step transcripts are kept: on the head, beside its store (cluster/blobs.py), whichever
    box ran the attempt."""
    return BlobStore(db.path.parent / "blobs").path(task.id, "transcripts", "x").parent


def transcripts(db: Store, task: TaskRow) -> list[TranscriptView]:
    folder = transcripts_dir(db, task)
    try:
        files = sorted(p for p in folder.glob("*.json") if p.is_file())
    except OSError:
        return []
    return [TranscriptView(name=p.name, size=p.stat().st_size) for p in files]


def tokens(events: list[Event]) -> dict[str, int] | None:
    """Prompt and completion tokens of every model turn (``model_turn`` events; step sums are not
    added again)."""
    usage = usage_from_events(events)
    return {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens} if usage.turns else None


def task_page(db: Store, task: TaskRow) -> TaskPage:
    events = db.events(task.id, 0, limit=100_000)
    attempts = [a.model_dump(mode="json") for a in db.attempts(task.id)]
    shown = events[-400:]
    return TaskPage(
        task=task.model_dump(mode="json", exclude={"spec"}) | {"age": age(time.time() - task.created_at)},
        priority_label=priority_label(task.priority), steps=_steps(task, events),
        checkpoints=_checkpoints(db, task, events), events=[event_view(e) for e in shown],
        last_seq=events[-1].seq or 0 if events else 0, waiting=pending(db, task), transcripts=transcripts(db, task),
        transcripts_note=str(transcripts_dir(db, task)), tokens=tokens(events), attempts=attempts,
        artifacts=task_artifacts(db, task.id))


def transcript_messages(db: Store, task: TaskRow, name: str) -> list[dict[str, Any]]:
    """A transcript's messages; ``name`` must be one of the task's transcript files (no paths)."""
    if name not in {t.name for t in transcripts(db, task)}:
        raise FileNotFoundError(name)
    return list(json.loads((transcripts_dir(db, task) / name).read_text(encoding="utf-8")))


def pygments_css() -> str:
    return str(FORMATTER.get_style_defs(".diff"))
