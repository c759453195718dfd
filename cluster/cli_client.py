"""The CLI's client of the sidecar: JSON requests, and a task's event stream that survives a dropped
connection (it reconnects with ``Last-Event-ID``, so no event is lost or shown twice); and how a
``hearth`` command ends on an error (``fail``, ``Client``), shared by the cli_* modules.

A JSON request goes through the standard library's ``urllib``: one request per process, where
httpx's import and transport set-up (httpcore, anyio) cost ~0.3 s of every command measured on a
2-core box. Streams (``hearth logs -f``, downloads) still use httpx (and httpx-sse), imported there.
"""

from __future__ import annotations

import json as jsonlib
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console

from cluster import local
from cluster.errors import HearthError

if TYPE_CHECKING:
    import httpx

    from agent.events import Event

RECONNECT_FOR_S = 60.0
"""How long ``stream_events`` keeps trying to reconnect (e.g. while the sidecar restarts)."""
RECONNECT_PAUSE_S = 0.5


def text_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned with spaces. Rich's ``Table`` took 4 s to lay out 1,000 tasks (it measures and
    wraps every cell); this takes milliseconds, and a message's ``[brackets]`` print as they are."""
    cells = [[str(c).replace("\n", " ") for c in row] for row in rows]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in [list(columns), *cells])


class SidecarError(HearthError):
    """The sidecar refused a request or could not be reached; ``exit_code`` is the CLI's (2 or 3)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _detail(content_type: str, body: str) -> str:
    if content_type.startswith("application/json"):
        try:
            return str(jsonlib.loads(body).get("detail", body))
        except (ValueError, AttributeError):
            return body
    return body


def refusal(status: int, detail: str) -> SidecarError:
    """The error for a 4xx/5xx reply: exit code 2 for what the user can fix, 3 for the cluster."""
    return SidecarError(detail, 2 if status in (400, 404, 409, 410, 422) else 3)


def refused(reply: httpx.Response) -> SidecarError:
    """``refusal`` for an httpx reply (streams and downloads)."""
    return refusal(reply.status_code, _detail(reply.headers.get("content-type", ""), reply.text))


class SidecarClient:
    def __init__(self, base: str, token: str, *, reconnect_for_s: float = RECONNECT_FOR_S) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}
        self.reconnect_for_s = reconnect_for_s

    def request(self, method: str, path: str, *, text: bool = False, json: Any = None,
                params: dict[str, str] | None = None) -> Any:
        """The reply's JSON (or, with ``text``, its body as text); ``json`` is the request's body."""
        url = self.base + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = None if json is None else jsonlib.dumps(json).encode()
        headers = {**self.headers, **({"Content-Type": "application/json"} if data is not None else {})}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method),
                                        timeout=120) as reply:
                status, content_type, body = reply.status, reply.headers.get("content-type", ""), reply.read()
        except urllib.error.HTTPError as exc:  # a reply, with a status of 400 or more
            status, content_type, body = exc.code, exc.headers.get("content-type", ""), exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SidecarError(f"cannot reach the sidecar at {self.base}: {reason}", 3) from None
        decoded = body.decode("utf-8", errors="replace")
        if status >= 400:
            raise refusal(status, _detail(content_type, decoded))
        return decoded if text else jsonlib.loads(decoded)

    def stream_events(self, task_id: str, follow: bool = True) -> Iterator[Event]:
        """The task's events in order; following, until it ends. A dropped connection is resumed after
        the last event received (the sidecar's ``Last-Event-ID``), for up to ``reconnect_for_s``."""
        import httpx
        from httpx_sse import SSEError, connect_sse  # imported here: `hearth tasks` need not load them

        from agent.events import EventAdapter

        last_id: str | None = None
        give_up = time.monotonic() + self.reconnect_for_s
        while True:
            headers = {**self.headers, **({"Last-Event-ID": last_id} if last_id else {})}
            try:
                with httpx.Client(timeout=httpx.Timeout(30, read=None)) as http, connect_sse(
                        http, "GET", f"{self.base}/v1/tasks/{task_id}/events", headers=headers,
                        params={"follow": str(follow).lower()}) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        raise SidecarError(_detail(source.response.headers.get("content-type", ""),
                                                   source.response.text), 2)
                    for sse in source.iter_sse():
                        if sse.data:
                            event = EventAdapter.validate_json(sse.data)
                            last_id = sse.id or last_id
                            give_up = time.monotonic() + self.reconnect_for_s
                            yield event
                return  # the sidecar ended the stream: the task ended (or we were not following)
            except (httpx.TransportError, SSEError) as exc:
                if time.monotonic() > give_up:
                    raise SidecarError(f"lost the event stream from {self.base}: {exc}", 3) from None
                time.sleep(RECONNECT_PAUSE_S)


console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command: the message on stderr, exit ``code`` (2 bad input, 3 the cluster)."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class Client(SidecarClient):
    """The sidecar, reached with the token ``hearth up`` wrote; its errors end the command."""

    def __init__(self) -> None:
        info = local.read_up()
        if info is None:
            fail("Hearth is not running here; start it with `hearth up`", 3)
        super().__init__(info.api_url, local.ensure_token(local.state_dir()))

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return super().request(method, path, **kwargs)
        except SidecarError as exc:
            fail(str(exc), exc.exit_code)

    def stream_events(self, task_id: str, follow: bool = True) -> Iterator[Event]:
        try:
            yield from super().stream_events(task_id, follow)
        except SidecarError as exc:
            fail(str(exc), exc.exit_code)
