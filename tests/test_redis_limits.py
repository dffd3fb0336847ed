"""RedisLimiter against a real Redis: the local limiter's semantics, shared by replicas.

Every key carries a per-test prefix and is deleted afterwards, since other runs may share Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import RedisError

from secureig.policy.limits import (
    DAY,
    MINUTE,
    LimiterUnavailable,
    Limits,
    LocalLimiter,
    RateLimited,
    Ticket,
    window_reset,
)
from secureig.policy.redis_limits import ACQUIRE, RedisLimiter, _Script

REQUIRE_SERVICES = os.environ.get("SECUREIG_REQUIRE_SERVICES") == "1"
REDIS_URL = os.environ.get("SECUREIG_TEST_REDIS", "redis://127.0.0.1:6379/0")


class Shared:
    """One test's corner of Redis: its prefix, limiters on it, and a client to look inside."""

    def __init__(self, url: str, prefix: str, raw: redis.Redis) -> None:
        self.url = url
        self.prefix = prefix
        self.raw = raw

    def limiter(self, **kwargs: Any) -> RedisLimiter:
        return RedisLimiter(self.url, self.prefix, **kwargs)

    def keys(self) -> list[str]:
        return sorted(k.decode() for k in self.raw.scan_iter(match=f"{self.prefix}*", count=1000))

    def now(self) -> float:
        sec, usec = self.raw.time()
        return sec + usec / 1_000_000

    def window_key(self, kind: str, subject: str) -> str:
        size = DAY if kind == "tpd" else MINUTE
        return f"{self.prefix}{kind}:{subject}:{int(self.now() // size)}"

    def count(self, kind: str, subject: str) -> int:
        return int(self.raw.get(self.window_key(kind, subject)) or 0)

    def in_flight(self, subject: str) -> int:
        return int(self.raw.zcard(f"{self.prefix}conc:{subject}"))

    def room(self, size: int = MINUTE, margin: float = 10.0) -> None:
        """Wait (at most `margin` s) until at least `margin` s are left in the server's window."""
        left = size - self.now() % size
        if left < margin:
            time.sleep(left + 0.05)


