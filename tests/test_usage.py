"""Usage records: one per authenticated request, exact token counts, none lost on SIGTERM or while
the database is briefly away."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from secureig.store import create_engine, migrate
from secureig.store.usage import UsageRecord, UsageStore, UsageWriter
from tests.conftest import POSTGRES_DSN, Cli, Deployment, base_env, wait_until
from tests.standin import OllamaStandIn


def _rows(db: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute("SELECT * FROM usage_records ORDER BY id").fetchall()


def _words(text: str) -> int:
    return len(text.split())


def test_every_authenticated_request_leaves_an_exact_record(
    deployment: Deployment, standin: OllamaStandIn
) -> None:
    alice = deployment.cli.create_key("alice", "--models", "llama2")
    gateway = deployment.gateway()
    url = gateway.url
    h = {"X-API-KEY": alice}
    expected_prompt = expected_completion = 0
    prompts = ["one", "one two", "one two three", "four five six seven"]
    # The stand-in counts a prompt's words, and answers "Echo: <prompt>" one word a chunk.
    for prompt in prompts:
        assert httpx.post(url + "/request", json={"model": "llama2", "request": prompt},
                          headers=h).status_code == 200  # fmt: skip
        expected_prompt += _words(prompt)
        expected_completion += _words(prompt) + 1
    for stream in (False, True):
        response = httpx.post(
            url + "/api/chat", headers=h,
            json={"model": "llama2", "messages": [{"role": "user", "content": "a b"}],
                  "stream": stream},
        )  # fmt: skip
        assert response.status_code == 200
        expected_prompt += 2
        expected_completion += 3
    for stream in (False, True):
        body: dict[str, Any] = {"model": "llama2", "messages": [{"role": "user", "content": "c"}],
                                "stream": stream}  # fmt: skip
        if stream:
            body["stream_options"] = {"include_usage": True}
        assert httpx.post(url + "/v1/chat/completions", json=body,
                          headers=h).status_code == 200  # fmt: skip
        expected_prompt += 1
        expected_completion += 2
    # Refused after authentication: recorded with their status. Unauthenticated: not recorded.
    assert httpx.post(url + "/api/generate", json={"model": "mistral:7b", "prompt": "x"},
                      headers=h).status_code == 403  # fmt: skip
    assert httpx.post(url + "/api/generate", json={"model": "llama2", "prompt": "x"},
                      headers={"X-API-KEY": "sig_nobody"}).status_code == 401  # fmt: skip

    db = deployment.tmp / "keys.db"
    assert wait_until(lambda: len(_rows(db)) == 9, timeout=5), len(_rows(db))
    rows = _rows(db)
    assert {r["key_name"] for r in rows} == {"alice"}
    assert sum(r["prompt_tokens"] for r in rows) == expected_prompt
    assert sum(r["completion_tokens"] for r in rows) == expected_completion
    assert [r["status"] for r in rows].count(403) == 1
    assert {r["surface"] for r in rows} == {"seed", "ollama", "openai"}
    first = rows[0]
    assert first["route"] == "generate" and first["model"] == "llama2:latest"
    assert first["backend"] == "ollama"  # the backend's name, never its address
    assert first["duration_ms"] > 0 and first["ttfb_ms"] is not None
    assert first["bytes_in"] > 0 and first["bytes_out"] == len("Echo: one")
    assert len(first["request_id"]) == 16
    assert {r["outcome"] for r in rows} == {"completed"}

    # The CLI report and the admin API agree with the records.
    report = deployment.cli("usage", "--by", "key").stdout.splitlines()
    assert report[0].split() == [
        "KEY", "REQUESTS", "ERRORS", "INCOMPLETE", "PROMPT", "COMPLETION", "TOTAL", "ESTIMATED",
        "TTFB_MS", "DURATION_MS",
    ]  # fmt: skip
    alice_row = next(line.split() for line in report if line.startswith("alice"))
    total = expected_prompt + expected_completion
    mean_ms = sum(r["duration_ms"] for r in rows) / len(rows)
    mean_ttfb = sum(r["ttfb_ms"] for r in rows) / len(rows)
    assert alice_row[:8] == ["alice", "9", "1", "0", str(expected_prompt),
                             str(expected_completion), str(total), "0"]  # fmt: skip
    # Means to a tenth of a millisecond (the store rounds to hundredths, the CLI to tenths).
    assert float(alice_row[8]) == pytest.approx(mean_ttfb, abs=0.06)
    assert float(alice_row[9]) == pytest.approx(mean_ms, abs=0.06)
    api = httpx.get(url + "/admin/usage?by=key", headers={"X-API-KEY": "admin"}).json()
    alice_total = next(t for t in api if t["group"] == "alice")
    seen = (alice_total["requests"], alice_total["prompt_tokens"], alice_total["completion_tokens"])
    assert seen == (9, expected_prompt, expected_completion)
    assert alice_total["mean_duration_ms"] == pytest.approx(mean_ms, abs=0.01)
    assert alice_total["mean_ttfb_ms"] == pytest.approx(mean_ttfb, abs=0.01)
    _assert_hours_and_days(deployment, url, rows)


def _assert_hours_and_days(deployment: Deployment, url: str, rows: list[Any]) -> None:
    """By hour and by day: UTC buckets named as the console charts them, each with its records."""
    hours: dict[str, int] = {}
    for row in rows:
        at = datetime.fromisoformat(str(row["at"])).replace(tzinfo=UTC)
        name = at.strftime("%Y-%m-%d %H:00")
        hours[name] = hours.get(name, 0) + 1
    days: dict[str, int] = {}
    for name, n in hours.items():
        days[name[:10]] = days.get(name[:10], 0) + n
    admin = {"X-API-KEY": "admin"}
    for by, expected in (("hour", hours), ("day", days)):
        # Alice's alone: these admin calls leave records of their own.
        answer = httpx.get(url + f"/admin/usage?by={by}&since=1d&key=alice", headers=admin).json()
        assert {t["group"]: t["requests"] for t in answer} == expected, by
    report = deployment.cli("usage", "--by", "hour", "--since", "1d", "--key", "alice").stdout
    for name, n in hours.items():
        assert re.search(rf"^{name}\s+{n}\s", report, re.MULTILINE), report
    refused = httpx.get(url + "/admin/usage?by=minute", headers=admin)
    assert refused.status_code == 400 and "hour" in refused.json()["error"]


def test_sigterm_under_load_loses_no_record(deployment: Deployment, standin: OllamaStandIn) -> None:
    key = deployment.cli.create_key("load")
    gateway = deployment.gateway()
    standin.chunk_delay = 0.05
    standin.reply = lambda prompt: [f" w{i}" for i in range(20)]  # about 1 s per answer
    completed: list[int] = []
    failed: list[str] = []
    lock = threading.Lock()
    started = threading.Barrier(41)

    def one() -> None:
        started.wait(timeout=10)
        try:
            response = httpx.post(
                gateway.url + "/api/generate", headers={"X-API-KEY": key}, timeout=30,
                json={"model": "llama2", "prompt": "load test", "stream": True},
            )  # fmt: skip
            lines = response.text.splitlines()
            with lock:
                completed.append(len(lines))
        except httpx.HTTPError as exc:
            with lock:
                failed.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(40)]
    for thread in threads:
        thread.start()
    started.wait(timeout=10)
    assert wait_until(lambda: standin.active >= 20, timeout=10)
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    assert gateway.process.wait(timeout=30) in (0, -15)

    # Every answer that started was finished (21 lines: 20 chunks and the done line) ...
    assert completed and all(n == 21 for n in completed), completed
    # ... and every one of them left its record, with its tokens.
    rows = _rows(deployment.tmp / "keys.db")
    assert len(rows) == len(completed)
    assert all(r["status"] == 200 and r["completion_tokens"] == 20 for r in rows)
    assert len(completed) + len(failed) == 40


def test_records_wait_while_the_database_is_away(
    deployment: Deployment, standin: OllamaStandIn, postgres_url: str
) -> None:
    import asyncpg

    name = postgres_url.rsplit("/", 1)[1]
    deployment.env = base_env(postgres_url, standin.url)
    deployment.cli = Cli(deployment.env, deployment.tmp)
    key = deployment.cli.create_key("patient")
    gateway = deployment.gateway(usage_flush_interval="0.2")

    async def admin(sql: str) -> Any:
        connection = await asyncpg.connect(POSTGRES_DSN)
        try:
            return await connection.fetchval(sql)
        finally:
            await connection.close()

    async def count() -> int:
        connection = await asyncpg.connect(postgres_url)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM usage_records"))
        finally:
            await connection.close()

    # Close the database to new connections and end the ones the gateway holds.
    asyncio.run(admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
    asyncio.run(admin(
        f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{name}'"
    ))  # fmt: skip
    try:
        for _ in range(5):
            response = httpx.post(
                gateway.url + "/api/generate", headers={"X-API-KEY": key},
                json={"model": "llama2", "prompt": "x", "stream": False},
            )  # fmt: skip
            assert response.status_code == 200  # keys are verified in memory
        assert wait_until(lambda: "usage store unavailable, holding" in gateway.log(), timeout=5)
        metrics = httpx.get(gateway.url + "/metrics").text
        assert "secureig_usage_records_pending 5.0" in metrics
    finally:
        asyncio.run(admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
    assert wait_until(lambda: asyncio.run(count()) == 5, timeout=15)
    assert "usage store back after" in gateway.log()


def test_what_cannot_be_held_is_counted_not_hidden(
    deployment: Deployment, standin: OllamaStandIn, postgres_url: str
) -> None:
    import asyncpg

    name = postgres_url.rsplit("/", 1)[1]
    deployment.env = base_env(postgres_url, standin.url)
    deployment.cli = Cli(deployment.env, deployment.tmp)
    key = deployment.cli.create_key("overflow")
    gateway = deployment.gateway(usage_max_pending="3", usage_flush_interval="0.2")

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(POSTGRES_DSN)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
    asyncio.run(admin(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))  # fmt: skip
    try:
        for _ in range(6):
            assert httpx.post(
                gateway.url + "/api/generate", headers={"X-API-KEY": key},
                json={"model": "llama2", "prompt": "x", "stream": False},
            ).status_code == 200  # fmt: skip
        metrics = httpx.get(gateway.url + "/metrics").text
        assert "secureig_usage_records_dropped_total 3.0" in metrics
        assert "usage records dropped: 1 so far" in gateway.log()
    finally:
        asyncio.run(admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))


def _record(request_id: str, key_name: str = "app") -> UsageRecord:
    return UsageRecord(
        at=datetime.now(UTC), request_id=request_id, key_id=None, key_name=key_name,
        surface="ollama", route="generate", model="llama2:latest", backend=None, status=200,
        prompt_tokens=1, completion_tokens=2, tokens_estimated=False, ttfb_ms=1.0,
        duration_ms=2.0, bytes_in=3, bytes_out=4,
    )  # fmt: skip


def test_a_record_the_database_refuses_does_not_hold_back_the_rest(postgres_url: str) -> None:
    async def run() -> tuple[bool, int, int, list[int]]:
        engine = create_engine(postgres_url)
        try:
            await migrate(engine)
            store = UsageStore(engine)
            dropped: list[int] = []
            writer = UsageWriter(store, batch_size=10, on_drop=dropped.append)
            # PostgreSQL refuses a key name longer than its column; the others are fine.
            records = [_record(f"r{i}", key_name="x" * 100 if i == 2 else "app") for i in range(5)]
            for record in records:
                writer.record(record)
            ok = await writer.flush()
            # Written again (a timed-out insert retried, a spool replayed): still one each.
            await store.insert([records[0], records[1]])
            totals = await store.totals(by="key")
            return ok, writer.written, sum(t.requests for t in totals), dropped
        finally:
            await engine.dispose()

    ok, written, stored, dropped = asyncio.run(run())
    assert ok and written == 4 and dropped == [1]
    assert stored == 4


def test_the_same_record_twice_is_stored_once(tmp_path: Path) -> None:
    async def run() -> int:
        engine = create_engine(f"sqlite:///{tmp_path / 'u.db'}")
        try:
            await migrate(engine)
            store = UsageStore(engine)
            record = _record("same")
            await store.insert([record])
            await store.insert([record, _record("other")])
            return sum(t.requests for t in await store.totals(by="key"))
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == 2
