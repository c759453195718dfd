"""Slack, the way a team uses it: one thread per task, Block Kit cards, mentions, decided cards.

The outbox sender (cluster/openclaw.py) calls ``slack_card`` for a project whose ``[notify]``
channel is ``slack``: the card is OpenClaw's portable ``presentation`` (title, text, context and
buttons), which the ``@openclaw/slack`` plugin renders as Block Kit (header, section, context and an
actions block). The first message of a task (its placement) opens the task's thread; its ``ts`` is
kept in the store (``chat_threads``) and every later message of the task goes into that thread.

The ``hearth`` OpenClaw plugin brings the team's side back: a reply in a task's thread
(``POST /v1/chat/slack/reply``, ``thread_reply`` below), a button click, the reason dialog and
``/hearth`` commands; cluster/api/services/chat.py says what a thread reply does. After a decision the
plugin replaces the card with ``decided_blocks``: the same card without buttons, who decided and when.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent.events import CheckpointReady, ClarificationRequested, Event, TaskPlaced
from cluster.chat_cards import deliverables_text
from cluster.store import TaskRow

SLACK = "slack"
CALLBACK = "hearth"
SLACK_USER_PREFIX = "slack:"


def slack_users(entries: list[str]) -> list[str]:
    """The Slack user ids among ``approvers``/``ask`` entries (``slack:U…``; a bare ``U…`` id too)."""
    users = []
    for entry in entries:
        value = entry.removeprefix(SLACK_USER_PREFIX)
        if (entry.startswith(SLACK_USER_PREFIX) or value[:1] in ("U", "W")) and value.isalnum():
            users.append(value)
    return users


def people_to_ask(task: TaskRow | None) -> list[str]:
    """Whom a question mentions: ``[notify] ask`` if set, else the project's Slack approvers."""
    if task is None:
        return []
    config = task.spec.config
    return slack_users(config.notify.ask or config.approvers)


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _code(text: str, limit: int) -> str:
    text = _clip(text.replace("```", "'''"), limit)
    return f"```{text}```" if text else "_(none)_"


def slack_presentation(event: Event, task: TaskRow | None) -> dict[str, Any] | None:
    """The Block Kit form of a card (as an OpenClaw presentation) below its first line (which carries
    the ``[task T-12 #7]`` tag), or None where the plain text says it all."""
    where = f"{task.project}: {task.name}" if task else event.task_id
    if isinstance(event, TaskPlaced):
        return {"blocks": [{"type": "context", "text": "Everything about this task follows in this thread."}]}
    if isinstance(event, ClarificationRequested):
        mentions = " ".join(f"<@{user}>" for user in people_to_ask(task))
        return {"title": f"Question from {event.task_id}"[:150], "blocks": [
            {"type": "text", "text": (mentions + " " if mentions else "") + f"*Step {event.step_id}* asks:"},
            {"type": "text", "text": _clip(event.question, 2500)},
            {"type": "context", "text": f"Reply in this thread to answer, or `/hearth answer {event.task_id} "
                                        "<text>`."}]}
    if isinstance(event, CheckpointReady) and event.needs_approval:
        files = "\n".join(f"• `{name}`" for name in event.files_changed[:10]) or "_(none)_"
        if len(event.files_changed) > 10:
            files += f"\n• … and {len(event.files_changed) - 10} more"
        value = f"{CALLBACK}:{{}}:{event.task_id}:{event.seq}"
        return {"title": f"Checkpoint: {event.task_id} step {event.step_id}"[:150], "blocks": [
            {"type": "text", "text": f"*{where}* waits for approval of step *{event.step_id}*.\n"
                                     f"*Commit* `{event.commit[:12]}`"},
            {"type": "text", "text": "*Diff*\n" + _code(event.diff_stat, 1200)},
            {"type": "text", "text": "*Check*\n" + _code(event.check_summary, 1200)},
            {"type": "text", "text": "*Files changed*\n" + files},
            *([{"type": "text", "text": "*Deliverables*\n" + _clip(extra, 2800)}]
              if (extra := deliverables_text(event).strip()) else []),
            {"type": "context", "text": "Reject rolls the step back and redoes it; it asks why, or reply "
                                        "`reject <reason>` in this thread."},
            {"type": "buttons", "buttons": [
                {"label": "Approve", "style": "primary",
                 "action": {"type": "callback", "value": value.format("approve")}},
                {"label": "Reject", "style": "danger",
                 "action": {"type": "callback", "value": value.format("reject")}}]}]}
    return None


