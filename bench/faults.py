"""Faults, measured: what a hostile backend, a connection flood, a Redis stall, key churn at
10,000 keys and a hung database do to a running gateway, as figures beside a baseline taken in
the same run. `tests/test_faults.py` checks the behaviour; this says how much, and how fast.

Scenarios (a few minutes in all, every byte on loopback):
- flood: connections from one address until refused; what another address sees meanwhile;
- hostile: /api/generate p50/p99 while other clients stream endless lines from a hostile backend,
  against the same without them;
- redis: a concurrency-capped key while its Redis is paused for 5 s, and how soon after the
  resume it admits its full cap again;
- keys: `keys import` of 10,000 keys, then one key change a second: request p50/p99 against none;
- shutdown: SIGTERM with the database paused (SIGSTOP): time to exit, records spooled, and
  written at the next start.
Run: make bench (after bench/run.py), or .venv/bin/python bench/faults.py [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hostile import MODEL, Behaviour, HostileBackend  # noqa: E402
from tests.servers import OwnPostgres, OwnRedis  # noqa: E402

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gateway:
    def __init__(self, tmp: Path, upstream: str, database: str, **settings: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SECUREIG_")}
        self.env.update(
            SECUREIG_OLLAMA_URL=upstream,
            SECUREIG_DATABASE_URL=database,
            SECUREIG_LOG_LEVEL="warning",
            PYTHONUNBUFFERED="1",
        )
        self.env.update({f"SECUREIG_{k.upper()}": v for k, v in settings.items()})
        self.log = tmp / f"gateway-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [PYTHON, "-m", "secureig", *args], env=self.env, cwd=self.tmp,
            capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        return done.stdout

    def start(self) -> Gateway:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "secureig", "serve", "--port", str(self.port)],
                env=self.env, cwd=self.tmp, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> float:
        """SIGTERM; the seconds until the process ended."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return time.monotonic() - started


@contextmanager
def running(gateway: Gateway) -> Iterator[Gateway]:
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
    }


def timed_requests(call: Callable[[], int], seconds: float) -> dict[str, float]:
    samples: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        status = call()
        samples.append(time.perf_counter() - started)
        failures += status != 200
    return {**percentiles(samples), "failures": failures}


def generate(client: httpx.Client, url: str, key: str, stream: bool = False) -> int:
    body = {"model": MODEL, "prompt": "hi", "stream": stream}
    return client.post(url + "/api/generate", json=body, headers={"X-API-KEY": key}).status_code


# -- scenarios -----------------------------------------------------------------------------------


def flood(tmp: Path, backend: HostileBackend) -> dict[str, object]:
    backend.reset(Behaviour("lines", total=3))
    gateway = Gateway(tmp, backend.url, f"sqlite:///{tmp / 'flood.db'}", header_timeout="60")
    with running(gateway), httpx.Client(timeout=10) as client:
        key = "admin"
        quiet = timed_requests(lambda: generate(client, gateway.url, key), 3)
        opened: list[socket.socket] = []
        try:
            # Heads that never end, from one address: more than its share of connections.
            for _ in range(2300):
                sock = socket.socket()
                sock.bind(("127.0.0.2", 0))
                sock.settimeout(2)
                sock.connect(("127.0.0.1", gateway.port))
                sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                opened.append(sock)
            time.sleep(1.0)
            held = refused = 0
            for sock in opened:
                sock.setblocking(False)
                try:
                    answer = sock.recv(64)
                except BlockingIOError:
                    held += 1
                    continue
                refused += answer.startswith(b"HTTP/1.1 503")
            during = timed_requests(lambda: generate(client, gateway.url, key), 3)
        finally:
            for sock in opened:
                sock.close()
    return {
        "connections_opened": len(opened),
        "held_before_refusal": held,
        "refused_503": refused,
        "other_address_quiet": quiet,
        "other_address_during_flood": during,
        "p50_ratio": round(during["p50_ms"] / quiet["p50_ms"], 2),
    }


def hostile(tmp: Path, backend: HostileBackend) -> dict[str, object]:
    gateway = Gateway(tmp, backend.url, f"sqlite:///{tmp / 'hostile.db'}")
    with running(gateway), httpx.Client(timeout=30) as client:
        backend.reset(Behaviour("lines", total=3))
        quiet = timed_requests(lambda: generate(client, gateway.url, "admin"), 5)
        backend.reset(Behaviour("long-line", total=300 * 1024 * 1024, path="/api/chat"))
        stop = threading.Event()
        cut = [0]

        def attacker() -> None:
            with httpx.Client(timeout=60) as own:
                while not stop.is_set():
                    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
                    with suppress(httpx.HTTPError):
                        own.post(gateway.url + "/api/chat", json=body,
                                 headers={"X-API-KEY": "admin"})  # fmt: skip
                        cut[0] += 1

        attackers = [threading.Thread(target=attacker) for _ in range(4)]
        for thread in attackers:
            thread.start()
        time.sleep(0.5)
        during = timed_requests(lambda: generate(client, gateway.url, "admin"), 5)
        stop.set()
        for thread in attackers:
            thread.join(60)
    return {
        "quiet": quiet,
        "during_4_endless_lines": during,
        "endless_answers_cut": cut[0],
        "p50_ratio": round(during["p50_ms"] / quiet["p50_ms"], 2),
        "p99_ratio": round(during["p99_ms"] / quiet["p99_ms"], 2),
    }


