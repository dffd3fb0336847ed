"""Faults: a hostile backend, slow clients, a stalled Redis or database. Each test reproduces the
fault against a real gateway process and checks what the client sees and what the gateway kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Deployment, wait_until
from tests.hostile import MODEL, Behaviour, HostileBackend

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileBackend]:
    server = HostileBackend()
    server.start()
    yield server
    server.stop()


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
