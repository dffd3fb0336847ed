"""Usage records: written off the request path in batches, with bounded memory, never silently lost.

Requests hand records to the writer without waiting. The writer inserts them in batches; while
the database is unavailable they wait (up to `max_pending`) and are retried. What cannot be held
is counted as dropped and reported in the log and the metrics. Shutdown writes everything held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Select, bindparam, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from secureig.store.tables import UsageRow

log = logging.getLogger("secureig.usage")

GroupBy = Literal["key", "model", "day"]


@dataclass(frozen=True, slots=True)
class UsageRecord:
    at: datetime
    request_id: str
    key_id: int | None
    key_name: str
    surface: str
    route: str
    model: str | None
    backend: str | None
    status: int
    prompt_tokens: int
    completion_tokens: int
    tokens_estimated: bool
    ttfb_ms: float | None
    duration_ms: float
    bytes_in: int
    bytes_out: int


_FIELDS = tuple(f.name for f in fields(UsageRecord))


@dataclass(frozen=True, slots=True)
class UsageTotal:
    group: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    estimated: int = 0  # requests whose tokens are an estimate (cut short before the counts)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # One statement, compiled once into the driver's own placeholder style and passed plain
        # tuples: SQLAlchemy's per-row parameter processing cost more than the insert itself.
        compiled = (
            insert(UsageRow)
            .values({name: bindparam(name) for name in _FIELDS})
            .compile(dialect=engine.dialect, for_executemany=True)
        )
        if tuple(compiled.positiontup or ()) != _FIELDS:
            raise RuntimeError("usage insert: unexpected parameter order")
        self._insert = str(compiled)
        # SQLite has no timestamp type: store what SQLAlchemy's DateTime stores, so queries
        # through it compare like with like.
        self._sqlite = engine.dialect.name == "sqlite"

    def _row(self, r: UsageRecord) -> tuple[Any, ...]:
        at: Any = r.at.strftime("%Y-%m-%d %H:%M:%S.%f") if self._sqlite else r.at
        return (
            at, r.request_id, r.key_id, r.key_name, r.surface, r.route, r.model, r.backend,
            r.status, r.prompt_tokens, r.completion_tokens, r.tokens_estimated, r.ttfb_ms,
            r.duration_ms, r.bytes_in, r.bytes_out,
        )  # fmt: skip

    async def insert(self, records: list[UsageRecord]) -> None:
        rows = [self._row(r) for r in records]
        async with self._engine.begin() as connection:
            await connection.exec_driver_sql(self._insert, rows)

    async def totals(
        self,
        *,
        by: GroupBy = "key",
        since: datetime | None = None,
        key: str | None = None,
        model: str | None = None,
    ) -> list[UsageTotal]:
        column: Any = {
            "key": UsageRow.key_name,
            "model": func.coalesce(UsageRow.model, "-"),
            "day": func.date(UsageRow.at),
        }[by]
        query: Select[Any] = (
            select(
                column.label("grp"),
                func.count(),
                func.sum((UsageRow.status >= 400).cast(UsageRow.status.type)),
                func.coalesce(func.sum(UsageRow.prompt_tokens), 0),
                func.coalesce(func.sum(UsageRow.completion_tokens), 0),
                func.coalesce(func.sum(UsageRow.tokens_estimated.cast(UsageRow.status.type)), 0),
            )
            .group_by(column)
            .order_by(column)
        )
        if since is not None:
            query = query.where(UsageRow.at >= since)
        if key is not None:
            query = query.where(UsageRow.key_name == key)
        if model is not None:
            query = query.where(UsageRow.model == model)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            UsageTotal(
                str(grp), int(n), int(errors or 0), int(prompt), int(completion), int(estimated)
            )
            for grp, n, errors, prompt, completion, estimated in rows
        ]


class UsageWriter:
    """Holds records in memory and writes them in batches from one background task."""

    def __init__(
        self,
        store: UsageStore,
        *,
        batch_size: int = 500,
        interval: float = 1.0,
        max_pending: int = 100_000,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        self._batch = batch_size
        self._interval = interval
        self._max_pending = max_pending
        self._pending: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None
        self._in_flight = 0  # records taken out for an insert that has not finished yet
        self._closing = False
        self._on_drop = on_drop
        self.dropped = 0
        self.written = 0

    @property
    def pending(self) -> int:
        return len(self._pending) + self._in_flight

    def record(self, record: UsageRecord) -> None:
        """Hand over a record; never blocks, never raises."""
        if self.pending >= self._max_pending:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop(1)
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "usage records dropped: %d so far (%d held while the store is unavailable)",
                    self.dropped,
                    len(self._pending),
                )
            return
        self._pending.append(record)
        if len(self._pending) >= self._batch:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="secureig-usage-writer")

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            if self._closing:
                return
            await self.flush()
            if self._failing_since is not None and not self._closing:
                # Back off while the store is away; records keep waiting in memory.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(self._interval * 2, 5.0))

    async def flush(self) -> bool:
        """Write everything held; False if the store refused (the records stay held)."""
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(self._batch, len(self._pending)))]
            self._in_flight = len(batch)
            try:
                await self._store.insert(batch)
            except Exception as exc:
                self._pending.extendleft(reversed(batch))
                self._in_flight = 0
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning(
                        "usage store unavailable, holding %d records: %s", len(self._pending), exc
                    )
                return False
            self._in_flight = 0
            self.written += len(batch)
            if self._failing_since is not None:
                log.info("usage store back after %.1fs", time.monotonic() - self._failing_since)
                self._failing_since = None
        return True

    async def close(self, grace: float) -> None:
        """Write what is held, retrying for up to `grace` seconds. The background task is asked
        to stop, never cancelled mid-insert, so no batch is lost or written twice."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        deadline = time.monotonic() + grace
        while not await self.flush():
            if time.monotonic() >= deadline:
                lost = len(self._pending)
                self.dropped += lost
                if self._on_drop is not None:
                    self._on_drop(lost)
                log.error("usage store unavailable at shutdown: %d usage records lost", lost)
                self._pending.clear()
                return
            await asyncio.sleep(0.5)
