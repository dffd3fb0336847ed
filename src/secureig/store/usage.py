"""Usage records: written off the request path in batches, with bounded memory, never silently lost.

Requests hand records to the writer without waiting. The writer inserts them in batches, each
insert bounded in time; while the database is unavailable they wait (up to `max_pending`) and are
retried. A record the database refuses outright is set aside alone, so it cannot hold back the
rest. Shutdown writes what is held within a bounded time and spools what it could not to a
local file, which the next start writes. Only what none of this can hold is counted as lost, in
the log and the metrics. An insert is idempotent (a record's request id and time are unique),
so a batch whose insert timed out after all can be written again without counting twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from secureig.store.tables import UsageRow

log = logging.getLogger("secureig.usage")

GroupBy = Literal["key", "model", "backend", "hour", "day", "outcome"]
GROUPS: tuple[GroupBy, ...] = get_args(GroupBy)
# How a request ended. "completed": its answer went out whole, whatever its status.
OUTCOMES = (
    "completed",
    "client-disconnected",
    "upstream-failed-mid-stream",
    "upstream-ended-early",
    "cut-by-shutdown",
    "cancelled",
)


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
    outcome: str = "completed"


_FIELDS = tuple(f.name for f in fields(UsageRecord))


@dataclass(frozen=True, slots=True)
class UsageTotal:
    group: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    estimated: int = 0  # requests whose tokens are an estimate (cut short before the counts)
    incomplete: int = 0  # requests whose answer did not go out whole
    mean_ttfb_ms: float | None = None  # time to the answer's first byte, over those that had one
    mean_duration_ms: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # One statement, compiled once into the driver's own placeholder style and passed plain
        # tuples: SQLAlchemy's per-row parameter processing cost more than the insert itself.
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        compiled = (
            dialect.insert(UsageRow)
            .values({name: bindparam(name) for name in _FIELDS})
            .on_conflict_do_nothing(index_elements=["at", "request_id"])
            .compile(dialect=engine.dialect, for_executemany=True)
        )
        if tuple(compiled.positiontup or ()) != _FIELDS:
            raise RuntimeError("usage insert: unexpected parameter order")
        self._insert = str(compiled)
        # SQLite has no timestamp type: store what SQLAlchemy's DateTime stores, so queries
        # through it compare like with like.
        self._sqlite = engine.dialect.name == "sqlite"
        # The day and hour a record falls in, in UTC whatever the database's time zone:
        # "2026-12-04" and "2026-12-04 13:00".
        if self._sqlite:
            self._day: Any = func.strftime("%Y-%m-%d", UsageRow.at)
            self._hour: Any = func.strftime("%Y-%m-%d %H:00", UsageRow.at)
        else:
            utc = func.timezone("UTC", UsageRow.at)
            self._day = func.to_char(utc, "YYYY-MM-DD")
            self._hour = func.to_char(utc, "YYYY-MM-DD HH24:00")

    def _row(self, r: UsageRecord) -> tuple[Any, ...]:
        at: Any = r.at.strftime("%Y-%m-%d %H:%M:%S.%f") if self._sqlite else r.at
        return (
            at, r.request_id, r.key_id, r.key_name, r.surface, r.route, r.model, r.backend,
            r.status, r.prompt_tokens, r.completion_tokens, r.tokens_estimated, r.ttfb_ms,
            r.duration_ms, r.bytes_in, r.bytes_out, r.outcome,
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
            "hour": self._hour,
            "day": self._day,
            "outcome": func.coalesce(UsageRow.outcome, "-"),
            "backend": func.coalesce(UsageRow.backend, "-"),
        }[by]
        query: Select[Any] = (
            select(
                column.label("grp"),
                func.count(),
                func.sum((UsageRow.status >= 400).cast(UsageRow.status.type)),
                func.coalesce(func.sum(UsageRow.prompt_tokens), 0),
                func.coalesce(func.sum(UsageRow.completion_tokens), 0),
                func.coalesce(func.sum(UsageRow.tokens_estimated.cast(UsageRow.status.type)), 0),
                func.coalesce(
                    func.sum((UsageRow.outcome != "completed").cast(UsageRow.status.type)), 0
                ),
                func.avg(UsageRow.ttfb_ms),
                func.avg(UsageRow.duration_ms),
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
                str(grp), int(n), int(errors or 0), int(prompt), int(completion), int(estimated),
                int(incomplete), None if ttfb is None else round(float(ttfb), 2),
                round(float(duration or 0), 2),
            )
            for grp, n, errors, prompt, completion, estimated, incomplete, ttfb, duration in rows
        ]  # fmt: skip


def _transient(exc: BaseException) -> bool:
    """The store is away (or slow), as opposed to refusing these rows for what they hold."""
    if isinstance(exc, IntegrityError | DataError | OverflowError | ValueError | TypeError):
        return False
    # PostgreSQL's classes 22 (data exception) and 23 (integrity violation), as asyncpg names
    # them behind SQLAlchemy's generic wrapper.
    state = str(getattr(getattr(exc, "orig", None), "sqlstate", "") or "")
    return not state.startswith(("22", "23"))


class UsageWriter:
    """Holds records in memory and writes them in batches from one background task."""

    def __init__(
        self,
        store: UsageStore,
        *,
        batch_size: int = 500,
        interval: float = 1.0,
        max_pending: int = 100_000,
        write_timeout: float = 10.0,
        spool: Path | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        self._batch = batch_size
        self._interval = interval
        self._max_pending = max_pending
        self._write_timeout = write_timeout
        self._spool = spool
        self._pending: deque[UsageRecord] = deque()
        self._in_flight: list[UsageRecord] = []  # taken out for an insert not yet finished
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None
        self._closing = False
        self._on_drop = on_drop
        self.dropped = 0
        self.written = 0
        self.spooled = 0

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._in_flight)

    def record(self, record: UsageRecord) -> None:
        """Hand over a record; never blocks, never raises."""
        if self.pending >= self._max_pending:
            self._drop(1)
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

    def _drop(self, n: int) -> None:
        self.dropped += n
        if self._on_drop is not None:
            self._on_drop(n)

    async def start(self) -> None:
        """Write what an earlier process spooled, then start writing in the background."""
        await self._replay_spool()
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

    async def flush(self, within: float | None = None) -> bool:
        """Write everything held; False if the store failed or was too slow (the records stay
        held). Each insert takes at most the write timeout, and all of them `within` seconds."""
        deadline = None if within is None else time.monotonic() + within
        while self._pending:
            limit = self._write_timeout
            if deadline is not None:
                limit = min(limit, deadline - time.monotonic())
                if limit <= 0:
                    return False
            batch = [self._pending.popleft() for _ in range(min(self._batch, len(self._pending)))]
            self._in_flight = batch
            try:
                await self._insert(batch, limit)
            except BaseException as exc:
                # Cancelled or failed: the batch goes back first in line, nothing is lost.
                self._pending.extendleft(reversed(batch))
                self._in_flight = []
                if not isinstance(exc, Exception):
                    raise
                if not _transient(exc) and await self._set_aside(limit):
                    continue
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning(
                        "usage store unavailable, holding %d records: %s",
                        len(self._pending),
                        _reason(exc),
                    )
                return False
            self._in_flight = []
            self.written += len(batch)
            if self._failing_since is not None:
                log.info("usage store back after %.1fs", time.monotonic() - self._failing_since)
                self._failing_since = None
        return True

    async def _insert(self, batch: list[UsageRecord], limit: float) -> None:
        # A task of its own, waited for at most `limit`: a database that stopped answering must
        # not hold the writer (or shutdown) for as long as it stays stopped.
        task = asyncio.ensure_future(self._store.insert(batch))
        try:
            done, _ = await asyncio.wait({task}, timeout=limit)
        except asyncio.CancelledError:
            task.cancel()
            task.add_done_callback(_retrieve)
            raise
        if not done:
            task.cancel()
            task.add_done_callback(_retrieve)
            raise TimeoutError(f"an insert took more than {limit:.3g}s")
        task.result()

    async def _set_aside(self, limit: float) -> bool:
        """The store refused the first batch for what it holds: write its records one by one and
        drop (counting them) the ones refused. False if the store turns out to be away."""
        batch = [self._pending.popleft() for _ in range(min(self._batch, len(self._pending)))]
        for i, record in enumerate(batch):
            try:
                await self._insert([record], limit)
            except Exception as exc:
                if _transient(exc):
                    self._pending.extendleft(reversed(batch[i:]))
                    return False
                self._drop(1)
                log.error("usage store refused a record (%s): dropped", _reason(exc))
                continue
            self.written += 1
        return True

    async def close(self, within: float) -> None:
        """Write what is held within `within` seconds; spool what could not be written to the
        spool file, and count as lost only what even that could not keep."""
        self._closing = True
        self._wake.set()
        deadline = time.monotonic() + within
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=within)
            if not done:
                # Stuck in an insert: cancelling it puts its batch back in line.
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({self._task}, timeout=1.0)
        while self._pending and time.monotonic() < deadline:
            if await self.flush(within=deadline - time.monotonic()):
                break
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        if self._pending:
            self._spool_rest()

    def _spool_rest(self) -> None:
        held = list(self._pending)
        self._pending.clear()
        if self._spool is not None:
            try:
                _append_spool(self._spool, held)
            except OSError as exc:
                log.error("could not spool usage records to %s: %s", self._spool, exc)
            else:
                self.spooled += len(held)
                log.warning(
                    "usage store unavailable at shutdown: %d usage records spooled to %s,"
                    " written at the next start",
                    len(held),
                    self._spool,
                )
                return
        self._drop(len(held))
        log.error("usage store unavailable at shutdown: %d usage records lost", len(held))

    async def _replay_spool(self) -> None:
        path = self._spool
        if path is None or not path.exists():
            return
        try:
            records = _read_spool(path)
        except (OSError, ValueError) as exc:
            log.error("usage spool %s is unreadable, left in place: %s", path, exc)
            return
        if records:
            self._pending.extend(records)
            if not await self.flush(within=self._write_timeout * 2):
                # Still held in memory, and still in the file: a crash now loses nothing.
                log.warning(
                    "usage spool %s: store unavailable, its %d records wait in memory",
                    path,
                    len(records),
                )
                return
            log.info("usage spool %s: wrote %d records held from before", path, len(records))
        path.unlink(missing_ok=True)


def _retrieve(task: asyncio.Future[None]) -> None:
    # A timed-out insert that ends later: its outcome is of no interest any more.
    if not task.cancelled():
        task.exception()


def _reason(exc: BaseException) -> str:
    # Driver messages can quote the rows they refused; the first line says enough.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _append_spool(path: Path, records: list[UsageRecord]) -> None:
    lines = []
    for record in records:
        data = asdict(record)
        data["at"] = record.at.isoformat()
        lines.append(json.dumps(data, separators=(",", ":")))
    # One write of whole lines, private to the owner like the store.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, ("\n".join(lines) + "\n").encode())
    finally:
        os.close(fd)


def _read_spool(path: Path) -> list[UsageRecord]:
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        data = json.loads(line)
        data["at"] = datetime.fromisoformat(data["at"])
        records.append(UsageRecord(**data))
    return records
