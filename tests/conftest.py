"""Test fixtures: the Ollama stand-in, gateway processes on free loopback ports, and the CLI.

Everything goes through real HTTP to a real `secureig serve` process; only Ollama is stood in for.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from tests.hostile import HostileBackend
from tests.servers import OwnPostgres, OwnRedis
from tests.standin import OllamaStandIn

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_SERVICES = os.environ.get("SECUREIG_REQUIRE_SERVICES") == "1"
POSTGRES_DSN = os.environ.get("SECUREIG_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def base_env(database_url: str, ollama_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECUREIG_")}
    env.update(
        SECUREIG_DATABASE_URL=database_url,
        SECUREIG_OLLAMA_URL=ollama_url,
        SECUREIG_LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
    )
    return env


class Cli:
    """Runs `python -m secureig ...` with the same settings the gateway under test reads."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "secureig", *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"secureig {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def create_key(self, name: str, *flags: str) -> str:
        result = self("keys", "create", name, *flags)
        key = result.stdout.strip()
        assert key.startswith("sig_") and "\n" not in key
        return key


class Gateway:
    """One `secureig serve` process, stopped by its PID."""

    def __init__(
        self,
        env: dict[str, str],
        cwd: Path,
        port: int,
        args: tuple[str, ...] = (),
        open_files: int | None = None,
        verify: ssl.SSLContext | None = None,
    ):
        self.open_files = open_files  # a limit on the process's open files (ulimit -n)
        self.env = env
        self.cwd = cwd
        self.port = port
        self.args = args
        # Served over TLS when a certificate is configured; `verify` is what clients trust.
        tls = "SECUREIG_SSL_CERTFILE" in env or "--ssl-certfile" in args
        self.verify: ssl.SSLContext | bool = verify if verify is not None else True
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.log_path = cwd / f"gateway-{port}-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Gateway:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "secureig", "serve", "--port", str(self.port), *self.args],
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=self._limit_files if self.open_files else None,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def _limit_files(self) -> None:
        import resource

        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.get(self.url + "/healthz", timeout=1.0, verify=self.verify)
                if answer.status_code == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"gateway did not come up in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=5)

    def post(
        self, body: object, key: str | None = "admin", timeout: float = 30.0
    ) -> httpx.Response:
        headers = {"X-API-KEY": key} if key is not None else {}
        return httpx.post(self.url + "/request", json=body, headers=headers, timeout=timeout)


def connect_from(gateway: Gateway, source: str, timeout: float = 5.0) -> socket.socket:
    """A raw connection to the gateway from `source`: loopback is a /8, so a second address
    stands for a second client machine."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", gateway.port))
    return sock


def wait_until(predicate: object, timeout: float = 5.0, interval: float = 0.1) -> bool:
    """Poll `predicate()` until true or the timeout; the timeout bounds every wait in the suite."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return bool(predicate())  # type: ignore[operator]


@pytest.fixture(scope="session")
def standin() -> Iterator[OllamaStandIn]:
    server = OllamaStandIn()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileBackend]:
    """A hostile Ollama (tests/hostile.py); each test sets the behaviour it needs."""
    server = HostileBackend()
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_standin(request: pytest.FixtureRequest) -> Iterator[None]:
    # The stand-in is shared by the session; each test starts from its defaults.
    yield
    if "standin" in request.fixturenames:
        server: OllamaStandIn = request.getfixturevalue("standin")
        if not _listening(server.port):
            server.start()
        server.reset()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Deployment:
    """A store, its CLI, and gateways started on it; every process is stopped at teardown."""

    def __init__(self, tmp: Path, database_url: str, ollama_url: str) -> None:
        self.tmp = tmp
        self.env = base_env(database_url, ollama_url)
        self.cli = Cli(self.env, tmp)
        self.gateways: list[Gateway] = []

    def gateway(
        self,
        *args: str,
        port: int | None = None,
        wait: bool = True,
        open_files: int | None = None,
        verify: ssl.SSLContext | None = None,
        **env: str,
    ) -> Gateway:
        merged = dict(self.env)
        merged.update({f"SECUREIG_{k.upper()}": v for k, v in env.items()})
        gateway = Gateway(merged, self.tmp, port or free_port(), args, open_files, verify)
        self.gateways.append(gateway)
        return gateway.start(wait=wait)

    def close(self) -> None:
        for gateway in self.gateways:
            gateway.stop()


def fleet_deployment(tmp: Path, backends: list[dict[str, Any]], **top: Any) -> Deployment:
    """A deployment whose settings file names its backends as [[backends]] tables."""
    dep = Deployment(tmp, f"sqlite:///{tmp / 'keys.db'}", "unused")
    del dep.env["SECUREIG_OLLAMA_URL"]
    lines = [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    for backend in backends:
        lines.append("[[backends]]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in backend.items())
    path = tmp / "secureig.toml"
    path.write_text("\n".join(lines) + "\n")
    dep.env["SECUREIG_CONFIG"] = str(path)
    return dep


@pytest.fixture
def deployment(tmp_path: Path, standin: OllamaStandIn) -> Iterator[Deployment]:
    dep = Deployment(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}", standin.url)
    yield dep
    dep.close()


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, standin: OllamaStandIn
) -> Iterator[Deployment]:
    """One gateway for a whole module, on the bootstrap key, for tests that change no keys."""
    tmp = tmp_path_factory.mktemp("shared")
    dep = Deployment(tmp, f"sqlite:///{tmp / 'keys.db'}", standin.url)
    dep.gateway(health_interval="0.5")
    yield dep
    dep.close()


def service_missing(reason: str) -> NoReturn:
    """A test's service is absent: fail under SECUREIG_REQUIRE_SERVICES=1 (CI), skip otherwise."""
    if REQUIRE_SERVICES:
        pytest.fail(f"SECUREIG_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def _postgres_reachable() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1.0):
            return None
    except OSError as exc:
        return f"PostgreSQL is not reachable on 127.0.0.1:5432 ({exc})"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    reason = _postgres_reachable()
    if reason:
        service_missing(reason)
    import asyncio

    import asyncpg

    name = f"secureig_test_{uuid.uuid4().hex[:10]}"
    admin_dsn = POSTGRES_DSN

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(admin_dsn)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


REDIS_URL = os.environ.get("SECUREIG_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_settings() -> Iterator[dict[str, str]]:
    """Settings for a shared Redis, under a prefix of this test's own, removed afterwards."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1.0):
            pass
    except OSError as exc:
        service_missing(f"Redis is not reachable on 127.0.0.1:6379 ({exc})")
    import redis

    prefix = f"secureig-test-{uuid.uuid4().hex[:10]}:"
    yield {"redis_url": REDIS_URL, "redis_prefix": prefix}
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def wait_for_fresh_minute(needed: float = 15.0) -> None:
    """Calendar-minute limits: start a test with at least `needed` seconds left in the minute."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.2)


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A PostgreSQL server of this test's own, to pause or stop (never the shared one)."""
    try:
        server = OwnPostgres().start()
    except (FileNotFoundError, KeyError, RuntimeError) as exc:
        service_missing(f"PostgreSQL cannot be started here: {exc}")
    yield server
    server.remove()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of this test's own, keeping nothing on disk, to pause or restart."""
    try:
        server = OwnRedis(tmp_path / "redis").start()
    except (FileNotFoundError, RuntimeError) as exc:
        service_missing(f"redis-server cannot be started here: {exc}")
    yield server
    server.stop()
