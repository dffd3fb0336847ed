"""The limiter's Redis client on its own, against the real Redis: replies of every type, many
callers on one pipelined connection, reconnecting, timeouts and errors."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import redis

from secureig.policy.resp import RedisClient, RedisReplyError, RedisUnavailable
from tests.conftest import REQUIRE_SERVICES

REDIS_URL = os.environ.get("SECUREIG_TEST_REDIS", "redis://127.0.0.1:6379/0")
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


@pytest.fixture(autouse=True)
def needs_redis() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        reason = f"Redis is not reachable at {REDIS_URL} ({exc})"
        if REQUIRE_SERVICES:
            pytest.fail(f"SECUREIG_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture
def prefix() -> Any:
    name = f"secureig-test-resp-{uuid.uuid4().hex[:8]}:"
    yield name
    base = REDIS_URL.rsplit("/", 1)[0]
    for db in (0, 3):
        raw = redis.Redis.from_url(f"{base}/{db}")
        keys = raw.keys(name + "*")
        if keys:
            raw.delete(*keys)


def test_replies_of_every_type(prefix: str) -> None:
    async def body() -> None:
        client = RedisClient(REDIS_URL)
        assert await client.call("PING") == "PONG"
        assert await client.call("SET", prefix + "k", b"a\r\nb\x00c") == "OK"
        assert await client.call("GET", prefix + "k") == b"a\r\nb\x00c"
        assert await client.call("GET", prefix + "missing") is None
        assert await client.call("INCRBY", prefix + "n", 41) == 41
        script = "return {1, 'two', {3, false}, redis.error_reply('inner')}"
        reply = await client.call("EVAL", script, 0)
        assert reply[:3] == [1, b"two", [3, None]]
        assert isinstance(reply[3], RedisReplyError) and str(reply[3]) == "ERR inner"
        with pytest.raises(RedisReplyError, match="NOSCRIPT"):
            await client.call("EVALSHA", "0" * 40, 0)
        big = os.urandom(1 << 20)  # arrives in many reads
        await client.call("SET", prefix + "big", big)
        assert await client.call("GET", prefix + "big") == big
        await client.aclose()

    run(body())


def test_many_callers_share_one_connection_in_order(prefix: str) -> None:
    async def body() -> list[Any]:
        client = RedisClient(REDIS_URL)
        replies = await asyncio.gather(*(client.call("ECHO", f"m{i}") for i in range(500)))
        clients = await client.call("CLIENT", "LIST")
        mine = await client.call("CLIENT", "ID")
        await client.aclose()
        assert clients.count(f"id={mine} ".encode()) == 1
        return replies

    assert run(body()) == [f"m{i}".encode() for i in range(500)]


def test_selects_the_database_the_url_names(prefix: str) -> None:
    async def body() -> None:
        client = RedisClient(REDIS_URL.rsplit("/", 1)[0] + "/3")
        await client.call("SET", prefix + "db", "three")
        await client.aclose()

    run(body())
    raw = redis.Redis.from_url(REDIS_URL.rsplit("/", 1)[0] + "/3")
    assert raw.get(prefix + "db") == b"three"
    assert redis.Redis.from_url(REDIS_URL).get(prefix + "db") is None


def test_reconnects_after_redis_closes_the_connection(prefix: str) -> None:
    async def body() -> None:
        client = RedisClient(REDIS_URL)
        first = await client.call("CLIENT", "ID")
        assert redis.Redis.from_url(REDIS_URL).client_kill_filter(_id=first) == 1
        await asyncio.sleep(0.1)  # the close reaches the client while it is idle
        second = await client.call("CLIENT", "ID")  # sent on a new connection, transparently
        assert second != first
        await client.aclose()

    run(body())


def test_unreachable_and_silent_servers_are_reported_in_time() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]

    async def refused() -> None:
        client = RedisClient(f"redis://127.0.0.1:{port}/0", timeout=1)
        with pytest.raises(RedisUnavailable, match="connection refused"):
            await client.call("PING")

    run(refused())

    async def silent() -> None:
        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 16)
            await asyncio.sleep(5)
            writer.close()

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = RedisClient(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        calls = [client.call("PING"), client.call("GET", "x")]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RedisUnavailable) for r in results), results
        assert "within 0.3s" in str(results[0])
        server.close()
        await client.aclose()

    run(silent())


def test_refuses_urls_it_cannot_use() -> None:
    for url in ("http://127.0.0.1:6379", "redis://", "redis://127.0.0.1/zero"):
        with pytest.raises(ValueError):
            RedisClient(url)
