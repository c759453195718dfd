"""The one seam between the sidecar and the scheduler actor: ``SchedulerClient``.

Routes and services see a Protocol of typed async calls. ``RaySchedulerClient`` is the Ray-backed
implementation: it unwraps Ray's error wrapper and re-raises the ``HearthError`` the scheduler raised
(``SubmitError``, ``Conflict``, ``UnknownTask``…), and turns an unreachable actor into
``SchedulerUnavailable``. Nothing above this module knows Ray's exceptions.
"""

from __future__ import annotations

from typing import Any, Protocol

import ray

from cluster.errors import HearthError, SchedulerUnavailable
from cluster.nodes import NodeView
from cluster.store import TaskRow


class SchedulerClient(Protocol):
    async def ping(self) -> str: ...

    async def submit(self, project_path: str, prd_path: str | None, prd_text: str | None,
                     priority: str | int | None, model: str | None) -> TaskRow: ...

    async def answer(self, task_id: str, text: str, who: str) -> TaskRow: ...

    async def approve_or_reject(self, task_id: str, approve: bool, reason: str, who: str,
                                finish: str = "") -> TaskRow: ...

    async def cancel(self, task_id: str) -> TaskRow: ...

    async def restart(self, task_id: str) -> TaskRow: ...

    async def set_priority(self, task_id: str, priority: str | int) -> TaskRow: ...

    async def nodes(self) -> list[NodeView]: ...

    async def policy(self) -> dict[str, Any]: ...


class RaySchedulerClient:
    """``SchedulerClient`` over the scheduler actor's handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.handle, method).remote(*args)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, HearthError):
                raise exc.cause from None
            raise
        except ray.exceptions.RayActorError as exc:
            raise SchedulerUnavailable(f"the scheduler is not reachable ({type(exc).__name__}); retry shortly") from exc

    async def ping(self) -> str:
        return str(await self._call("ping"))

    async def submit(self, project_path: str, prd_path: str | None, prd_text: str | None,
                     priority: str | int | None, model: str | None) -> TaskRow:
        row: TaskRow = await self._call("submit", project_path, prd_path, prd_text, priority, model)
        return row

    async def answer(self, task_id: str, text: str, who: str) -> TaskRow:
        row: TaskRow = await self._call("answer", task_id, text, who)
        return row

    async def approve_or_reject(self, task_id: str, approve: bool, reason: str, who: str,
                                finish: str = "") -> TaskRow:
        row: TaskRow = await self._call("approve_or_reject", task_id, approve, reason, who, finish)
        return row

    async def cancel(self, task_id: str) -> TaskRow:
        row: TaskRow = await self._call("cancel", task_id)
        return row

    async def restart(self, task_id: str) -> TaskRow:
        row: TaskRow = await self._call("restart", task_id)
        return row

    async def set_priority(self, task_id: str, priority: str | int) -> TaskRow:
        row: TaskRow = await self._call("set_priority", task_id, priority)
        return row

    async def nodes(self) -> list[NodeView]:
        views: list[NodeView] = await self._call("nodes")
        return views

    async def policy(self) -> dict[str, Any]:
        """The cluster-wide scheduling policy in force (``[scheduler]`` of the head's head.toml)."""
        policy: dict[str, Any] = await self._call("policy_config")
        return policy
