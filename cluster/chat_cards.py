"""What people read in chat: one ``Card`` (text and buttons) per notifiable event.

Pure: from an event (and its task, for step titles and the node) to text; ``cluster/openclaw.py``
sends the cards.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from agent.acceptance import MODEL_WORD
from agent.events import (
    AttemptEnded,
    CheckpointReady,
    ClarificationRequested,
    DecisionMade,
    Event,
    ModelOutage,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskPlaced,
    TaskRequeued,
)
from cluster.scheduling.endings import ENDINGS
from cluster.store import TaskRow

CALLBACK_NAMESPACE = "hearth"
"""Button callback values are ``hearth:<approve|reject|answer|merge|push>:<task id>:<event seq>``."""


class Card(BaseModel):
    """One chat message: text plus optional buttons (label, callback value)."""

    text: str
    buttons: list[tuple[str, str]] = []
    rich: dict[str, Any] | None = None
    """A channel's own presentation (Slack: Block Kit, see cluster/slack.py), used instead of buttons."""

    def presentation(self) -> dict[str, Any] | None:
        if self.rich is not None:
            return self.rich
        if not self.buttons:
            return None
        buttons = [{"label": label, "action": {"type": "callback", "value": value}}
                   for label, value in self.buttons]
        return {"blocks": [{"type": "buttons", "buttons": buttons}]}


def tag(event: Event) -> str:
    """``[task T-12 #7]``: how replies and buttons find their way back to a task and an event."""
    return f"[task {event.task_id} #{event.seq}]"


def _step_title(task: TaskRow | None, step_id: str) -> str:
    if task is None:
        return ""
    for step in task.spec.plan.steps:
        if step.id == step_id:
            return step.title
    return ""


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(event: Event, task: TaskRow | None = None) -> Card:
    """The chat message for one notifiable event (see ``outbox.NOTIFY_KINDS``)."""
    head = tag(event)
    where = f" ({task.project}: {task.name})" if task else ""
    if isinstance(event, ClarificationRequested):
        title = _step_title(task, event.step_id)
        step = f"{event.step_id} {title}".strip()
        return Card(
            text=f"{head} Question{where}, step {step}:\n{event.question}\n\n"
                 f"Reply to this message with your answer, or send /hearth answer {event.task_id} <text>.",
            buttons=[("Answer", f"{CALLBACK_NAMESPACE}:answer:{event.task_id}:{event.seq}")],
        )
    if isinstance(event, CheckpointReady):
        title = _step_title(task, event.step_id)
        files = ", ".join(event.files_changed[:10]) or "(none)"
        if len(event.files_changed) > 10:
            files += f" and {len(event.files_changed) - 10} more"
        check = _clip(event.check_summary, 400) or "(no check output)"
        if not event.checked:  # nothing but the model said the work is done: the reviewer must know
            check = f"none configured: {MODEL_WORD}"
        buttons = [("Approve", f"{CALLBACK_NAMESPACE}:approve:{event.task_id}:{event.seq}"),
                   ("Reject", f"{CALLBACK_NAMESPACE}:reject:{event.task_id}:{event.seq}")]
        if event.final:  # the plugin approves and finishes the branch so (merge / push)
            buttons[1:1] = [("Approve & merge", f"{CALLBACK_NAMESPACE}:merge:{event.task_id}:{event.seq}"),
                            ("Approve & push", f"{CALLBACK_NAMESPACE}:push:{event.task_id}:{event.seq}")]
        return Card(
            text=f"{head} Checkpoint waiting for approval{where}\n"
                 f"Step: {event.step_id} {title}".rstrip() + "\n"
                 f"Commit: {event.commit[:12]}\n"
                 f"Diff: {_clip(event.diff_stat, 300) or '(empty)'}\n"
                 f"Files: {files}\n"
                 f"Check: {check}\n" + deliverables_text(event) + "\n"
                 f"Approve to continue; Reject rolls the step back and redoes it "
                 f"(/hearth reject {event.task_id} <reason> to say why).",
            buttons=buttons,
        )
    if isinstance(event, TaskPlaced):  # sent only where each task has a thread (Slack): it opens it
        return Card(text=f"{head} Placed on node {event.node_id}{where}, attempt {event.attempt_no}.")
    if isinstance(event, TaskCompleted):
        commits = ", ".join(c[:10] for c in event.commits[:5])
        return Card(text=f"{head} Completed{where}. Branch {event.branch}, {len(event.commits)} commit(s)"
                         + (f": {commits}" if commits else "") + ".")
    if isinstance(event, TaskFailed):
        return Card(text=f"{head} Failed{where}: {event.reason.value}. {_clip(event.message, 500)}\n"
                         f"{ENDINGS[event.reason].sentence}")
    if isinstance(event, AttemptEnded):
        return Card(text=f"{head} Attempt {event.attempt_id or ''} ended: {event.reason.value}{where}. "
                         f"{ENDINGS[event.reason].sentence} {_clip(event.message, 300)}".rstrip())
    if isinstance(event, ModelOutage):
        after = ("it is back and the step goes on" if event.recovered
                 else "it did not come back in time; the attempt ends and the task is retried")
        return Card(text=f"{head} Model {event.model} stopped answering during step {event.step_id}{where}: "
                         f"{after}. {_clip(event.message, 300)}")
    if isinstance(event, DecisionMade):
        verdict = "approved" if event.approve else "rejected"
        return Card(text=f"{head} Checkpoint of step {event.step_id} {verdict} by {event.who}{where}: "
                         f"{_clip(event.reason, 300)}")
    if isinstance(event, TaskCancelled):
        return Card(text=f"{head} Cancelled by {event.who}{where}.")
    if isinstance(event, TaskRequeued):
        kept = f" The earlier attempt's commits are kept at {event.kept_ref}." if event.kept_ref else ""
        return Card(text=f"{head} Re-queued{where} ({event.reason.value}), from step {event.from_step + 1}.{kept}")
    return Card(text=f"{head} {event.kind}{where}")


def deliverables_text(event: CheckpointReady) -> str:
    """The card's diff excerpt, build tail and artifacts (empty parts are left out)."""
    parts = []
    if event.diff:
        cut = _clip(event.diff, 1200)
        more = event.diff_truncated or len(event.diff) > 1200
        whole = f"\nWhole diff: hearth diff {event.task_id} {event.step_id}" if more else ""
        parts.append(f"```\n{cut}\n```{whole}")
    if event.build_summary:
        parts.append(f"Build: {_clip(event.build_summary, 300)}")
    for ref in event.artifacts:
        what = f"image {ref.image_tag}" if ref.kind == "image" else f"{ref.name} ({ref.size} bytes)"
        parts.append(f"Artifact: {what}" + (f" sha256 {ref.sha256[:12]}" if ref.stored else ""))
    if event.artifacts:
        parts.append(f"Download: hearth artifacts {event.task_id} --out DIR")
    if event.final:
        parts.append(f"Final step: approving finishes the branch (/hearth approve {event.task_id} keep|merge|push).")
    return "".join(f"{part}\n" for part in parts)
