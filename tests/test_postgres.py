"""The same gateway and CLI on PostgreSQL, selected by a plain `postgresql://` URL."""

from __future__ import annotations

from tests.conftest import Cli, Deployment, base_env, wait_until
from tests.standin import OllamaStandIn

HI = {"model": "llama2", "request": "hi"}


def test_keys_and_requests_on_postgres(
    deployment: Deployment, standin: OllamaStandIn, postgres_url: str
) -> None:
    assert postgres_url.startswith("postgresql://")
    deployment.env = base_env(postgres_url, standin.url)
    deployment.cli = Cli(deployment.env, deployment.tmp)
    key = deployment.cli.create_key("pg-alice", "--models", "llama*")
    gateway = deployment.gateway()
    assert "PostgreSQL" in deployment.cli("check").stdout
    assert gateway.post(HI, key=key).status_code == 200

    deployment.cli("keys", "revoke", "pg-alice")
    assert wait_until(lambda: gateway.post(HI, key=key).status_code == 403, timeout=2.5)

    admin = deployment.cli.create_key("pg-root", "--scope", "admin")
    assert wait_until(lambda: gateway.post(HI, key="admin").status_code == 403, timeout=2.5)
    assert gateway.post(HI, key=admin).status_code == 200


def test_store_outage_fails_readiness_but_keys_keep_working(
    deployment: Deployment, standin: OllamaStandIn, postgres_url: str
) -> None:
    import asyncio

    import asyncpg
    import httpx

    from tests.conftest import POSTGRES_DSN

    deployment.env = base_env(postgres_url, standin.url)
    deployment.cli = Cli(deployment.env, deployment.tmp)
    key = deployment.cli.create_key("pg-bob")
    gateway = deployment.gateway()
    assert httpx.get(gateway.url + "/readyz").json()["store"] == "ok"

    async def drop() -> None:
        connection = await asyncpg.connect(POSTGRES_DSN)
        try:
            name = postgres_url.rsplit("/", 1)[1]
            await connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    asyncio.run(drop())
    assert wait_until(lambda: httpx.get(gateway.url + "/readyz").status_code == 503, timeout=10)
    report = httpx.get(gateway.url + "/readyz").json()
    assert report["status"] == "not ready" and report["store"] == "unreachable"
    # Verification is in memory: the last known keys still serve while the store is away.
    assert gateway.post(HI, key=key).status_code == 200
    assert wait_until(lambda: "key store unreachable" in gateway.log(), timeout=5)


def test_processes_starting_together_migrate_once(
    deployment: Deployment, standin: OllamaStandIn, postgres_url: str
) -> None:
    import subprocess
    import sys

    for url in (postgres_url, f"sqlite:///{deployment.tmp / 'together.db'}"):
        env = base_env(url, standin.url)
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "secureig", "keys", "list"],
                env=env,
                cwd=deployment.tmp,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        results = [p.communicate(timeout=60) for p in processes]
        assert [p.returncode for p in processes] == [0, 0, 0, 0], results
        assert all("No keys in" in err for _, err in results)
