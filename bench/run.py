"""The benchmark suite: the gateway against going direct and against the floor proxy, measured in
one run, interleaved, on loopback.

The gateway runs with everything on: a key with requests-per-minute, tokens-per-minute and
concurrency limits high enough never to refuse (so the limiter runs on every request), usage
records written to SQLite, and the access log written to a file. Where the machine has two cores
the gateway and the floor are pinned to the first, wrk and the backend to the second.
Run: make bench   (or: .venv/bin/python bench/run.py --help). BENCH_LOG_LEVEL=warning measures
the gateway without its access log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
FLOOR_KEY = "floor-key"


@dataclass
class Target:
    name: str
    url: str  # full URL of the route
    body: Mapping[str, object]
    key: str | None


@dataclass
class Sample:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_request: float | None = None


@dataclass
class Result:
    scenario: str
    target: str
    samples: list[Sample] = field(default_factory=list)

    def median(self, name: str) -> float:
        values = [getattr(s, name) for s in self.samples if getattr(s, name) is not None]
        return statistics.median(values) if values else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int, command: list[str]) -> list[str]:
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *command]
    return command


def wait_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


@contextmanager
def process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, from /proc (Linux); 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(target: Target, connections: int, seconds: int, tmp: Path) -> tuple[Sample, int]:
    script = tmp / (re.sub(r"[^A-Za-z0-9]+", "-", target.name) + ".lua")
    headers = {"Content-Type": "application/json"}
    if target.key:
        headers["X-API-KEY"] = target.key
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(target.body))}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    command = pinned(1, [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
        target.url,
    ])  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    # The distribution's own lines: "98.50%" elsewhere in wrk's output also ends in "50%".
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: .*?(\d+) timeout"):
        match = re.search(pattern, out)
        errors += int(match.group(1)) if match else 0
    return Sample(rate, p50, p99, errors), total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="per measurement (default 10)")
    parser.add_argument("--repetitions", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="for throughput (default 32)")
    parser.add_argument("--out", type=Path, default=BENCH / "results.json", help="JSON results")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("make bench needs wrk, the HTTP load generator: apt-get install wrk")

    tmp = Path(tempfile.mkdtemp(prefix="secureig-bench-"))
    backend_port, gateway_port, floor_port = free_port(), free_port(), free_port()
    backend = f"http://127.0.0.1:{backend_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECUREIG_")}
    gateway_env = {
        **env,
        "SECUREIG_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
        "SECUREIG_OLLAMA_URL": backend,
        "SECUREIG_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "info"),
    }
    key = subprocess.run(
        [PYTHON, "-m", "secureig", "keys", "create", "bench", "--rpm", "100000000",
         "--tpm", "1000000000", "--concurrency", "100000"],
        env=gateway_env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip

    results: dict[tuple[str, str], Result] = {}
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    generate = {"model": "llama2", "prompt": "hello there", "stream": False}
    chat = {"model": "llama2", "messages": [{"role": "user", "content": "hello"}]}
    targets = [
        Target("direct", f"{backend}/api/generate", generate, None),
        Target("floor", f"http://127.0.0.1:{floor_port}/api/generate", generate, FLOOR_KEY),
        Target("gateway /api/generate", f"{gateway_url}/api/generate", generate, key),
        Target("gateway /v1/chat/completions", f"{gateway_url}/v1/chat/completions", chat, key),
        Target("gateway /request", f"{gateway_url}/request",
               {"model": "llama2", "request": "hello there"}, key),
    ]  # fmt: skip
    scenarios = [("throughput", args.connections), ("latency", 1)]
    with (
        process(pinned(1, [PYTHON, str(BENCH / "fast_ollama.py"), "--port", str(backend_port)]),
                env, tmp / "backend.log"),
        process(pinned(0, [PYTHON, "-m", "secureig", "serve", "--port", str(gateway_port)]),
                gateway_env, tmp / "gateway.log") as gateway,
        process(pinned(0, [PYTHON, str(BENCH / "floor.py"), "--port", str(floor_port)]),
                {**env, "BACKEND": backend, "FLOOR_KEY": FLOOR_KEY}, tmp / "floor.log"),
    ):  # fmt: skip
        for url in (backend + "/api/tags", gateway_url + "/healthz",
                    f"http://127.0.0.1:{floor_port}/docs"):  # fmt: skip
            wait_up(url)
        for target in targets:  # warm every path once: connection pools, model discovery
            run_wrk(target, 4, 1, tmp)
        for round_ in range(args.repetitions):
            for scenario, connections in scenarios:
                for target in targets:
                    is_gateway = target.name.startswith("gateway")
                    cpu_before = cpu_seconds(gateway.pid) if is_gateway else 0.0
                    sample, total = run_wrk(target, connections, args.seconds, tmp)
                    if is_gateway and total:
                        cpu = cpu_seconds(gateway.pid) - cpu_before
                        sample.cpu_ms_per_request = cpu / total * 1000
                    results.setdefault((scenario, target.name), Result(scenario, target.name))
                    results[(scenario, target.name)].samples.append(sample)
                    print(f"round {round_ + 1} {scenario:10} {target.name:30} "
                          f"{sample.requests_per_s:9.0f} req/s  p50 {sample.p50_ms:7.3f} ms  "
                          f"p99 {sample.p99_ms:7.3f} ms", file=sys.stderr)  # fmt: skip
        usage_rows = subprocess.run(
            [PYTHON, "-m", "secureig", "usage", "--since", "1h"], env=gateway_env,
            capture_output=True, text=True,
        ).stdout  # fmt: skip

    report(results, args, usage_rows)
    shutil.rmtree(tmp, ignore_errors=True)


def report(results: dict[tuple[str, str], Result], args: argparse.Namespace, usage: str) -> None:
    def med(scenario: str, target: str, name: str) -> float:
        return results[(scenario, target)].median(name)

    lines = [
        f"secureig benchmark: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; medians of {args.repetitions} interleaved runs of "
        f"{args.seconds} s; wrk, {args.connections} connections for throughput, 1 for latency",
        "",
        f"{'target':30} {'req/s':>9} {'x direct':>9} {'x floor':>8} {'CPU ms/req':>11} "
        f"{'p50 ms @1':>10} {'p99 ms @1':>10} {'+p50 vs direct':>15}",
    ]
    direct_rate = med("throughput", "direct", "requests_per_s")
    floor_rate = med("throughput", "floor", "requests_per_s")
    direct_p50 = med("latency", "direct", "p50_ms")
    for target in dict.fromkeys(t for _, t in results):
        rate = med("throughput", target, "requests_per_s")
        cpu = med("throughput", target, "cpu_ms_per_request")
        p50 = med("latency", target, "p50_ms")
        p99 = med("latency", target, "p99_ms")
        cpu_text = f"{cpu:11.3f}" if cpu == cpu else f"{'-':>11}"
        lines.append(
            f"{target:30} {rate:9.0f} {rate / direct_rate:9.2f} {rate / floor_rate:8.2f} "
            f"{cpu_text} {p50:10.3f} {p99:10.3f} {p50 - direct_p50:+15.3f}"
        )
    errors = sum(s.errors for r in results.values() for s in r.samples)
    lines += ["", f"errors (non-2xx, timeouts) in all runs: {errors}"]
    print("\n".join(lines))
    data = {
        "machine": {"arch": platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "settings": {"seconds": args.seconds, "repetitions": args.repetitions,
                     "connections": args.connections},
        "results": [
            {"scenario": r.scenario, "target": r.target,
             "samples": [asdict(s) for s in r.samples],
             "median_requests_per_s": r.median("requests_per_s"),
             "median_p50_ms": r.median("p50_ms"), "median_p99_ms": r.median("p99_ms")}
            for r in results.values()
        ],
        "usage_records": usage,
    }  # fmt: skip
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nresults written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
