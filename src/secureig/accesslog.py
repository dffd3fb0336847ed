"""The access log: one line per request, laid out like every other log line, written in batches.

A log record, a write and a flush per request cost more than all of the gateway's decisions, so
lines are gathered and written together at most `interval` seconds later (and at shutdown).
Whether lines are written at all follows the `secureig.access` logger's level.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING, TextIO

from secureig.untrusted import printable

if TYPE_CHECKING:
    from secureig.surfaces._asgi import Exchange

LOGGER = logging.getLogger("secureig.access")


class AccessLog:
    def __init__(
        self, stream: TextIO | None = None, interval: float = 0.05, batch: int = 512
    ) -> None:
        self._stream = stream
        self._interval = interval
        self._batch = batch
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    @property
    def enabled(self) -> bool:
        return LOGGER.isEnabledFor(logging.INFO)

    def request(self, method: str, path: str, ex: Exchange) -> None:
        """One request's line. The path only: a query string could carry anything, and bodies
        (prompts) never appear."""
        duration = (time.perf_counter() - ex.started) * 1000
        upstream = ex.upstream_seconds
        self.write(
            f"rid={ex.request_id} {method} {printable(path)}"
            f" key={ex.key_name or '-'} model={printable(ex.model or '-')}"
            f" status={ex.status or 'aborted'} dur_ms={duration:.1f}"
            f" upstream_ms={f'{upstream * 1000:.1f}' if upstream is not None else '-'}"
            f"{f' backend={ex.backend}' if ex.backend else ''}"
            f"{f' queued_ms={ex.queue_seconds * 1000:.1f}' if ex.queue_seconds else ''}"
            f"{f' outcome={ex.outcome}' if ex.outcome else ''}"
        )

    def write(self, message: str) -> None:
        """Queue one line; the caller has checked `enabled` and left secrets out of it."""
        now = time.time()
        second = int(now)
        if second != self._second:
            # The same layout as the rest of the log: "%(asctime)s INFO secureig.access: ...".
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        millis = int((now - second) * 1000)
        self._lines.append(f"{self._stamp},{millis:03d} INFO secureig.access: {message}\n")
        if len(self._lines) >= self._batch:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        text, self._lines = "".join(self._lines), []
        stream = self._stream or sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log stream must not fail requests
