"""What a command prints, on its way to the caller: the ``on_output`` callback, called from reader
threads one at a time, and a buffer that keeps the tail of a stream.

Shared by the bwrap and docker backends (qemu streams through guest files: ``qemu.guest_agent``).
"""

from __future__ import annotations

import threading

from agent.sandbox.base import OutputCallback

OUTPUT_CAP_CHARS = 1_000_000
"""Characters of stdout and of stderr kept per command; the tail is kept."""


class OutputEmitter:
    """Serialises on_output calls from reader threads; a callback that raises is not called again
    and its error is raised from ``exec`` once the command is over."""

    def __init__(self, callback: OutputCallback | None) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def __call__(self, stream: str, text: str) -> None:
        if self._callback is None:
            return
        with self._lock:
            if self._error is not None:
                return
            try:
                self._callback(stream, text)
            except Exception as exc:
                self._error = exc

    def reraise(self) -> None:
        if self._error is not None:
            raise self._error


class TailBuffer:
    """One stream's text, cut to its last ``cap`` characters with a note of how many were dropped."""

    def __init__(self, cap: int = OUTPUT_CAP_CHARS) -> None:
        self._cap = cap
        self._chunks: list[str] = []
        self._size = 0
        self._dropped = 0

    def add(self, text: str) -> None:
        self._chunks.append(text)
        self._size += len(text)
        if self._size > 2 * self._cap:
            self._trim()

    def _trim(self) -> None:
        joined = "".join(self._chunks)
        self._dropped += max(0, len(joined) - self._cap)
        self._chunks = [joined[-self._cap :]]
        self._size = len(self._chunks[0])

    def text(self) -> str:
        self._trim()
        body = self._chunks[0]
        return f"[… {self._dropped} earlier characters dropped …]\n{body}" if self._dropped else body
