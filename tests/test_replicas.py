"""Two gateway processes sharing PostgreSQL and Redis enforce one set of limits and keys, and write
one usage table."""

from __future__ import annotations

import asyncio
import re
import threading
from datetime import UTC, datetime, timedelta

import httpx

from tests.conftest import Cli, Deployment, base_env, wait_for_fresh_minute, wait_until
from tests.standin import OllamaStandIn

GEN = {"model": "llama2", "prompt": "x y", "stream": False}


def _replicas(
    deployment: Deployment, standin: OllamaStandIn, postgres_url: str, redis: dict[str, str]
) -> tuple[str, str]:
    deployment.env = base_env(postgres_url, standin.url)
    deployment.cli = Cli(deployment.env, deployment.tmp)
    url, prefix = redis["redis_url"], redis["redis_prefix"]
    a = deployment.gateway(redis_url=url, redis_prefix=prefix)
    b = deployment.gateway(redis_url=url, redis_prefix=prefix)
    return a.url, b.url


def _gen(url: str, key: str) -> int:
    return httpx.post(url + "/api/generate", json=GEN, headers={"X-API-KEY": key}).status_code


def test_limits_keys_and_usage_are_shared(
    deployment: Deployment,
    standin: OllamaStandIn,
    postgres_url: str,
    redis_settings: dict[str, str],
) -> None:
    a, b = _replicas(deployment, standin, postgres_url, redis_settings)
    cli = deployment.cli
    rpm = cli.create_key("rpm5", "--rpm", "5")
    cap = cli.create_key("cap2", "--concurrency", "2")
    plain = cli.create_key("plain")
    # Keys load together: once the last one serves on both replicas, all of them do.
    for url in (a, b):
        assert wait_until(lambda url=url: _gen(url, plain) == 200, timeout=3)

    # A per-minute limit holds across both replicas together.
    wait_for_fresh_minute(20)
    statuses = [_gen(a if i % 2 else b, rpm) for i in range(12)]
    assert statuses == [200] * 5 + [429] * 7, statuses

    # A concurrency cap holds across both replicas together.
    standin.chunk_delay = 0.15
    standin.reply = lambda prompt: [f" w{i}" for i in range(8)]
    results: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def one(index: int) -> None:
        barrier.wait(timeout=10)
        status = _gen(a if index % 2 else b, cap)
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert standin.peak_active == 2, standin.peak_active
    assert results.count(200) >= 2 and 429 in results
    standin.chunk_delay = 0.0

    # A revocation through one replica's admin API is enforced by the other within 2 seconds.
    revoked = httpx.delete(a + "/admin/keys/plain", headers={"X-API-KEY": "admin"})
    assert revoked.status_code == 200
    assert wait_until(lambda: _gen(b, plain) == 401, timeout=2.5)

    # Usage from both lands in one table.
    import asyncpg

    async def per_key() -> dict[str, int]:
        connection = await asyncpg.connect(postgres_url)
        try:
            rows = await connection.fetch(
                "SELECT key_name, count(*) AS n FROM usage_records GROUP BY key_name"
            )
        finally:
            await connection.close()
        return {r["key_name"]: int(r["n"]) for r in rows}

    assert wait_until(lambda: asyncio.run(per_key()).get("cap2") == len(results), timeout=5)
    counts = asyncio.run(per_key())
    assert counts["rpm5"] == 12  # the refused ones too, with their status
    report = cli("usage", "--by", "key").stdout
    assert "cap2" in report and "rpm5" in report
    # Hours and days in UTC on PostgreSQL as on SQLite, whatever the server's time zone.
    # (One key's records, all written: the admin calls' own records may still be on their way.)
    admin = {"X-API-KEY": "admin"}
    hour = httpx.get(a + "/admin/usage?by=hour&since=1d&key=rpm5", headers=admin).json()
    assert sum(t["requests"] for t in hour) == 12
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:00", t["group"]) for t in hour), hour
    day = httpx.get(a + "/admin/usage?by=day&since=1d&key=rpm5", headers=admin).json()
    assert sum(t["requests"] for t in day) == 12
    assert {t["group"] for t in day} <= {
        (datetime.now(UTC) - timedelta(minutes=m)).strftime("%Y-%m-%d") for m in (0, 10)
    }, day
    deployment.cli.env = {**deployment.env, "SECUREIG_REDIS_URL": redis_settings["redis_url"]}
    assert "limits    ok    Redis at redis://127.0.0.1:6379/0" in cli("check").stdout
    ready = httpx.get(a + "/readyz").json()
    assert ready["limits"] == "ok" and ready["store"] == "ok"


def test_a_replica_without_redis_refuses_limited_keys_honestly(
    deployment: Deployment, standin: OllamaStandIn
) -> None:
    # Redis configured but unreachable: keys with limits get 503, keys without limits serve.
    limited = deployment.cli.create_key("limited", "--rpm", "100")
    free = deployment.cli.create_key("free")
    gateway = deployment.gateway(redis_url="redis://127.0.0.1:1/0")
    response = httpx.post(gateway.url + "/api/generate", json=GEN, headers={"X-API-KEY": limited})
    assert response.status_code == 503
    assert "rate limiter unavailable" in response.json()["error"]
    assert _gen(gateway.url, free) == 200
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["limits"] == "unreachable"
    deployment.cli.env = {**deployment.env, "SECUREIG_REDIS_URL": "redis://127.0.0.1:1/0"}
    check = deployment.cli("check", check=False)
    assert check.returncode == 1 and "limits    FAIL  rate limiter unavailable" in check.stdout
