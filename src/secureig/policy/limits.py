"""Per-key limits: requests and tokens per minute, tokens per day, concurrent requests.

A request is admitted while the key's budgets are not exhausted; its tokens are charged when the
upstream reports them, so token limits overshoot by at most what the requests already in flight
use. Windows are calendar windows (the UTC minute, the UTC day): exact within each window, and
cheap enough for one atomic step per request in memory or in Redis. A refusal consumes nothing.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

MINUTE = 60
DAY = 86400


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's limits; None is "no limit"."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    daily_tokens: int | None = None

    @property
    def any(self) -> bool:
        return not (
            self.rpm is None
            and self.tpm is None
            and self.concurrency is None
            and self.daily_tokens is None
        )


NO_LIMITS = Limits()


@dataclass(slots=True)
class Ticket:
    """An admitted request's hold on its key's budgets, given back by `release`."""

    subject: str
    limits: Limits
    lease: str | None = None  # the concurrency slot, when the key has a cap
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class RateLimited(Exception):
    """A budget is exhausted; `retry_after` is whole seconds until it may be retried."""

    def __init__(self, limit: str, retry_after: int, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(f"rate limit reached: {limit}")
        self.limit = limit
        self.retry_after = max(retry_after, 1)
        self.headers = headers


class LimiterUnavailable(Exception):
    """The shared limiter (Redis) cannot be reached; keys with limits are refused meanwhile."""


class Limiter(Protocol):
    async def acquire(self, subject: str, limits: Limits) -> Ticket:
        """Admit one request or raise RateLimited / LimiterUnavailable."""
        ...

    async def release(self, ticket: Ticket, tokens: int) -> None:
        """The request is over: free its slot and charge the tokens the upstream reported."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise LimiterUnavailable when the shared limiter cannot be reached."""
        ...


@dataclass(frozen=True, slots=True)
class Usage:
    """What a subject has used in the current windows, as the limiter saw it on admission."""

    requests: int  # this minute, this request included
    tokens: int  # this minute
    day_tokens: int  # this UTC day


def window_reset(now: float, size: int) -> int:
    """Whole seconds until the window containing `now` ends."""
    return max(math.ceil(size - now % size), 1)


def rate_headers(limits: Limits, used: Usage, now: float) -> list[tuple[bytes, bytes]]:
    """`x-ratelimit-*` headers in OpenAI's names, which clients already read."""
    headers: list[tuple[bytes, bytes]] = []
    minute_reset = f"{window_reset(now, MINUTE)}s".encode()
    if limits.rpm is not None:
        headers += [
            (b"x-ratelimit-limit-requests", str(limits.rpm).encode()),
            (b"x-ratelimit-remaining-requests", str(max(limits.rpm - used.requests, 0)).encode()),
            (b"x-ratelimit-reset-requests", minute_reset),
        ]
    if limits.tpm is not None:
        headers += [
            (b"x-ratelimit-limit-tokens", str(limits.tpm).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(limits.tpm - used.tokens, 0)).encode()),
            (b"x-ratelimit-reset-tokens", minute_reset),
        ]
    if limits.daily_tokens is not None:
        remaining = max(limits.daily_tokens - used.day_tokens, 0)
        headers += [
            (b"x-ratelimit-limit-tokens-day", str(limits.daily_tokens).encode()),
            (b"x-ratelimit-remaining-tokens-day", str(remaining).encode()),
        ]
    return headers


def check(limits: Limits, used: Usage, in_flight: int, now: float) -> RateLimited | None:
    """The first exhausted budget, in a fixed order; `used.requests` excludes this request."""
    refused: tuple[str, int] | None = None
    if limits.concurrency is not None and in_flight >= limits.concurrency:
        refused = ("concurrent requests", 1)
    elif limits.rpm is not None and used.requests >= limits.rpm:
        refused = ("requests per minute", window_reset(now, MINUTE))
    elif limits.tpm is not None and used.tokens >= limits.tpm:
        refused = ("tokens per minute", window_reset(now, MINUTE))
    elif limits.daily_tokens is not None and used.day_tokens >= limits.daily_tokens:
        refused = ("tokens per day", window_reset(now, DAY))
    if refused is None:
        return None
    name, retry = refused
    return RateLimited(name, retry, rate_headers(limits, used, now))


def new_lease() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True)
class _Counters:
    minute: int = -1
    requests: int = 0
    tokens: int = 0
    day: int = -1
    day_tokens: int = 0
    in_flight: int = 0

    def roll(self, now: float) -> None:
        minute, day = int(now // MINUTE), int(now // DAY)
        if minute != self.minute:
            self.minute, self.requests, self.tokens = minute, 0, 0
        if day != self.day:
            self.day, self.day_tokens = day, 0


class LocalLimiter:
    """One process's limits. Admission is one synchronous step on the event loop: exact."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._subjects: dict[str, _Counters] = {}
        self.clock = clock  # wall time: the windows are the calendar's minutes and UTC days

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def acquire(self, subject: str, limits: Limits) -> Ticket:
        now = self.clock()
        counters = self._subjects.get(subject)
        if counters is None:
            counters = self._subjects[subject] = _Counters()
        counters.roll(now)
        used = Usage(counters.requests, counters.tokens, counters.day_tokens)
        refusal = check(limits, used, counters.in_flight, now)
        if refusal is not None:
            raise refusal
        counters.requests += 1
        counters.in_flight += 1
        admitted = Usage(counters.requests, counters.tokens, counters.day_tokens)
        return Ticket(subject, limits, headers=rate_headers(limits, admitted, now))

    async def release(self, ticket: Ticket, tokens: int) -> None:
        counters = self._subjects.get(ticket.subject)
        if counters is None:
            return
        counters.in_flight = max(counters.in_flight - 1, 0)
        if tokens:
            counters.roll(self.clock())
            counters.tokens += tokens
            counters.day_tokens += tokens
