"""The shared limiter when Redis stalls or restarts: every operation safe to time out, nothing
held or spent by a request the client saw refused. Against a redis-server of the tests' own, on
a free port, which they pause with SIGSTOP and restart; the shared one is never touched.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from secureig.policy.limits import MINUTE, LimiterUnavailable, Limits, RateLimited
from secureig.policy.redis_limits import RedisLimiter
from tests.conftest import Deployment, wait_for_fresh_minute
from tests.servers import OwnRedis
from tests.standin import OllamaStandIn

PREFIX = "faults:"


def _raw(server: OwnRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


def _minute_count(server: OwnRedis, kind: str, subject: str) -> int:
    raw = _raw(server)
    try:
        sec, _ = raw.time()
        return int(raw.get(f"{PREFIX}{kind}:{subject}:{sec // MINUTE}") or 0)
    finally:
        raw.close()


async def _until(predicate: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())  # type: ignore[operator]


def test_admissions_that_timed_out_hold_and_spend_nothing(own_redis: OwnRedis) -> None:
    limits = Limits(concurrency=5, rpm=100)
    limiter = RedisLimiter(own_redis.url, PREFIX, lease_ttl=30.0, timeout=0.3)

    async def body() -> None:
        await limiter.start()
        try:
            own_redis.pause()
            try:
                # Each script is sent, times out, and runs once Redis is back.
                for _ in range(20):
                    with pytest.raises(LimiterUnavailable):
                        await limiter.acquire("k", limits)
            finally:
                own_redis.resume()
            # The undos land within a retry or two; the late scripts count nothing.
            assert await _until(lambda: not limiter._retries, 10)
            assert _minute_count(own_redis, "rpm", "k") == 0
            # A cap of 5 admits 5 at once, not 5 minus the leases the late scripts took.
            tickets = [await limiter.acquire("k", limits) for _ in range(5)]
            with pytest.raises(RateLimited, match="concurrent requests"):
                await limiter.acquire("k", limits)
            for ticket in tickets:
                await limiter.release(ticket, 0)
        finally:
            await limiter.close()

    asyncio.run(body())


def test_a_release_that_timed_out_lands_once(own_redis: OwnRedis) -> None:
    # Tokens are counted per calendar minute: the pause and the retries must not straddle one.
    wait_for_fresh_minute(needed=20)
    limits = Limits(concurrency=1, tpm=10_000)
    limiter = RedisLimiter(own_redis.url, PREFIX, lease_ttl=30.0, timeout=0.3)

    async def body() -> None:
        await limiter.start()
        try:
            ticket = await limiter.acquire("k", limits)
            own_redis.pause()
            try:
                await limiter.release(ticket, 16)  # never raises; retried
            finally:
                own_redis.resume()
            assert await _until(lambda: not limiter._retries, 10)
            assert _minute_count(own_redis, "tpm", "k") == 16
            # Sent again (as a retry after a timeout would be): charged once all the same.
            await limiter.release(ticket, 16)
            assert _minute_count(own_redis, "tpm", "k") == 16
            # And its slot is free at once, not after the lease's 30 s.
            again = await limiter.acquire("k", limits)
            await limiter.release(again, 0)
        finally:
            await limiter.close()

    asyncio.run(body())


def test_live_requests_re_register_after_a_restart_without_data(own_redis: OwnRedis) -> None:
    limits = Limits(concurrency=5)
    limiter = RedisLimiter(own_redis.url, PREFIX, lease_ttl=30.0, timeout=1.0)

    async def body() -> None:
        await limiter.start()
        try:
            held = [await limiter.acquire("k", limits) for _ in range(5)]
            own_redis.restart()  # keeps nothing on disk: every lease is gone
            await asyncio.sleep(0.2)  # this loop was blocked: let it see the old connection close
            # The first admission after the restart puts the five back first, and is refused.
            with pytest.raises(RateLimited, match="concurrent requests"):
                await limiter.acquire("k", limits)
            raw = _raw(own_redis)
            try:
                assert raw.zcard(f"{PREFIX}conc:k") == 5
            finally:
                raw.close()
            # Releasing one of them (its marker was put back too) frees its slot at once.
            await limiter.release(held[0], 0)
            extra = await limiter.acquire("k", limits)
            for ticket in [*held[1:], extra]:
                await limiter.release(ticket, 0)
        finally:
            await limiter.close()

    asyncio.run(body())


def test_through_the_gateway_a_restart_never_lets_the_cap_be_passed(
    tmp_path: Path, standin: OllamaStandIn, own_redis: OwnRedis
) -> None:
    dep = Deployment(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}", standin.url)
    key = dep.cli.create_key("capped", "--concurrency", "2")
    gateway = dep.gateway(redis_url=own_redis.url, redis_prefix=PREFIX)
    standin.chunk_delay = 0.2
    standin.reply = lambda prompt: [f" w{i}" for i in range(40)]  # 8 s of stream
    body = {"model": "llama2", "prompt": "go", "stream": True}
    headers = {"X-API-KEY": key}
    started = threading.Barrier(3)
    statuses: list[int] = []

    def stream() -> None:
        with httpx.stream(
            "POST", gateway.url + "/api/generate", json=body, headers=headers, timeout=30
        ) as answer:
            statuses.append(answer.status_code)
            lines = answer.iter_lines()
            json.loads(next(lines))
            started.wait(10)
            for _ in lines:
                pass

    readers = [threading.Thread(target=stream) for _ in range(2)]
    try:
        for reader in readers:
            reader.start()
        started.wait(10)
        own_redis.restart()
        # The two streams still run: a third is refused, by the cap, not let through.
        third = httpx.post(gateway.url + "/api/generate", json=body, headers=headers, timeout=30)
        assert third.status_code == 429, third.text
        assert "concurrent requests" in third.json()["error"]
    finally:
        for reader in readers:
            reader.join(30)
        dep.close()
    assert statuses == [200, 200]