def decided_blocks(card_text: str, approve: bool, who: str, at: float | None = None) -> list[dict[str, Any]]:
    """Raw Block Kit for ``chat.update`` after a decision: the card's text, no buttons, who and when."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at if at is not None else time.time()))
    verdict = ":white_check_mark: Approved" if approve else ":x: Rejected"
    user = mention(who)
    return [{"type": "section", "text": {"type": "mrkdwn", "text": _clip(card_text, 2900) or "Checkpoint"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"{verdict} by {user} at {when}"}]}]


def thread_reply(text: str, pending_kind: str | None) -> tuple[str, str]:
    """What a reply in a task's thread means: ``("answer", text)``, ``("approve", "")``,
    ``("reject", reason)`` or ``("none", "")`` (chatter while nothing is asked)."""
    words = text.strip().split(maxsplit=1)
    first = words[0].lower().rstrip(".!:,") if words else ""
    if pending_kind == "question":
        return "answer", text.strip()
    if pending_kind == "approval":
        if first in ("approve", "approved", "lgtm", "yes", "ok"):
            return "approve", ""
        if first in ("reject", "rejected", "no"):
            return "reject", words[1].strip() if len(words) > 1 else ""
    return "none", ""


def mention(who: str) -> str:
    return f"<@{who}>" if who[:1] in ("U", "W") and who.isalnum() else who or "someone"


def gateway_slack_config(*, bot_token: str, signing_secret: str, channels: list[str],
                         webhook_path: str = "/slack/events") -> dict[str, Any]:
    """The Slack part of the gateway's openclaw.json, as ``hearth openclaw connect --slack`` writes it.

    HTTP (Events API) mode: Slack POSTs events, clicks, dialogs and ``/hearth`` to ``webhook_path``
    on the gateway, signed with the app's signing secret (forged or stale requests get 401). Native
    commands make ``/hearth`` the Hearth plugin's command; the project channels take messages without
    an @mention, so a plain reply in a task's thread reaches the plugin.
    """
    return {
        "plugins": {"entries": {"slack": {"enabled": True}}},
        "channels": {"slack": {
            "enabled": True, "mode": "http", "botToken": bot_token, "signingSecret": signing_secret,
            "webhookPath": webhook_path, "groupPolicy": "allowlist",
            "channels": {channel: {"requireMention": False} for channel in channels},
            "commands": {"native": True},
        }},
    }


def merge_config(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` laid over ``base``: objects merged key by key, lists joined (``plugins.load.paths``
    keeps the gateway's other plugins), other values from ``extra``."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        elif isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = merged[key] + [item for item in value if item not in merged[key]]
        else:
            merged[key] = value
    return merged


def gateway_settings(*, plugin_dir: Path, sidecar: str, plugin_token_file: Path, slack_channels: list[str],
                     bot_token_file: Path | None, signing_secret_file: Path | None,
                     reveal_secrets: bool) -> dict[str, Any]:
    """What ``hearth openclaw connect`` prints or merges into openclaw.json: the hearth plugin and, with
    ``slack_channels``, the Slack part. Secrets are read from their files only when ``reveal_secrets``
    (the file is written, 0600); a printed block names the files instead."""
    settings: dict[str, Any] = {"plugins": {"load": {"paths": [str(plugin_dir)]}, "entries": {"hearth": {
        "enabled": True, "config": {"sidecarUrl": sidecar, "tokenFile": str(plugin_token_file)}}}}}
    if not slack_channels:
        return settings

    def secret(path: Path | None, placeholder: str) -> str:
        if path is None:
            return placeholder
        return path.read_text().strip() if reveal_secrets else f"<the contents of {path}>"

    return merge_config(settings, gateway_slack_config(
        bot_token=secret(bot_token_file, "xoxb-…"), signing_secret=secret(signing_secret_file, "<signing secret>"),
        channels=slack_channels))
