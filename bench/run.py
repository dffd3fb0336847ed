"""The benchmark suite: the gateway against going direct and against the floor proxy, measured in
one run, interleaved, on loopback.

The gateway runs with everything on: a key with requests-per-minute, tokens-per-minute and
concurrency limits high enough never to refuse (so the limiter runs on every request), usage
records written to SQLite, and the access log written to a file. A second gateway does the same
with its limits in Redis (when Redis answers on BENCH_REDIS_URL, default redis://127.0.0.1:6379/0).
Where the machine has two cores the gateways and the floor are pinned to the first; the load
generators and the backend to the second.

A third gateway fronts two backends (two fast stand-ins), so the router chooses on every
request: the `fleet2` row.

Scenarios: throughput (wrk, 32 connections) and latency (wrk, 1 connection) on three routes;
streaming time to first byte and gaps at 16 streams; an invalid-key flood beside paced real
traffic; resident memory with 1,000 slow streams open; RSS over a soak (10 minutes by default).
Run: make bench   (or: .venv/bin/python bench/run.py --help). BENCH_LOG_LEVEL=warning measures
the gateway without its access log. --baseline DIR adds the gateway of another source tree (a git
worktree of an earlier commit, say) to throughput and latency, interleaved with this one and set
up alike, so a change on the request path is measured against its parent in one run.
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
import threading
import time
import uuid
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
    key: str | None  # sent as X-API-KEY, or as Authorization when it starts "Bearer "


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
        headers["Authorization" if target.key.startswith("Bearer ") else "X-API-KEY"] = target.key
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


SCENARIOS = ("throughput", "latency", "streaming", "flood", "memory", "soak")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB, from /proc (Linux); 0 elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def client(mode: str, url: str, body: Mapping[str, object], key: str | None, *extra: str,
           timeout: float) -> dict[str, object]:  # fmt: skip
    """Run bench/clients.py on the load core and return the last JSON line it printed."""
    command = pinned(1, [PYTHON, str(BENCH / "clients.py"), mode, url, json.dumps(body),
                         *(["--key", key] if key else []), *extra])  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def redis_url() -> str | None:
    url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    host, port = "127.0.0.1", 6379
    match = re.match(r"redis://([^:/]+)(?::(\d+))?", url)
    if match:
        host, port = match.group(1), int(match.group(2) or 6379)
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return url if sock.recv(16).startswith(b"+PONG") else None
    except OSError:
        return None


def bench_key(env: Mapping[str, str]) -> str:
    """A key whose limits never refuse, so the limiter runs on every request all the same."""
    return subprocess.run(
        [PYTHON, "-m", "secureig", "keys", "create", "bench", "--rpm", "100000000",
         "--tpm", "1000000000", "--concurrency", "100000"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="per measurement (default 10)")
    parser.add_argument("--repetitions", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="for throughput (default 32)")
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams (default 16)")
    parser.add_argument("--hold", type=int, default=1000, help="slow streams held (default 1000)")
    parser.add_argument("--soak-seconds", type=int, default=600, help="soak length (default 600)")
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios (default: all of {', '.join(SCENARIOS)})",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results.json", help="JSON results")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also measure the gateway of this source tree (git worktree add DIR REV)",
    )
    parser.add_argument(
        "--litellm",
        action="store_true",
        help="also measure LiteLLM's proxy, installed from PyPI into bench/.litellm on first use",
    )
    args = parser.parse_args()  # fmt: skip
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    if only - set(SCENARIOS):
        sys.exit(f"unknown scenarios: {', '.join(sorted(only - set(SCENARIOS)))}")
    if shutil.which("wrk") is None:
        sys.exit("make bench needs wrk, the HTTP load generator: apt-get install wrk")

    tmp = Path(tempfile.mkdtemp(prefix="secureig-bench-"))
    backend_port, floor_port = free_port(), free_port()
    gateway_port, redis_gateway_port = free_port(), free_port()
    backend2_port, fleet_port = free_port(), free_port()
    backend = f"http://127.0.0.1:{backend_port}"
    backend2 = f"http://127.0.0.1:{backend2_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECUREIG_")}
    gateway_env = {
        **env,
        "SECUREIG_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
        "SECUREIG_OLLAMA_URL": backend,
        "SECUREIG_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "info"),
        # Room for the held streams: one upstream connection each, all from one address.
        "SECUREIG_UPSTREAM_MAX_CONNECTIONS": str(max(args.hold + 100, 100)),
        "SECUREIG_MAX_CONNECTIONS_PER_CLIENT": str(max(args.hold + 100, 100)),
    }
    key = bench_key(gateway_env)
    litellm = ensure_litellm() if args.litellm else None
    litellm_port = free_port()
    litellm_url = f"http://127.0.0.1:{litellm_port}"
    litellm_config = tmp / "litellm.yaml"
    litellm_config.write_text(LITELLM_CONFIG.format(backend=backend))
    baseline_env: dict[str, str] | None = None
    baseline_key = ""
    if args.baseline:
        source = args.baseline.resolve() / "src"
        if not (source / "secureig").is_dir():
            sys.exit(f"--baseline {args.baseline}: no src/secureig there")
        # Its own code (first on the path) and its own store, migrated by its own code.
        baseline_env = {**gateway_env, "PYTHONPATH": str(source),
                        "SECUREIG_DATABASE_URL": f"sqlite:///{tmp / 'baseline.db'}"}  # fmt: skip
        baseline_key = bench_key(baseline_env)
    baseline_port = free_port()
    baseline_url = f"http://127.0.0.1:{baseline_port}"
    redis = redis_url()
    if redis is None:
        print("Redis does not answer: the Redis row is left out", file=sys.stderr)
    redis_env = {**gateway_env, "SECUREIG_REDIS_URL": redis or "",
                 "SECUREIG_REDIS_PREFIX": f"secureig-bench-{uuid.uuid4().hex[:8]}:"}  # fmt: skip

    # The same gateway in front of two backends: the router's choice on every request.
    fleet_env = {**gateway_env, "SECUREIG_OLLAMA_URL": f"{backend},{backend2}",
                 "SECUREIG_DATABASE_URL": f"sqlite:///{tmp / 'fleet.db'}"}  # fmt: skip
    fleet_key = bench_key(fleet_env)
    fleet_url = f"http://127.0.0.1:{fleet_port}"
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    redis_gateway_url = f"http://127.0.0.1:{redis_gateway_port}"
    generate = {"model": "llama2", "prompt": "hello there", "stream": False}
    chat = {"model": "llama2", "messages": [{"role": "user", "content": "hello"}]}
    seed = {"model": "llama2", "request": "hello there"}
    targets = [
        Target("direct", f"{backend}/api/generate", generate, None),
        Target("floor", f"http://127.0.0.1:{floor_port}/api/generate", generate, FLOOR_KEY),
        Target("gateway /api/generate", f"{gateway_url}/api/generate", generate, key),
        Target("gateway /v1/chat/completions", f"{gateway_url}/v1/chat/completions", chat, key),
        Target("gateway /request", f"{gateway_url}/request", seed, key),
        Target("fleet2 /api/generate", f"{fleet_url}/api/generate", generate, fleet_key),
    ]
    if baseline_env is not None:
        targets += [
            Target("baseline /api/generate", f"{baseline_url}/api/generate", generate,
                   baseline_key),
            Target("baseline /v1/chat/completions", f"{baseline_url}/v1/chat/completions", chat,
                   baseline_key),
            Target("baseline /request", f"{baseline_url}/request", seed, baseline_key),
        ]  # fmt: skip
    if redis:
        targets.append(
            Target(
                "gateway+redis /api/generate", f"{redis_gateway_url}/api/generate", generate, key
            )
        )
    stream_chat = {**chat, "model": "paced", "stream": True}
    stream_targets = [
        Target("direct /api/chat", f"{backend}/api/chat", stream_chat, None),
        Target("gateway /api/chat", f"{gateway_url}/api/chat", stream_chat, key),
        Target("gateway /v1/chat/completions", f"{gateway_url}/v1/chat/completions",
               stream_chat, key),
    ]  # fmt: skip
    if litellm:
        litellm_route = f"{litellm_url}/v1/chat/completions"
        litellm_key = f"Bearer {LITELLM_KEY}"
        targets.append(Target("litellm /v1/chat/completions", litellm_route, chat, litellm_key))
        stream_targets.append(
            Target("litellm /v1/chat/completions", litellm_route, stream_chat, litellm_key)
        )
    results: dict[tuple[str, str], Result] = {}
    extra: dict[str, object] = {}
    wrk_scenarios = [(n, c) for n, c in (("throughput", args.connections), ("latency", 1))
                     if n in only]  # fmt: skip
    backend_command = [
        PYTHON,
        str(BENCH / "fast_ollama.py"),
        "--port",
        str(backend_port),
        "--chunks",
        "8",
        "--gap",
        "0.02",
        "--slow-chunks",
        "30",
        "--slow-gap",
        "1",
    ]
    backend2_command = [*backend_command]
    backend2_command[backend2_command.index("--port") + 1] = str(backend2_port)
    with (
        process(pinned(1, backend_command), env, tmp / "backend.log"),
        process(pinned(1, backend2_command), env, tmp / "backend2.log"),
        process(pinned(0, [PYTHON, "-m", "secureig", "serve", "--port", str(fleet_port)]),
                fleet_env, tmp / "fleet.log") as fleet,
        process(pinned(0, [PYTHON, "-m", "secureig", "serve", "--port", str(gateway_port)]),
                gateway_env, tmp / "gateway.log") as gateway,
        process(pinned(0, [PYTHON, "-m", "secureig", "serve", "--port",
                           str(redis_gateway_port)]) if redis else ["true"],
                redis_env, tmp / "gateway-redis.log") as redis_gateway,
        process(pinned(0, [PYTHON, "-m", "secureig", "serve", "--port", str(baseline_port)])
                if baseline_env is not None else ["true"],
                baseline_env or env, tmp / "baseline.log") as baseline,
        process(pinned(0, [PYTHON, str(BENCH / "floor.py"), "--port", str(floor_port)]),
                {**env, "BACKEND": backend, "FLOOR_KEY": FLOOR_KEY}, tmp / "floor.log"),
        process(pinned(0, [litellm, "--config", str(litellm_config), "--port",
                           str(litellm_port), "--num_workers", "1"]) if litellm else ["true"],
                {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
                tmp / "litellm.log") as litellm_proxy,
    ):  # fmt: skip
        for url in (backend + "/api/tags", backend2 + "/api/tags", gateway_url + "/healthz",
                    fleet_url + "/healthz", f"http://127.0.0.1:{floor_port}/docs"):  # fmt: skip
            wait_up(url)
        if redis:
            wait_up(redis_gateway_url + "/healthz")
        if baseline_env is not None:
            wait_up(baseline_url + "/healthz")
        if litellm:
            wait_up(litellm_url + "/health/liveliness", timeout=180)
        pids = {"gateway": gateway.pid, "gateway+redis": redis_gateway.pid,
                "litellm": litellm_proxy.pid, "baseline": baseline.pid,
                "fleet2": fleet.pid}  # fmt: skip
        for target in targets:  # warm every path once: connection pools, model discovery
            run_wrk(target, 4, 1, tmp)
        rss_idle = rss_mb(gateway.pid)
        for round_ in range(args.repetitions):
            for scenario, connections in wrk_scenarios:
                for target in targets:
                    pid = pids.get(target.name.split(" ")[0])
                    cpu_before = cpu_seconds(pid) if pid else 0.0
                    sample, total = run_wrk(target, connections, args.seconds, tmp)
                    if pid and total:
                        cpu = cpu_seconds(pid) - cpu_before
                        sample.cpu_ms_per_request = cpu / total * 1000
                    results.setdefault((scenario, target.name), Result(scenario, target.name))
                    results[(scenario, target.name)].samples.append(sample)
                    print(f"round {round_ + 1} {scenario:10} {target.name:30} "
                          f"{sample.requests_per_s:9.0f} req/s  p50 {sample.p50_ms:7.3f} ms  "
                          f"p99 {sample.p99_ms:7.3f} ms", file=sys.stderr)  # fmt: skip
            if "streaming" in only:
                for target in stream_targets:
                    got = client("streams", target.url, target.body, target.key,
                                 "--streams", str(args.streams), "--seconds", str(args.seconds),
                                 timeout=args.seconds + 60)  # fmt: skip
                    extra.setdefault(f"streaming {target.name}", []).append(got)  # type: ignore[attr-defined]
                    print(f"round {round_ + 1} streaming  {target.name:30} {got}", file=sys.stderr)
            if "flood" in only:
                for flood_rate in (0, 1000):
                    cpu_before = cpu_seconds(gateway.pid)
                    got = client("flood", f"{gateway_url}/api/generate", generate, key,
                                 "--rate", "100", "--flood-rate", str(flood_rate),
                                 "--seconds", str(args.seconds),
                                 timeout=args.seconds + 60)  # fmt: skip
                    got["gateway_cpu_s"] = cpu_seconds(gateway.pid) - cpu_before
                    extra.setdefault(f"flood {flood_rate}", []).append(got)  # type: ignore[attr-defined]
                    print(f"round {round_ + 1} flood {flood_rate:5}/s {got}", file=sys.stderr)
        if "memory" in only:
            extra["memory"] = hold_streams(gateway.pid, gateway_url, key, args.hold)
            print(f"memory {extra['memory']}", file=sys.stderr)
        if "soak" in only and args.soak_seconds > 0:
            extra["soak"] = soak(gateway.pid, gateway_url, key, args.soak_seconds, tmp)
            print(f"soak {extra['soak']}", file=sys.stderr)
        extra["rss_idle_mb"] = rss_idle
        usage_rows = subprocess.run(
            [PYTHON, "-m", "secureig", "usage", "--since", "1h"], env=gateway_env,
            capture_output=True, text=True,
        ).stdout  # fmt: skip

    if redis:
        forget_redis_keys(redis, redis_env["SECUREIG_REDIS_PREFIX"])
    report(results, extra, args, usage_rows)
    shutil.rmtree(tmp, ignore_errors=True)


def forget_redis_keys(url: str, prefix: str) -> None:
    """Leave the user's Redis as it was: the bench's limit counters and leases go."""
    import asyncio

    from secureig.policy.resp import RedisClient

    async def forget() -> None:
        client = RedisClient(url)
        cursor = b"0"
        while True:
            cursor, keys = await client.call("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 1000)
            if keys:
                await client.call("DEL", *keys)
            if cursor == b"0":
                break
        await client.aclose()

    asyncio.run(forget())


LITELLM_KEY = "sk-bench-master"
LITELLM_CONFIG = """model_list:
  - model_name: llama2
    litellm_params:
      model: ollama_chat/llama2
      api_base: {backend}
  - model_name: paced
    litellm_params:
      model: ollama_chat/paced
      api_base: {backend}
