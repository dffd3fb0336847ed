"""Faults: a hostile backend, slow clients, a stalled Redis or database. Each test reproduces the
fault against a real gateway process and checks what the client sees and what the gateway kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Deployment, Gateway, connect_from, wait_until
from tests.hostile import MODEL, Behaviour, HostileBackend
from tests.servers import OwnPostgres
from tests.standin import OllamaStandIn

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def bad_backend(
    tmp_path_factory: pytest.TempPathFactory, hostile: HostileBackend
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("hostile")
    dep = Deployment(tmp, f"sqlite:///{tmp / 'keys.db'}", hostile.url)
    dep.gateway(max_line_bytes=str(MIB), max_answer_bytes=str(2 * MIB))
    yield dep
    dep.close()


def _chat(url: str, stream: bool, timeout: float = 60.0) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(url + "/api/chat", json=body, headers={"X-API-KEY": "admin"}, timeout=timeout)


def test_a_line_without_end_is_cut_at_the_line_limit(
    bad_backend: Deployment, hostile: HostileBackend
) -> None:
    hostile.reset(Behaviour("long-line", total=256 * MIB))
    gateway = bad_backend.gateways[0]
    answer = _chat(gateway.url, stream=True)
    assert answer.status_code == 502
    assert answer.json() == {
        "error": f"upstream sent a line longer than {MIB} bytes, more than the gateway accepts"
    }
    # The gateway stopped reading at the limit: what the backend got out is the limit plus what
    # the sockets between them buffer, not the 256 MiB it meant to send.
    assert hostile.sent < 16 * MIB
    assert wait_until(lambda: f"model={MODEL} status=502" in gateway.log())


def test_a_long_line_after_good_ones_ends_the_stream_with_an_error_line(
    bad_backend: Deployment, hostile: HostileBackend
) -> None:
    gateway = bad_backend.gateways[0]
    hostile.reset(Behaviour("lines", total=3))
    good = _chat(gateway.url, stream=True)
    lines = [json.loads(line) for line in good.text.splitlines()]
    assert [line.get("done") for line in lines] == [None, None, None, True]

    # Three good lines, then one that never ends: the client keeps what it had and is told why.
    hostile.reset(Behaviour("long-line", total=64 * MIB, good_lines=3))
    cut = _chat(gateway.url, stream=True)
    assert cut.status_code == 200
    lines = [json.loads(line) for line in cut.text.splitlines()]
    assert [line["message"]["content"] for line in lines[:3]] == ["t0 ", "t1 ", "t2 "]
    assert lines[3] == {
        "error": f"upstream sent a line longer than {MIB} bytes, more than the gateway accepts"
    }
    assert len(lines) == 4
    assert hostile.sent < 16 * MIB
    assert wait_until(lambda: "outcome=upstream-failed-mid-stream" in gateway.log())
    # The record says so too, and charges the three lines forwarded.
    assert wait_until(lambda: "upstream-failed-mid-stream" in _usage_by(bad_backend, "outcome"))
    row = _usage_by(bad_backend, "outcome")["upstream-failed-mid-stream"]
    assert row[:3] == ["1", "0", "1"] and row[4] == "3"


def test_an_answer_held_whole_is_refused_beyond_the_answer_limit(
    bad_backend: Deployment, hostile: HostileBackend
) -> None:
    gateway = bad_backend.gateways[0]
    hostile.reset(Behaviour("huge-answer", total=256 * MIB))
    answer = _chat(gateway.url, stream=False)
    assert answer.status_code == 502
    assert answer.json() == {
        "error": f"upstream sent an answer larger than {2 * MIB} bytes,"
        " more than the gateway accepts"
    }
    assert hostile.sent < 16 * MIB


@pytest.mark.parametrize("stream", [True, False])
def test_openai_and_seed_surfaces_share_the_limits(
    bad_backend: Deployment, hostile: HostileBackend, stream: bool
) -> None:
    gateway = bad_backend.gateways[0]
    headers = {"Authorization": "Bearer admin"}
    hostile.reset(Behaviour("long-line", total=256 * MIB))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    url = gateway.url + "/v1/chat/completions"
    answer = httpx.post(url, json=body, headers=headers, timeout=60)
    assert answer.status_code == 502
    assert "more than the gateway accepts" in answer.json()["error"]["message"]
    assert hostile.sent < 16 * MIB

    hostile.reset(Behaviour("long-line", total=256 * MIB))
    seed = gateway.post({"model": MODEL, "request": "hi", "stream": stream}, timeout=60)
    assert seed.status_code == 502
    assert hostile.sent < 16 * MIB


def test_limits_are_settings(tmp_path: Path, hostile: HostileBackend) -> None:
    dep = Deployment(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}", hostile.url)
    try:
        bad = dep.gateway(max_line_bytes="12", wait=False)
        assert bad.process is not None
        assert bad.process.wait(timeout=30) != 0
        assert "max_line_bytes" in bad.log()
        assert "greater than or equal to 1024" in bad.log()
    finally:
        dep.close()


# -- slow clients and connection floods ------------------------------------------------------


def _refused_with(sock: socket.socket) -> bytes:
    """What the gateway said before closing, or b"" if it still holds the connection open."""
    sock.settimeout(0.5)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return b""
    except ConnectionResetError:
        return b"reset"


def _open_files(gateway: Gateway) -> int:
    assert gateway.process is not None
    return len(os.listdir(f"/proc/{gateway.process.pid}/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc to count descriptors")
def test_one_address_cannot_hold_every_connection(deployment: Deployment) -> None:
    gateway = deployment.gateway(
        max_connections="60", max_connections_per_client="20", header_timeout="60"
    )
    before = _open_files(gateway)
    held = [connect_from(gateway, "127.0.0.2") for _ in range(20)]
    flood = [connect_from(gateway, "127.0.0.2") for _ in range(200)]
    try:
        assert all(_refused_with(sock) == b"" for sock in held[:3])
        answers = [_refused_with(sock) for sock in flood]
        assert all(a.startswith(b"HTTP/1.1 503 Service Unavailable") for a in answers[:50])
        assert b"this address holds its most connections (20)" in answers[0]
        # Refused connections are closed as they open: the descriptors are not kept.
        assert _open_files(gateway) < before + 20 + 20
        # Another address is served meanwhile.
        ok = httpx.get(gateway.url + "/api/version", headers={"X-API-KEY": "admin"}, timeout=5)
        assert ok.status_code == 200
        metrics = httpx.get(gateway.url + "/metrics", timeout=5).text
        assert 'secureig_connections_refused_total{reason="per-client"} 200.0' in metrics
    finally:
        for sock in held + flood:
            sock.close()
    assert wait_until(lambda: "(SECUREIG_MAX_CONNECTIONS_PER_CLIENT)" in gateway.log())


def test_the_total_cap_refuses_and_readyz_says_so(deployment: Deployment) -> None:
    gateway = deployment.gateway(
        max_connections="30", max_connections_per_client="10", reserved_connections="0",
        header_timeout="60",
    )  # fmt: skip
    held = [connect_from(gateway, f"127.0.0.{3 + i // 10}") for i in range(29)]
    try:
        # The 30th connection is the last there is room for: readiness says the gateway is full.
        ready = httpx.get(gateway.url + "/readyz", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["connections"] == "exhausted"
        time.sleep(0.2)  # that connection closes; another takes its place
        held.append(connect_from(gateway, "127.0.0.6"))
        extra = connect_from(gateway, "127.0.0.9")
        answer = _refused_with(extra)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503")
        assert b"the gateway holds its most connections (30)" in answer
    finally:
        for sock in held:
            sock.close()
    assert wait_until(lambda: httpx.get(gateway.url + "/readyz", timeout=5).status_code == 200, 15)
    assert httpx.get(gateway.url + "/readyz", timeout=5).json()["connections"] == "ok"


def test_descriptor_limit_lowers_the_cap_at_start(deployment: Deployment) -> None:
    # 1,000 open files, 100 upstream connections and 256 more kept back: 644 clients fit.
    gateway = deployment.gateway(
        open_files=1000, max_connections_per_client="300", reserved_connections="0"
    )
    assert (
        "SECUREIG_MAX_CONNECTIONS lowered from 4096 to 644: the process may open 1000 files"
        in gateway.log()
    )
    held = [connect_from(gateway, f"127.0.1.{i // 300}") for i in range(644)]
    try:
        extra = connect_from(gateway, "127.0.2.1")
        assert b"the gateway holds its most connections (644)" in _refused_with(extra)
        extra.close()
    finally:
        for sock in held:
            sock.close()


def _slow_post(
    gateway: Gateway, path: str, body: bytes, piece: int, pace: float, key: str = "admin"
) -> bytes:
    """POST `body` a `piece` of bytes every `pace` seconds; what the gateway answered."""
    sock = connect_from(gateway, "127.0.0.5")
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-KEY: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    answer = b""
    try:
        for start in range(0, len(body), piece):
            sock.sendall(body[start : start + piece])
            if select.select([sock], [], [], pace)[0]:
                break  # answered before the body was whole
        sock.settimeout(10)
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b"connection: close" not in answer.lower():
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    return answer


def test_a_body_that_trickles_in_is_cut(deployment: Deployment, standin: OllamaStandIn) -> None:
    gateway = deployment.gateway(body_timeout="1", body_min_rate="50")
    body = json.dumps({"model": "llama2", "prompt": "x" * 400, "stream": False}).encode()
    seen = len(standin.requests)
    # Ten bytes a second, under the 50 asked for: refused within a window or two.
    answer = _slow_post(gateway, "/api/generate", body, piece=1, pace=0.1)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer[:200]
    assert b"slower than 50 bytes a second over 1 seconds" in answer
    assert len(standin.requests) == seen  # nothing reached the upstream
    assert wait_until(lambda: "its request body came slower than 50 bytes" in gateway.log())

    # The same body at a steady pace above the rate is served.
    served = _slow_post(gateway, "/api/generate", body, piece=20, pace=0.1)
    assert served.startswith(b"HTTP/1.1 200"), served[:200]


def test_a_slow_blob_upload_is_cut(deployment: Deployment, standin: OllamaStandIn) -> None:
    gateway = deployment.gateway(body_timeout="1", body_min_rate="50")
    digest = "sha256:" + "a" * 64
    answer = _slow_post(gateway, f"/api/blobs/{digest}", b"z" * 2000, piece=1, pace=0.1)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


# -- shutdown and how requests ended ---------------------------------------------------------


def _usage_by(dep: Deployment, by: str) -> dict[str, list[str]]:
    lines = dep.cli("usage", "--by", by).stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(by.upper()))
    return {line.split()[0]: line.split()[1:] for line in lines[header + 1 :] if line.strip()}


def test_sigterm_with_a_hung_database_ends_and_spools_the_records(
    tmp_path: Path, standin: OllamaStandIn, own_postgres: OwnPostgres
) -> None:
    dep = Deployment(tmp_path, own_postgres.url, standin.url)
    spool = tmp_path / "usage.spool"

    def start() -> Gateway:
        return dep.gateway(
            usage_flush_interval="60", shutdown_grace="1", shutdown_flush_timeout="2",
            usage_spool=str(spool),
        )  # fmt: skip

    key = dep.cli.create_key("app")
    gateway = start()
    for i in range(20):
        answer = httpx.post(
            gateway.url + "/api/generate",
            json={"model": "llama2", "prompt": f"n{i}", "stream": False},
            headers={"X-API-KEY": key},
            timeout=10,
        )
        assert answer.status_code == 200
    own_postgres.pause()
    try:
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        # The process ends while the database is still stopped (it waited for it before).
        gateway.process.wait(timeout=60)
        log = gateway.log()
        assert "20 usage records spooled to" in log, log[-3000:]
        records = [json.loads(line) for line in spool.read_text().splitlines()]
        assert len(records) == 20
        assert {r["key_name"] for r in records} == {"app"}
        assert {r["outcome"] for r in records} == {"completed"}
    finally:
        own_postgres.resume()

    # The next start writes them, once.
    again = start()
    assert wait_until(lambda: "wrote 20 records held from before" in again.log())
    assert not spool.exists()
    assert _usage_by(dep, "key")["app"][0] == "20"
    dep.close()


def test_usage_records_say_how_each_request_ended(
    deployment: Deployment, standin: OllamaStandIn
) -> None:
    key = deployment.cli.create_key("app")
    gateway = deployment.gateway(shutdown_grace="1")
    standin.chunk_delay = 0.2
    standin.reply = lambda prompt: [f" w{i}" for i in range(100)]  # 20 s of stream
    body = {"model": "llama2", "prompt": "go", "stream": True}
    headers = {"X-API-KEY": key}

    # One the client leaves after a few lines.
    with httpx.stream(
        "POST", gateway.url + "/api/generate", json=body, headers=headers, timeout=10
    ) as answer:
        lines = answer.iter_lines()
        for _ in range(3):
            next(lines)

    # One still streaming when SIGTERM's grace runs out.
    got_first = threading.Event()

    def stream_until_cut() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream(
                "POST", gateway.url + "/api/generate", json=body, headers=headers, timeout=30
            ) as cut,
        ):
            for _ in cut.iter_lines():
                got_first.set()

    reader = threading.Thread(target=stream_until_cut)
    reader.start()
    assert got_first.wait(10)
    assert wait_until(lambda: "status=499" in gateway.log())
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGTERM)
    gateway.process.wait(timeout=30)
    reader.join(10)

    # REQUESTS, ERRORS, INCOMPLETE: a client that left is a 499; the cut stream's status was 200.
    outcomes = _usage_by(deployment, "outcome")
    assert outcomes["client-disconnected"][:3] == ["1", "1", "1"]
    assert outcomes["cut-by-shutdown"][:3] == ["1", "0", "1"]
    # Both were charged what they forwarded.
    assert all(int(row[4]) > 0 for row in outcomes.values())
    report = deployment.cli("usage", "--by", "key")
    assert "--by outcome tells them apart" in report.stderr
