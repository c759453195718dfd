"""Token accounting: what a task's model turns cost, per step and in all, from its events.

Every request to the model is a ``ModelTurn`` event (prompt and completion tokens as the server
counted them, or the loop's estimate of the prompt where the server did not say). ``StepCompleted``
carries each accepted step's sum, and ``usage_from_events`` adds them up for ``hearth show`` and
``GET /v1/tasks/{id}`` (steps that never completed count too: their turns cost the same).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel

from agent.events import Event, ModelTurn


class StepUsage(BaseModel):
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class TaskUsage(StepUsage):
    steps: dict[str, StepUsage] = {}
    """Per step id, every attempt of it together."""


def usage_from_events(events: Iterable[Event]) -> TaskUsage:
    total = TaskUsage()
    for event in events:
        if not isinstance(event, ModelTurn):
            continue
        step = total.steps.setdefault(event.step_id, StepUsage())
        for counter in (step, total):
            counter.turns += 1
            counter.prompt_tokens += event.prompt_tokens
            counter.completion_tokens += event.completion_tokens
    return total