general_settings:
  master_key: sk-bench-master
"""


def ensure_litellm() -> str:
    """LiteLLM's proxy in a virtual environment of its own, so it never touches the project's."""
    venv = BENCH / ".litellm"
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        print("installing LiteLLM's proxy into bench/.litellm (once)", file=sys.stderr)
        subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"],
                       check=True)  # fmt: skip
    return str(exe)


def hold_streams(pid: int, url: str, key: str, count: int) -> dict[str, object]:
    """RSS before, while `count` slow streams are open through the gateway, and after."""
    before = rss_mb(pid)
    body = {"model": "slow", "messages": [{"role": "user", "content": "hello"}], "stream": True}
    command = pinned(1, [PYTHON, str(BENCH / "clients.py"), "hold", f"{url}/api/chat",
                         json.dumps(body), "--key", key, "--streams", str(count),
                         "--seconds", "120"])  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        begun = json.loads(proc.stdout.readline())
        during = rss_mb(pid)
        peak = during
        # Sample while the streams run: the peak is what a host must provision.
        while proc.poll() is None:
            peak = max(peak, rss_mb(pid))
            line = proc.stdout.readline()
            if line:
                ended = json.loads(line)
                break
        else:
            ended = {}
        proc.wait(timeout=150)
    time.sleep(2)
    return {"streams": count, "begun": begun.get("begun"), "completed": ended.get("complete"),
            "rss_before_mb": before, "rss_all_open_mb": during, "rss_peak_mb": peak,
            "rss_after_mb": rss_mb(pid)}  # fmt: skip


SOAK_LUA = """
local bodies = {
  {"/api/generate", '{"model":"llama2","prompt":"hello there","stream":false}'},
  {"/v1/chat/completions", '{"model":"llama2","messages":[{"role":"user","content":"hi"}]}'},
  {"/request", '{"model":"llama2","request":"hello there"}'},
  {"/api/chat", '{"model":"llama2","messages":[{"role":"user","content":"hi"}]}'},
}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-KEY"] = "%s"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, bodies[i][1], nil, bodies[i][2])
end
"""


def soak(pid: int, url: str, key: str, seconds: int, tmp: Path) -> dict[str, object]:
    """Mixed traffic (three routes answered whole, one streamed) for `seconds`, RSS sampled."""
    script = tmp / "soak.lua"
    script.write_text(SOAK_LUA % key)
    samples: list[tuple[float, float]] = []
    before = rss_mb(pid)
    stop = threading.Event()

    def sample() -> None:
        started = time.monotonic()
        while not stop.wait(10):
            samples.append((time.monotonic() - started, rss_mb(pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    command = pinned(1, ["wrk", "-t1", "-c16", f"-d{seconds}s", "-s", str(script), url])
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout
    stop.set()
    sampler.join()
    time.sleep(2)
    after = rss_mb(pid)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    # Growth is judged from the first sample on: the first seconds fill caches once.
    first = samples[0][1] if samples else before
    return {"seconds": seconds, "requests": int(total.group(1)) if total else 0,
            "errors": int(errors.group(1)) if errors else 0, "rss_before_mb": before,
            "rss_first_sample_mb": first, "rss_peak_mb": max((r for _, r in samples), default=0),
            "rss_after_mb": after, "growth_pct": (after / first - 1) * 100 if first else None,
            "samples": samples}  # fmt: skip


def _median(rows: object, name: str) -> float | None:
    values = [r[name] for r in rows if isinstance(r, dict) and r.get(name) is not None]  # type: ignore[attr-defined]
    return statistics.median(values) if values else None


def report(
    results: dict[tuple[str, str], Result],
    extra: dict[str, object],
    args: argparse.Namespace,
    usage: str,
) -> None:
    def med(scenario: str, target: str, name: str) -> float:
        result = results.get((scenario, target))
        return result.median(name) if result else float("nan")

    lines = [
        f"secureig benchmark: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; medians of {args.repetitions} interleaved runs of "
        f"{args.seconds} s; wrk, {args.connections} connections for throughput, 1 for latency",
    ]
    if results:
        lines += [
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
        lines += ["", f"errors (non-2xx, timeouts) in the wrk runs: {errors}"]
        compared = [t.removeprefix("baseline ") for t in dict.fromkeys(t for _, t in results)
                    if t.startswith("baseline ")]  # fmt: skip
        if compared:
            lines += ["", "this tree against the baseline, the same route, medians:"]
        for route in compared:
            mine, theirs = f"gateway {route}", f"baseline {route}"
            rate = med("throughput", mine, "requests_per_s") / med(
                "throughput", theirs, "requests_per_s"
            )
            p50 = med("latency", mine, "p50_ms") - med("latency", theirs, "p50_ms")
            lines.append(f"  {route:28} throughput {rate:5.2f}x  p50 @1 {p50:+.3f} ms")
    streaming = {k.removeprefix("streaming "): v for k, v in extra.items()
                 if k.startswith("streaming ")}  # fmt: skip
    if streaming:
        lines += ["", f"streaming, {args.streams} concurrent streams of 8 chunks 20 ms apart:",
                  f"{'target':30} {'TTFB p50':>9} {'+ vs direct':>12} {'TTFB p99':>9} "
                  f"{'gap p50':>8} {'gap p99':>8} {'pieces':>7}"]  # fmt: skip
        direct_ttfb = _median(streaming.get("direct /api/chat"), "ttfb_p50_ms") or 0.0
        for name, rows in streaming.items():
            ttfb = _median(rows, "ttfb_p50_ms") or float("nan")
            lines.append(
                f"{name:30} {ttfb:9.2f} {ttfb - direct_ttfb:+12.2f} "
                f"{_median(rows, 'ttfb_p99_ms') or float('nan'):9.2f} "
                f"{_median(rows, 'gap_p50_ms') or float('nan'):8.2f} "
                f"{_median(rows, 'gap_p99_ms') or float('nan'):8.2f} "
                f"{_median(rows, 'pieces_per_stream') or float('nan'):7.1f}"
            )
    if "flood 0" in extra and "flood 1000" in extra:
        quiet, loud = extra["flood 0"], extra["flood 1000"]
        quiet_p50 = _median(quiet, "real_p50_ms") or float("nan")
        loud_p50 = _median(loud, "real_p50_ms") or float("nan")
        flood_rate = _median(loud, "flood_per_s") or 0.0
        extra_cpu = (_median(loud, "gateway_cpu_s") or 0.0) - (
            _median(quiet, "gateway_cpu_s") or 0.0
        )
        per_refusal = extra_cpu / (flood_rate * args.seconds) * 1000 if flood_rate else float("nan")
        statuses = loud[-1].get("flood_statuses") if isinstance(loud, list) and loud else {}
        lines += ["", "invalid-key flood at 10x the real traffic (real 100 req/s, flood 1,000):",
                  f"  real p50 without flood {quiet_p50:.3f} ms, with flood {loud_p50:.3f} ms "
                  f"({loud_p50 / quiet_p50:.2f}x); flood answered {flood_rate:.0f}/s "
                  f"(statuses {statuses});",
                  f"  gateway CPU per refusal {per_refusal:.3f} ms"]  # fmt: skip
    memory = extra.get("memory")
    if isinstance(memory, dict):
        lines += ["", f"{memory['streams']} slow streams held open: RSS "
                  f"{memory['rss_before_mb']:.0f} MiB before, "
                  f"{memory['rss_all_open_mb']:.0f} MiB with all open (peak "
                  f"{memory['rss_peak_mb']:.0f}), {memory['rss_after_mb']:.0f} MiB after; "
                  f"{memory['begun']} began, {memory['completed']} completed"]  # fmt: skip
    soaked = extra.get("soak")
    if isinstance(soaked, dict):
        growth = soaked["growth_pct"]
        lines += ["", f"soak {soaked['seconds']} s, {soaked['requests']} requests "
                  f"({soaked['errors']} errors): RSS {soaked['rss_before_mb']:.0f} MiB before, "
                  f"{soaked['rss_first_sample_mb']:.0f} at 10 s, peak {soaked['rss_peak_mb']:.0f}, "
                  f"{soaked['rss_after_mb']:.0f} after; growth from 10 s to the end "
                  f"{growth:+.1f}%" if growth is not None else "soak: no samples"]  # fmt: skip
    print("\n".join(lines))
    data = {
        "machine": {"arch": platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "settings": {"seconds": args.seconds, "repetitions": args.repetitions,
                     "connections": args.connections, "streams": args.streams,
                     "hold": args.hold, "soak_seconds": args.soak_seconds},
        "results": [
            {"scenario": r.scenario, "target": r.target,
             "samples": [asdict(s) for s in r.samples],
             "median_requests_per_s": r.median("requests_per_s"),
             "median_p50_ms": r.median("p50_ms"), "median_p99_ms": r.median("p99_ms")}
            for r in results.values()
        ],
        "other": extra,
        "usage_records": usage,
    }  # fmt: skip
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nresults written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