def redis_stall(tmp: Path, backend: HostileBackend) -> dict[str, object]:
    backend.reset(Behaviour("lines", total=3))
    redis = OwnRedis(tmp / "redis").start()
    try:
        gateway = Gateway(
            tmp, backend.url, f"sqlite:///{tmp / 'redis.db'}",
            redis_url=redis.url, redis_timeout="0.5",
        )  # fmt: skip
        key = gateway.cli("keys", "create", "capped", "--concurrency", "5", "--rpm", "100000")
        key = key.strip()
        with running(gateway), httpx.Client(timeout=10) as client:
            redis.pause()
            statuses: list[int] = []
            try:
                for _ in range(50):
                    statuses.append(generate(client, gateway.url, key))
            finally:
                redis.resume()
            resumed = time.monotonic()
            first_ok = None
            full_cap = None
            deadline = resumed + 60
            while time.monotonic() < deadline:
                results = five_at_once(gateway.url, key)
                if first_ok is None and 200 in results:
                    first_ok = time.monotonic() - resumed
                if results.count(200) == 5:
                    full_cap = time.monotonic() - resumed
                    break
                time.sleep(0.05)
    finally:
        redis.stop()
    return {
        "refused_during_stall": statuses.count(503),
        "seconds_to_first_admission": round(first_ok or -1, 2),
        "seconds_to_full_cap_again": round(full_cap or -1, 2),
    }


def five_at_once(url: str, key: str) -> list[int]:
    results: list[int] = []
    with httpx.Client(timeout=10) as client:

        def one() -> None:
            results.append(generate(client, url, key, True))

        threads = [threading.Thread(target=one) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return results


def keys(tmp: Path, backend: HostileBackend) -> dict[str, object]:
    backend.reset(Behaviour("lines", total=3))
    gateway = Gateway(tmp, backend.url, f"sqlite:///{tmp / 'keys.db'}")
    rows = ["name,scopes,rpm", "user,inference,"]
    rows += [f"k{i},inference,{1000 + i}" for i in range(10_000)]
    (tmp / "keys.csv").write_text("\n".join(rows) + "\n")
    started = time.monotonic()
    out = gateway.cli("keys", "import", "keys.csv")
    import_seconds = time.monotonic() - started
    key = out.splitlines()[1].split(",")[1]
    with running(gateway), httpx.Client(timeout=10) as client:
        quiet = timed_requests(lambda: generate(client, gateway.url, key), 8)
        stop = threading.Event()
        changes = [0]

        def churn() -> None:
            # Through the admin API (the bootstrap key: the store holds no admin key).
            with httpx.Client(timeout=10) as admin:
                while not stop.wait(1.0):
                    admin.patch(
                        f"{gateway.url}/admin/keys/k{5000 + changes[0]}",
                        json={"rpm": 7},
                        headers={"X-API-KEY": "admin"},
                    ).raise_for_status()
                    changes[0] += 1

        churner = threading.Thread(target=churn)
        churner.start()
        during = timed_requests(lambda: generate(client, gateway.url, key), 8)
        stop.set()
        churner.join(30)
    return {
        "import_10001_keys_seconds": round(import_seconds, 2),
        "quiet": quiet,
        "one_change_a_second": {**during, "changes": changes[0]},
        "p99_ratio": round(during["p99_ms"] / quiet["p99_ms"], 2),
    }


def shutdown(tmp: Path, backend: HostileBackend) -> dict[str, object]:
    backend.reset(Behaviour("lines", total=3))
    postgres = OwnPostgres().start()
    try:
        spool = tmp / "usage.spool"
        gateway = Gateway(
            tmp, backend.url, postgres.url, usage_flush_interval="60",
            usage_spool=str(spool), shutdown_grace="5",
        )  # fmt: skip
        with httpx.Client(timeout=10) as client:
            gateway.start()
            for _ in range(200):
                generate(client, gateway.url, "admin")
            postgres.pause()
            try:
                exit_seconds = gateway.stop()
                spooled = len(spool.read_text().splitlines()) if spool.exists() else 0
            finally:
                postgres.resume()
        again = Gateway(tmp, backend.url, postgres.url, usage_spool=str(spool))
        with running(again):
            deadline = time.monotonic() + 30
            while spool.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            report = again.cli("usage", "--by", "key")
        total = next(line.split() for line in report.splitlines() if line.startswith("(all)"))
        stored = int(total[1])
    finally:
        postgres.remove()
    return {
        "grace_plus_flush_timeout_s": 5 + 10,
        "seconds_to_exit_with_database_paused": round(exit_seconds, 2),
        "records_spooled": spooled,
        "spool_gone_after_next_start": not spool.exists(),
        "records_in_store_after_restart": stored,
    }


SCENARIOS = {
    "flood": flood, "hostile": hostile, "redis": redis_stall, "keys": keys, "shutdown": shutdown,
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "faults.json")
    args = parser.parse_args()
    results: dict[str, object] = {}
    backend = HostileBackend()
    backend.start()
    try:
        for name in args.only or list(SCENARIOS):
            with tempfile.TemporaryDirectory(prefix=f"secureig-faults-{name}-") as folder:
                started = time.monotonic()
                results[name] = SCENARIOS[name](Path(folder), backend)
                print(f"{name} ({time.monotonic() - started:.0f}s):", flush=True)
                print(json.dumps(results[name], indent=2), flush=True)
    finally:
        backend.stop()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