@pytest.fixture
def shared() -> Iterator[Shared]:
    raw = redis.Redis.from_url(REDIS_URL, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        raw.ping()
    except RedisError as exc:
        raw.close()
        reason = f"Redis is not reachable at {REDIS_URL} ({exc})"
        if REQUIRE_SERVICES:
            pytest.fail(f"SECUREIG_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)
    prefix = f"secureig-test-{uuid.uuid4()}:"
    try:
        yield Shared(REDIS_URL, prefix, raw)
    finally:
        stale = list(raw.scan_iter(match=f"{prefix}*", count=1000))
        if stale:
            raw.delete(*stale)
        raw.close()


@pytest.fixture
def limiter(shared: Shared) -> RedisLimiter:
    """A RedisLimiter on the test's prefix, not started: start it inside the test's event loop."""
    return shared.limiter()


@contextlib.asynccontextmanager
async def running(*limiters: RedisLimiter) -> AsyncIterator[None]:
    for each in limiters:
        await each.start()
    try:
        yield
    finally:
        for each in limiters:
            await each.close()


async def kill(limiter: RedisLimiter) -> None:
    """Stop a replica the way a crash does: no more heartbeats, its leases never released."""
    assert limiter._heartbeat is not None and limiter._redis is not None
    limiter._heartbeat.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await limiter._heartbeat
    limiter._heartbeat = None
    limiter._leases.clear()
    await limiter._redis.aclose()
    limiter._redis = None


def header(headers: list[tuple[bytes, bytes]], name: str) -> str:
    values = [v.decode() for k, v in headers if k == name.encode()]
    assert len(values) == 1, (name, headers)
    return values[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_no_limits_never_touch_redis(shared: Shared, limiter: RedisLimiter) -> None:
    subject = "free"

    async def body() -> None:
        # not even started: nothing about an unlimited subject needs Redis
        ticket = await limiter.acquire(subject, Limits())
        assert ticket == Ticket(subject, Limits())
        await limiter.release(ticket, 500)
        async with running(limiter):
            tickets = [await limiter.acquire(subject, Limits()) for _ in range(20)]
            assert all(t.headers == [] and t.lease is None for t in tickets)
            for t in tickets:
                await limiter.release(t, 1000)

    asyncio.run(body())
    # Only the epoch a started limiter registers with: nothing about the subject.
    assert shared.keys() == [f"{shared.prefix}epoch"]


def test_one_round_trip_per_acquire_and_release(shared: Shared, limiter: RedisLimiter) -> None:
    async def body() -> None:
        async with running(limiter):
            assert limiter._redis is not None
            sent: list[str] = []
            call: Any = limiter._redis.call

            async def counting(*args: Any) -> Any:
                sent.append(str(args[0]))
                return await call(*args)

            limiter._redis.call = counting  # type: ignore[method-assign]
            limits = Limits(rpm=10, tpm=1000, concurrency=2, daily_tokens=10_000)
            ticket = await limiter.acquire("s", limits)
            assert sent == ["EVALSHA"]
            await limiter.release(ticket, 12)
            assert sent == ["EVALSHA", "EVALSHA"]
            # a release with no slot and no tokens still retires its admission's marker
            await limiter.release(await limiter.acquire("s", Limits(rpm=10)), 0)
            assert sent == ["EVALSHA"] * 4
            names = shared.keys()
            assert [k for k in names if ":adm:" in k] == []

    asyncio.run(body())


def test_script_cache_miss_falls_back_to_eval(shared: Shared, limiter: RedisLimiter) -> None:
    async def body() -> None:
        async with running(limiter):
            # as if Redis restarted and forgot the script: a sha it has never seen
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(
                    "secureig.policy.redis_limits.ACQUIRE", _Script(ACQUIRE.source, "0" * 40)
                )
                ticket = await limiter.acquire("s", Limits(rpm=5))
            assert header(ticket.headers, "x-ratelimit-remaining-requests") == "4"

    asyncio.run(body())
    assert shared.count("rpm", "s") == 1


def test_rpm_admits_exactly_n_then_refuses(shared: Shared, limiter: RedisLimiter) -> None:
    limits = Limits(rpm=5)
    shared.room()

    async def body() -> None:
        async with running(limiter):
            for i in range(5):
                ticket = await limiter.acquire("s", limits)
                assert header(ticket.headers, "x-ratelimit-limit-requests") == "5"
                assert header(ticket.headers, "x-ratelimit-remaining-requests") == str(4 - i)
                reset = int(header(ticket.headers, "x-ratelimit-reset-requests").rstrip("s"))
                assert 1 <= reset <= 60
                await limiter.release(ticket, 0)
            for _ in range(3):
                with pytest.raises(RateLimited) as refused:
                    await limiter.acquire("s", limits)
                assert refused.value.limit == "requests per minute"
                assert 1 <= refused.value.retry_after <= 60
                assert abs(refused.value.retry_after - window_reset(shared.now(), MINUTE)) <= 1
                assert header(refused.value.headers, "x-ratelimit-remaining-requests") == "0"
                assert header(refused.value.headers, "x-ratelimit-limit-requests") == "5"

    asyncio.run(body())
    assert shared.count("rpm", "s") == 5
    assert 0 < shared.raw.ttl(shared.window_key("rpm", "s")) <= 120


def test_refusal_consumes_nothing(shared: Shared, limiter: RedisLimiter) -> None:
    limits = Limits(rpm=3, concurrency=1)
    shared.room()

    async def body() -> None:
        async with running(limiter):
            held = await limiter.acquire("s", limits)
            for _ in range(4):
                with pytest.raises(RateLimited, match="concurrent requests"):
                    await limiter.acquire("s", limits)
            assert shared.count("rpm", "s") == 1
            assert shared.in_flight("s") == 1
            await limiter.release(held, 0)
            for _ in range(2):
                await limiter.release(await limiter.acquire("s", limits), 0)
            for _ in range(4):
                with pytest.raises(RateLimited, match="requests per minute"):
                    await limiter.acquire("s", limits)
            assert shared.count("rpm", "s") == 3
            assert shared.in_flight("s") == 0

            # a token refusal takes no request and no slot either
            tokens = Limits(tpm=10, concurrency=5)
            await limiter.release(await limiter.acquire("t", tokens), 10)
            for _ in range(3):
                with pytest.raises(RateLimited, match="tokens per minute"):
                    await limiter.acquire("t", tokens)
            assert shared.count("rpm", "t") == 1
            assert shared.count("tpm", "t") == 10
            assert shared.in_flight("t") == 0

    asyncio.run(body())


def test_concurrency_cap_across_two_replicas(shared: Shared) -> None:
    one, two = shared.limiter(), shared.limiter()
    limits = Limits(concurrency=5)

    async def body() -> None:
        async with running(one, two):
            attempts = [(one, two)[i % 2].acquire("s", limits) for i in range(60)]
            results = await asyncio.gather(*attempts, return_exceptions=True)
            tickets = [r for r in results if isinstance(r, Ticket)]
            refusals = [r for r in results if isinstance(r, RateLimited)]
            assert len(tickets) == 5 and len(refusals) == 55, results
            assert {r.limit for r in refusals} == {"concurrent requests"}
            assert {r.retry_after for r in refusals} == {1}
            assert len({t.lease for t in tickets}) == 5
            assert shared.in_flight("s") == 5

            # a slot freed on one replica is taken on the other, and only one
            first = tickets.pop()
            owner = one if first.lease in one._leases.get(f"{shared.prefix}conc:s", set()) else two
            await owner.release(first, 0)
            results = await asyncio.gather(
                *[(two, one)[i % 2].acquire("s", limits) for i in range(10)],
                return_exceptions=True,
            )
            fresh = [r for r in results if isinstance(r, Ticket)]
            assert len(fresh) == 1 and shared.in_flight("s") == 5
            tickets += fresh

            # releasing through either replica frees the slot
            for i, ticket in enumerate(tickets):
                await (one, two)[i % 2].release(ticket, 0)
            assert shared.in_flight("s") == 0

    asyncio.run(body())


def test_dead_replica_leases_expire(shared: Shared) -> None:
    dead, alive = shared.limiter(lease_ttl=1.0), shared.limiter(lease_ttl=1.0)
    limits = Limits(concurrency=3)

    async def body() -> None:
        async with running(alive):
            # a live lease on the survivor keeps the set itself alive: only expiry frees slots
            await alive.acquire("s", limits)
            await dead.start()
            await dead.acquire("s", limits)
            await dead.acquire("s", limits)
            taken = time.monotonic()
            await kill(dead)
            with pytest.raises(RateLimited, match="concurrent requests"):
                await alive.acquire("s", limits)
            while True:
                try:
                    await alive.acquire("s", limits)
                    break
                except RateLimited:
                    assert time.monotonic() - taken < 1.8, "a dead replica's slots never expired"
                    await asyncio.sleep(0.05)
            # not before lease_ttl, soon after it, and both slots came back
            assert 0.9 <= time.monotonic() - taken < 1.8
            await alive.acquire("s", limits)
            with pytest.raises(RateLimited):
                await alive.acquire("s", limits)
            assert shared.in_flight("s") == 3

    asyncio.run(body())


def test_close_gives_slots_back_at_once(shared: Shared) -> None:
    leaving, staying = shared.limiter(), shared.limiter()
    limits = Limits(concurrency=1)

    async def body() -> None:
        async with running(staying):
            await leaving.start()
            await leaving.acquire("s", limits)
            with pytest.raises(RateLimited):
                await staying.acquire("s", limits)
            await leaving.close()
            await staying.acquire("s", limits)

    asyncio.run(body())


def test_heartbeat_keeps_a_long_lease(shared: Shared) -> None:
    holder, other = shared.limiter(lease_ttl=1.0), shared.limiter(lease_ttl=1.0)
    limits = Limits(concurrency=1)

    async def body() -> None:
        async with running(holder, other):
            ticket = await holder.acquire("s", limits)
            deadline = time.monotonic() + 2.5  # 2.5 lease_ttl: alive only through renewals
            while time.monotonic() < deadline:
                with pytest.raises(RateLimited, match="concurrent requests"):
                    await other.acquire("s", limits)
                await asyncio.sleep(0.1)
            expiry = shared.raw.zscore(f"{shared.prefix}conc:s", ticket.lease or "")
            assert expiry is not None and expiry > shared.now() * 1000
            await holder.release(ticket, 0)
            await other.acquire("s", limits)

    asyncio.run(body())


def test_tokens_per_minute(shared: Shared, limiter: RedisLimiter) -> None:
    limits = Limits(tpm=100)
    shared.room()

    async def body() -> None:
        async with running(limiter):
            ticket = await limiter.acquire("s", limits)
            assert header(ticket.headers, "x-ratelimit-limit-tokens") == "100"
            assert header(ticket.headers, "x-ratelimit-remaining-tokens") == "100"
            await limiter.release(ticket, 70)
            assert shared.count("tpm", "s") == 70
            ticket = await limiter.acquire("s", limits)  # under budget: admitted
            assert header(ticket.headers, "x-ratelimit-remaining-tokens") == "30"
            await limiter.release(ticket, 50)  # overshoots by what was in flight
            assert shared.count("tpm", "s") == 120
            with pytest.raises(RateLimited) as refused:
                await limiter.acquire("s", limits)
            assert refused.value.limit == "tokens per minute"
            assert 1 <= refused.value.retry_after <= 60
            assert header(refused.value.headers, "x-ratelimit-remaining-tokens") == "0"

    asyncio.run(body())
    assert shared.count("rpm", "s") == 2
    assert shared.count("tpd", "s") == 120  # the day counts too, as LocalLimiter does
    assert 0 < shared.raw.ttl(shared.window_key("tpm", "s")) <= 120


def test_daily_tokens(shared: Shared, limiter: RedisLimiter) -> None:
    limits = Limits(tpm=10_000, daily_tokens=100)
    shared.room(DAY)

    async def body() -> None:
        async with running(limiter):
            ticket = await limiter.acquire("s", limits)
            assert header(ticket.headers, "x-ratelimit-limit-tokens-day") == "100"
            assert header(ticket.headers, "x-ratelimit-remaining-tokens-day") == "100"
            await limiter.release(ticket, 60)
            ticket = await limiter.acquire("s", limits)
            assert header(ticket.headers, "x-ratelimit-remaining-tokens-day") == "40"
            await limiter.release(ticket, 60)
            with pytest.raises(RateLimited) as refused:
                await limiter.acquire("s", limits)
            assert refused.value.limit == "tokens per day"
            assert abs(refused.value.retry_after - window_reset(shared.now(), DAY)) <= 1
            assert header(refused.value.headers, "x-ratelimit-remaining-tokens-day") == "0"

    asyncio.run(body())
    assert shared.count("tpd", "s") == 120
    assert DAY < shared.raw.ttl(shared.window_key("tpd", "s")) <= 2 * DAY


def test_unavailable_when_nothing_listens(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # bound and released: nobody listens there
    limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0", "secureig-test-unreachable:", timeout=0.5)

    async def body() -> None:
        await limiter.start()  # not fatal: unlimited keys still work
        try:
            started = time.monotonic()
            with pytest.raises(LimiterUnavailable, match=r"^rate limiter unavailable: "):
                await limiter.acquire("s", Limits(rpm=5))
            with pytest.raises(LimiterUnavailable, match=r"^rate limiter unavailable: "):
                await limiter.ping()
            assert time.monotonic() - started < 3.0
            free = await limiter.acquire("s", Limits())
            await limiter.release(free, 10)
            # release never raises: it logs, and the lease expires on its own
            held = Ticket("s", Limits(concurrency=1), lease="abc")
            with caplog.at_level(logging.WARNING, logger="secureig.limits"):
                await limiter.release(held, 10)
            assert any(
                r.name == "secureig.limits" and "release" in r.getMessage() for r in caplog.records
            )
        finally:
            await limiter.close()

    asyncio.run(body())


def test_unavailable_when_redis_does_not_answer() -> None:
    # a socket that accepts connections (the kernel's backlog does) and never says a word
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0", "secureig-test-mute:", timeout=0.3)

        async def body() -> None:
            await limiter.start()
            try:
                started = time.monotonic()
                with pytest.raises(LimiterUnavailable, match=r"^rate limiter unavailable: "):
                    await limiter.acquire("s", Limits(concurrency=1))
                assert time.monotonic() - started < 2.0
                await limiter.release(Ticket("s", Limits(tpm=5)), 7)  # logs, never raises
            finally:
                await limiter.close()

        asyncio.run(body())


# Operations: "a" acquires; (i, n) releases the i-th admitted ticket with n tokens.
SCENARIOS: dict[str, tuple[Limits, list[Any]]] = {
    "requests": (Limits(rpm=3), ["a", "a", "a", "a", (0, 0), "a"]),
    "concurrency": (Limits(concurrency=2), ["a", "a", "a", (0, 5), "a", "a", (1, 0), (2, 0), "a"]),
    "tokens": (Limits(tpm=100), ["a", (0, 60), "a", "a", (1, 60), (2, 1), "a"]),
    "daily": (Limits(tpm=1000, daily_tokens=50), ["a", (0, 30), "a", (1, 30), "a"]),
    "order": (
        Limits(rpm=1, concurrency=1, tpm=10, daily_tokens=5),
        ["a", "a", (0, 20), "a"],
    ),
    "tokens-before-day": (Limits(tpm=10, daily_tokens=5), ["a", (0, 20), "a"]),
    "zero-budget": (Limits(rpm=0, tpm=0), ["a", "a"]),
    "zero-concurrency": (Limits(concurrency=0, rpm=0), ["a"]),
    "all": (
        Limits(rpm=4, tpm=50, concurrency=2, daily_tokens=80),
        ["a", "a", "a", (0, 20), "a", (1, 20), (2, 20), "a", "a"],
    ),
    "none": (Limits(), ["a", "a", (0, 5), "a"]),
}

TIMED = {b"x-ratelimit-reset-requests", b"x-ratelimit-reset-tokens"}


async def play(limiter: Any, subject: str, limits: Limits, ops: list[Any]) -> list[Any]:
    """What the limiter answered to each operation, less what depends on the exact instant."""
    tickets: list[Ticket] = []
    seen: list[Any] = []
    for op in ops:
        if op == "a":
            try:
                ticket = await limiter.acquire(subject, limits)
            except RateLimited as refused:
                stable = [h for h in refused.headers if h[0] not in TIMED]
                seen.append(("refused", refused.limit, stable, refused.retry_after))
            else:
                tickets.append(ticket)
                seen.append(("ok", [h for h in ticket.headers if h[0] not in TIMED]))
        else:
            index, tokens = op
            await limiter.release(tickets[index], tokens)
    return seen


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_answers_as_local_limiter(shared: Shared, limiter: RedisLimiter, name: str) -> None:
    limits, ops = SCENARIOS[name]
    shared.room(margin=5.0)

    async def body() -> tuple[list[Any], list[Any]]:
        async with running(limiter):
            local = await play(LocalLimiter(), name, limits, ops)
            remote = await play(limiter, name, limits, ops)
            return local, remote

    local, remote = asyncio.run(body())

    def split(seen: list[Any]) -> tuple[list[Any], list[int]]:
        # retry-after counts seconds to the window's end: the two clocks may straddle a second
        return [s[:3] for s in seen], [s[3] for s in seen if s[0] == "refused"]

    (local_answers, local_retries), (remote_answers, remote_retries) = split(local), split(remote)
    assert remote_answers == local_answers
    assert len(remote_retries) == len(local_retries)
    assert all(abs(a - b) <= 1 for a, b in zip(local_retries, remote_retries, strict=True))
    assert any(s[0] == "refused" for s in local) == (name not in {"none"})
