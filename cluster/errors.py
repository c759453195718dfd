"""Hearth's exception tree. Every error the cluster raises on purpose is a ``HearthError``::

    HearthError
    ├── RequestRefused            a request Hearth will not act on; its sentence tells the user why
    │   ├── Invalid               the request itself is wrong                                 → 400
    │   │   └── SubmitError       bad PRD, unknown project or model, nothing can ever run it  → 400
    │   ├── NotAllowed            the caller may not do this (not one of the approvers)      → 403
    │   ├── Conflict              does not fit the task's state (an answer nobody waits for)  → 409
    │   └── UnknownTask           no task with that id                                        → 404
    ├── SchedulerUnavailable      the scheduler actor cannot be reached (restarting, Ray gone) → 503
    ├── TransitionError           the lifecycle table refused a state change (a bug, logged)
    └── DeliveryError             a chat message did not reach the gateway (the outbox retries)

Errors cross Ray as themselves: the sidecar's ``SchedulerClient`` unwraps Ray's wrapper and re-raises
the ``HearthError`` inside, so routes map them to HTTP by type, never by name.
"""

from __future__ import annotations


class HearthError(Exception):
    """The root: anything Hearth raises on purpose."""


class RequestRefused(HearthError):
    """A request Hearth will not act on; ``str()`` is the sentence the user sees."""


class Invalid(RequestRefused, ValueError):
    """The request itself is wrong (a value out of range, a field missing)."""


class SubmitError(Invalid):
    """A submission that cannot be accepted (bad PRD, unknown project, infeasible model…)."""


class NotAllowed(RequestRefused):
    """The caller may not do this (e.g. approve, when the project names its approvers)."""


class Conflict(RequestRefused, ValueError):
    """The request does not fit the task's current state (e.g. an answer to a task that waits for none)."""


class UnknownTask(RequestRefused, KeyError):
    """No task has this id."""

    def __str__(self) -> str:
        return f"no task {self.args[0]!r}"


class SchedulerUnavailable(HearthError):
    """The scheduler actor could not be reached (it is restarting, or Ray is down)."""


class TransitionError(HearthError, ValueError):
    """The lifecycle (``cluster/scheduling/states.py: ALLOWED``) does not allow this change."""
