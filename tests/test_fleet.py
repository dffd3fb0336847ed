"""Several backends behind one gateway: the catalogue, routing by where the model is warm, caps,
fair waiting, failover before the first byte, management on a fleet, and what operators see.

Three Ollama stand-ins with different models play the fleet; every request goes through a real
`secureig serve` process.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Deployment, fleet_deployment, wait_until
from tests.standin import OllamaStandIn

ADMIN = {"X-API-KEY": "admin"}


@pytest.fixture(scope="module")
def trio() -> Iterator[tuple[OllamaStandIn, OllamaStandIn, OllamaStandIn]]:
    servers = (OllamaStandIn(), OllamaStandIn(), OllamaStandIn())
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def gpus(
    trio: tuple[OllamaStandIn, OllamaStandIn, OllamaStandIn],
) -> Iterator[tuple[OllamaStandIn, OllamaStandIn, OllamaStandIn]]:
    """gpu1 serves llama2 and mistral, gpu2 llama2 and qwen3, gpu3 the embedding model only."""
    for server in trio:
        if not server.running:
            server.start()
        server.reset()
    _only(trio[0], "llama2:latest", "mistral:7b")
    _only(trio[1], "llama2:latest", "qwen3:latest")
    _only(trio[2], "nomic-embed-text:latest")
    yield trio
    for server in trio:
        if not server.running:
            server.start()
        server.reset()


def _only(server: OllamaStandIn, *names: str) -> None:
    for name in list(server.models):
        if name not in names:
            server.remove_model(name)


@pytest.fixture
def fleet_of(tmp_path: Path) -> Iterator[Any]:
    made: list[Deployment] = []

    def make(backends: list[dict[str, Any]], **top: Any) -> Deployment:
        # A stream left hanging by a test must not hold the gateway's shutdown for long.
        top.setdefault("shutdown_grace", 1)
        path = tmp_path / f"dep{len(made)}"
        path.mkdir()
        dep = fleet_deployment(path, backends, **top)
        made.append(dep)
        return dep

    yield make
    for dep in made:
        dep.close()


def _backends(*servers: OllamaStandIn, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": f"gpu{i}", "url": s.url, **extra} for i, s in enumerate(servers, 1)]


def _generate(url: str, prompt: str, key: str = "admin", **body: Any) -> httpx.Response:
    return httpx.post(
        url + "/api/generate",
        json={"model": "llama2", "prompt": prompt, "stream": False, **body},
        headers={"X-API-KEY": key},
        timeout=30,
    )


def _prompts(server: OllamaStandIn, path: str = "/api/generate") -> list[str]:
    return [str((r.json or {}).get("prompt")) for r in server.requests_to(path)]


# ---- configuration --------------------------------------------------------------------------


def test_the_catalogue_is_the_union_listed_once_and_filtered_by_key(gpus, fleet_of) -> None:
    dep = fleet_of(_backends(*gpus), health_interval=0.3)
    key = dep.cli.create_key("limited", "--models", "qwen3")
    gateway = dep.gateway()
    tags = httpx.get(gateway.url + "/api/tags", headers=ADMIN).json()["models"]
    names = [m["name"] for m in tags]
    assert sorted(names) == [
        "llama2:latest", "mistral:7b", "nomic-embed-text:latest", "qwen3:latest"
    ]  # fmt: skip
    assert len(names) == len(set(names))  # llama2 is on two backends, listed once
    limited = httpx.get(gateway.url + "/api/tags", headers={"X-API-KEY": key}).json()["models"]
    assert [m["name"] for m in limited] == ["qwen3:latest"]
    v1 = httpx.get(gateway.url + "/v1/models", headers={"X-API-KEY": key}).json()["data"]
    assert [m["id"] for m in v1] == ["qwen3:latest"]
    # Each model is served where it lives.
    assert _generate(gateway.url, "to qwen", model="qwen3").status_code == 200
    assert _prompts(gpus[1]) == ["to qwen"] and not _prompts(gpus[0])
    embed = httpx.post(
        gateway.url + "/api/embed", json={"model": "nomic-embed-text", "input": "x"},
        headers=ADMIN, timeout=30,
    )  # fmt: skip
    assert embed.status_code == 200 and len(gpus[2].requests_to("/api/embed")) == 1


def test_readyz_and_the_startup_log_name_every_backend(gpus, fleet_of) -> None:
    dep = fleet_of(_backends(*gpus), health_interval=0.3)
    gateway = dep.gateway()
    ready = httpx.get(gateway.url + "/readyz").json()
    assert ready["backends"] == {"gpu1": "up", "gpu2": "up", "gpu3": "up"}
    for i in (1, 2, 3):
        assert f"backend gpu{i} (ollama, {gpus[i - 1].url}): up" in gateway.log()
    gpus[2].stop()
    assert wait_until(
        lambda: httpx.get(gateway.url + "/readyz").json()["backends"]["gpu3"] == "down", timeout=5
    )
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200  # readiness is the store's and draining's, not a backend's
    assert gpus[2].url.split("//")[1] not in ready.text  # names, never addresses
    assert "backend gpu3 is down" in gateway.log()
    gpus[2].start()
    assert wait_until(
        lambda: httpx.get(gateway.url + "/readyz").json()["backends"]["gpu3"] == "up", timeout=5
    )
    assert "backend gpu3 is up with 1 models" in gateway.log()


def test_comma_separated_urls_are_one_backend_each(gpus, tmp_path: Path) -> None:
    dep = Deployment(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}", f"{gpus[0].url},{gpus[1].url}")
    try:
        gateway = dep.gateway()
        ready = httpx.get(gateway.url + "/readyz").json()
        assert ready["backends"] == {"ollama-1": "up", "ollama-2": "up"}
        assert _generate(gateway.url, "q", model="qwen3").status_code == 200
        assert _prompts(gpus[1]) == ["q"]
        check = dep.cli("check")
        assert "backend   ok    ollama-1 (ollama, " in check.stdout
        assert "backend   ok    ollama-2 (ollama, " in check.stdout
        models = dep.cli("models").stdout.splitlines()
        assert "llama2:latest\tollama-1, ollama-2" in models and "qwen3:latest\tollama-2" in models
    finally:
        dep.close()


def test_both_ways_of_naming_backends_at_once_is_a_startup_error(gpus, fleet_of) -> None:
    dep = fleet_of(_backends(gpus[0]))
    dep.env["SECUREIG_OLLAMA_URL"] = gpus[1].url
    result = dep.cli("check", check=False)
    assert result.returncode == 2
    assert "both ollama_url" in result.stderr and "[[backends]]" in result.stderr
    gateway = dep.gateway(wait=False)
    assert gateway.process is not None and gateway.process.wait(timeout=30) == 2
    assert "give the backends one way, not both" in gateway.log()


@pytest.mark.parametrize(
    ("backends", "fragment"),
    [
        (
            [
                {"name": "a", "url": "http://127.0.0.1:1"},
                {"name": "a", "url": "http://127.0.0.1:2"},
            ],
            "backend names must be unique: a repeated",
        ),
        ([{"name": "bad name", "url": "http://127.0.0.1:1"}], "a backend name is 1 to 64"),
        ([{"name": "a", "url": "ftp://127.0.0.1:1"}], "is not an http:// or https:// URL"),
        ([{"name": "a", "url": "http://127.0.0.1:1", "kind": "vllm"}], "kind"),
        ([{"name": "a", "url": "http://127.0.0.1:1", "max_concurrency": 0}], "max_concurrency"),
        ([{"name": "a", "url": "http://127.0.0.1:1", "weight": -1}], "weight"),
        ([{"name": "a", "url": "http://u:pw@127.0.0.1:1", "api_key": "k"}], "one or the other"),
        ([{"name": "a", "url": "http://127.0.0.1:1", "colour": "red"}], "colour"),
    ],
)
def test_a_bad_backend_table_is_refused_with_what_is_wrong(
    fleet_of, backends: list[dict[str, Any]], fragment: str
) -> None:
    dep = fleet_of(backends)
    result = dep.cli("check", check=False)
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
    assert "pw" not in result.stderr


# ---- routing ----------------------------------------------------------------------------------


def test_a_request_goes_where_the_model_is_already_loaded(gpus, fleet_of) -> None:
    dep = fleet_of(_backends(gpus[0], gpus[1]), health_interval=0.2)
    gateway = dep.gateway()
    # Load llama2 on gpu2 behind the gateway's back; its next health check sees it in /api/ps.
    assert (
        httpx.post(
            gpus[1].url + "/api/generate", json={"model": "llama2", "prompt": "", "stream": False}
        ).status_code
        == 200
    )
    assert wait_until(lambda: _loaded(gateway, "gpu2") == ["llama2:latest"], timeout=5)
    for i in range(4):
        assert _generate(gateway.url, f"warm {i}").status_code == 200
    assert _prompts(gpus[1])[-4:] == ["warm 0", "warm 1", "warm 2", "warm 3"]
    assert not _prompts(gpus[0])


def test_a_backend_serves_only_the_models_its_settings_allow(gpus, fleet_of) -> None:
    """A hostile backend that lists llama2 and says it is loaded there for good took every
    llama2 prompt meant for the real one; `models` in its table keeps it to what it is for."""
    rogue = gpus[1]
    backends = [{"name": "gpu1", "url": gpus[0].url},
                {"name": "rogue", "url": rogue.url, "models": ["qwen3*"]}]  # fmt: skip
    dep = fleet_of(backends, health_interval=0.2)
    gateway = dep.gateway()
    forever = {"model": "llama2", "prompt": "", "stream": False, "keep_alive": -1}
    assert httpx.post(rogue.url + "/api/generate", json=forever).status_code == 200
    assert wait_until(lambda: "rogue lists 1 models outside its models setting" in gateway.log())
    assert "llama2:latest" in gateway.log()
    assert _loaded(gateway, "rogue") == []  # what it may not serve, it is not warm for
    for i in range(4):
        assert _generate(gateway.url, f"meant for gpu1 {i}").status_code == 200
    assert _prompts(gpus[0])[-4:] == [f"meant for gpu1 {i}" for i in range(4)]
    assert _prompts(rogue) == [""]  # the load above, asked of it directly
    # What it may serve still goes to it.
    assert _generate(gateway.url, "qwen", model="qwen3").status_code == 200
    assert _prompts(rogue) == ["", "qwen"]


def test_a_backend_table_with_a_bad_model_pattern_stops_the_start(gpus, fleet_of) -> None:
    backends = [{"name": "gpu1", "url": gpus[0].url, "models": ["llama2", "bad name!"]}]
    gateway = fleet_of(backends).gateway(wait=False)
    assert gateway.process is not None and gateway.process.wait(timeout=30) == 2
    assert "'bad name!' is not a model name or pattern" in gateway.log()


def _loaded(gateway: Any, name: str) -> list[str]:
    for report in httpx.get(gateway.url + "/admin/backends", headers=ADMIN).json():
        if report["name"] == name:
            return [m["name"] for m in report["loaded"]]
    raise AssertionError(name)


def test_equally_warm_backends_share_the_load(gpus, fleet_of) -> None:
    for server in gpus[:2]:
        server.chunk_delay = 0.05
    dep = fleet_of(_backends(gpus[0], gpus[1]), health_interval=0.2)
    gateway = dep.gateway()
    # Both warm first: were they cold, the first answer would make its backend the warm one,
    # and a slow machine's staggered threads would all follow it there.
    for server in gpus[:2]:
        load = {"model": "llama2", "prompt": "", "stream": False}
        assert httpx.post(server.url + "/api/generate", json=load).status_code == 200
    for name in ("gpu1", "gpu2"):
        assert wait_until(lambda n=name: _loaded(gateway, n) == ["llama2:latest"], timeout=5)
    answers: list[int] = []

    def one(i: int) -> None:
        answers.append(_generate(gateway.url, f"p{i}", stream=True).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert answers == [200] * 8
    # Least busy first: concurrent requests spread over both, none is left idle.
    served = [[p for p in _prompts(server) if p.startswith("p")] for server in gpus[:2]]
    assert len(served[0]) >= 2 and len(served[1]) >= 2 and len(served[0] + served[1]) == 8


def test_the_per_backend_cap_is_exact_and_the_rest_wait(gpus, fleet_of) -> None:
    server = gpus[0]
    server.chunk_delay = 0.1
    dep = fleet_of([{"name": "gpu1", "url": server.url, "max_concurrency": 2}])
    gateway = dep.gateway()
    statuses: list[int] = []

    def one(i: int) -> None:
        statuses.append(_generate(gateway.url, f"c{i}", stream=True).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    assert wait_until(lambda: _report(gateway, "gpu1")["queued"] > 0, timeout=5)
    for t in threads:
        t.join(timeout=60)
    assert statuses == [200] * 10
    assert server.peak_active == 2  # never three in flight
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'secureig_backend_queue_wait_seconds_count{backend="gpu1"}' in metrics
    assert 'secureig_backend_in_flight{backend="gpu1"} 0.0' in metrics


def _report(gateway: Any, name: str) -> dict[str, Any]:
    for report in httpx.get(gateway.url + "/admin/backends", headers=ADMIN).json():
        if report["name"] == name:
            return dict(report)
    raise AssertionError(name)


def test_keys_take_turns_so_one_keys_burst_does_not_starve_another(gpus, fleet_of) -> None:
    server = gpus[0]
    dep = fleet_of([{"name": "gpu1", "url": server.url, "max_concurrency": 1}])
    bursty = dep.cli.create_key("bursty")
    other = dep.cli.create_key("other")
    gateway = dep.gateway()
    # The one place is held until the test lets go, so the queue forms with nothing leaving it.
    server.fail = "hang"
    holder = _hold(gateway.url, bursty)
    assert wait_until(lambda: server.active == 1, timeout=5)
    server.fail = None
    threads = [
        threading.Thread(target=_generate, args=(gateway.url, f"burst {i}", bursty))
        for i in range(20)
    ]
    for t in threads:
        t.start()
    assert wait_until(lambda: _report(gateway, "gpu1")["queued"] == 20, timeout=10)
    single = threading.Thread(target=_generate, args=(gateway.url, "single", other))
    single.start()
    assert wait_until(lambda: _report(gateway, "gpu1")["queued"] == 21, timeout=10)
    holder.close()  # the place frees up: the burst's turn, then the other key's
    for t in [*threads, single]:
        t.join(timeout=60)
    order = _prompts(server)
    assert len(order) == 22 and order[0] == "held"
    assert order.index("single") == 2, order  # not 21st, behind the whole burst


def _hold(url: str, key: str) -> socket.socket:
    """A streamed request on a raw connection, so the test decides when the client leaves."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": "llama2", "prompt": "held"}).encode()
    conn = socket.create_connection((host, int(port)), timeout=10)
    conn.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-KEY: " + key.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )  # fmt: skip
    return conn


def test_a_queue_timeout_is_a_503_with_retry_after_in_each_surfaces_shape(gpus, fleet_of) -> None:
    server = gpus[0]
    server.fail = "hang"
    dep = fleet_of([{"name": "gpu1", "url": server.url, "max_concurrency": 1}], queue_timeout=0.5)
    gateway = dep.gateway()
    holder = threading.Thread(target=_swallow, args=(gateway.url,), daemon=True)
    holder.start()
    assert wait_until(lambda: server.active == 1, timeout=5)
    native = _generate(gateway.url, "waits")
    assert native.status_code == 503 and native.headers["retry-after"] == "1"
    assert "at its limit of concurrent requests" in native.json()["error"]
    assert "none freed up within 0.5s" in native.json()["error"]
    openai = httpx.post(
        gateway.url + "/v1/chat/completions", headers=ADMIN, timeout=30,
        json={"model": "llama2", "messages": [{"role": "user", "content": "hi"}]},
    )  # fmt: skip
    assert openai.status_code == 503 and openai.headers["retry-after"] == "1"
    assert openai.json()["error"]["type"] == "api_error"
    seed = httpx.post(
        gateway.url + "/request", json={"model": "llama2", "request": "hi"}, headers=ADMIN
    )
    assert seed.status_code == 503 and seed.text.startswith("Upstream busy: every backend")
    assert server.active == 1  # none of them reached the backend


def _swallow(url: str, headers: dict[str, str] | None = None) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(
            url + "/api/generate", headers={**ADMIN, **(headers or {})}, timeout=60,
            json={"model": "llama2", "prompt": "holds the slot"},
        )  # fmt: skip


def test_queue_timeout_zero_refuses_at_once(gpus, fleet_of) -> None:
    server = gpus[0]
    server.fail = "hang"
    dep = fleet_of([{"name": "gpu1", "url": server.url, "max_concurrency": 1}], queue_timeout=0)
    gateway = dep.gateway()
    threading.Thread(target=_swallow, args=(gateway.url,), daemon=True).start()
    assert wait_until(lambda: server.active == 1, timeout=5)
    refused = _generate(gateway.url, "refused")
    assert refused.status_code == 503 and "requests do not queue" in refused.json()["error"]


def test_one_key_cannot_fill_the_queue_for_everyone(gpus, fleet_of) -> None:
    server = gpus[0]
    dep = fleet_of(
        [{"name": "gpu1", "url": server.url, "max_concurrency": 1}], max_queued_per_key=2
    )
    greedy = dep.cli.create_key("greedy")
    other = dep.cli.create_key("other")
    gateway = dep.gateway()
    server.fail = "hang"
    holder = _hold(gateway.url, greedy)
    assert wait_until(lambda: server.active == 1, timeout=5)
    server.fail = None
    waiting = [
        threading.Thread(target=_generate, args=(gateway.url, f"w{i}", greedy)) for i in range(2)
    ]
    for t in waiting:
        t.start()
    assert wait_until(lambda: _report(gateway, "gpu1")["queued"] == 2, timeout=10)
    refused = _generate(gateway.url, "one too many", greedy)
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert "this key has 2 requests waiting" in refused.json()["error"]
    served = threading.Thread(target=_generate, args=(gateway.url, "still queues", other))
    served.start()
    assert wait_until(lambda: _report(gateway, "gpu1")["queued"] == 3, timeout=10)
    holder.close()
    for t in [*waiting, served]:
        t.join(timeout=60)
    assert "still queues" in _prompts(server) and "one too many" not in _prompts(server)


def test_a_client_that_leaves_the_queue_is_never_sent(gpus, fleet_of) -> None:
    server = gpus[0]
    server.chunk_delay = 0.3
    server.reply = lambda prompt: ["a", "b", "c", "d"]
    dep = fleet_of([{"name": "gpu1", "url": server.url, "max_concurrency": 1}])
    gateway = dep.gateway()
    holder = threading.Thread(target=_generate, args=(gateway.url, "first"))
    holder.start()
    assert wait_until(lambda: server.active == 1, timeout=5)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gateway.url + "/api/generate", headers=ADMIN, timeout=0.4,
            json={"model": "llama2", "prompt": "gave up", "stream": False},
        )  # fmt: skip
    assert wait_until(lambda: _report(gateway, "gpu1")["queued"] == 0, timeout=5)
    holder.join(timeout=30)
    assert _generate(gateway.url, "third").status_code == 200
    assert "gave up" not in _prompts(server) and _prompts(server)[-1] == "third"


def test_a_conversation_stays_on_the_backend_that_served_it(gpus, fleet_of) -> None:
    dep = fleet_of(_backends(gpus[0], gpus[1]), health_interval=0.2)
    gateway = dep.gateway()
    first = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    answer = _chat(gateway.url, first)
    assert answer.status_code == 200
    served = 0 if gpus[0].requests_to("/api/chat") else 1
    other = 1 - served
    # Make the other backend everyone else's choice: as warm, and idle, while the conversation's
    # backend holds a long stream.
    assert (
        httpx.post(
            gpus[other].url + "/api/generate",
            json={"model": "llama2", "prompt": "", "stream": False},
        ).status_code
        == 200
    )
    assert wait_until(lambda: _loaded(gateway, f"gpu{other + 1}") == ["llama2:latest"])
    gpus[served].fail = "hang"
    pin = {"X-Secureig-Backend": f"gpu{served + 1}"}
    threading.Thread(target=_swallow, args=(gateway.url, pin), daemon=True).start()
    assert wait_until(lambda: gpus[served].active == 1, timeout=5)
    gpus[served].fail = None
    turn = [*first, answer.json()["message"], {"role": "user", "content": "and then?"}]
    assert _chat(gateway.url, turn).status_code == 200
    assert len(gpus[served].requests_to("/api/chat")) == 2
    # A new conversation goes to the least busy backend, as any request does.
    assert _chat(gateway.url, [{"role": "user", "content": "new"}]).status_code == 200
    assert len(gpus[other].requests_to("/api/chat")) == 1


def _chat(url: str, messages: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(
        url + "/api/chat", headers=ADMIN, timeout=30,
        json={"model": "llama2", "messages": messages, "stream": False},
    )  # fmt: skip


# ---- failover ---------------------------------------------------------------------------------


def test_a_busy_backend_fails_over_before_the_first_byte_and_is_skipped_a_while(
    gpus, fleet_of
) -> None:
    dep = fleet_of(_backends(gpus[0], gpus[1]), health_interval=0.2)
    gateway = dep.gateway()
    gpus[0].fail = "busy"  # 503 "server busy": its queue is full
    gpus[1].fail = None
    # gpu1 is first in order: the request tries it, then gpu2 answers, once.
    answer = _generate(gateway.url, "retried")
    assert answer.status_code == 200
    assert _prompts(gpus[0]) == ["retried"] and _prompts(gpus[1]) == ["retried"]
    # Skipped for a short cooldown: the next request goes straight to gpu2.
    assert _generate(gateway.url, "next").status_code == 200
    assert _prompts(gpus[0]) == ["retried"] and _prompts(gpus[1])[-1] == "next"
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'secureig_backend_failovers_total{backend="gpu1"} 1.0' in metrics


def test_a_killed_backend_is_marked_down_at_once_and_requests_go_elsewhere(gpus, fleet_of) -> None:
    dep = fleet_of(_backends(gpus[0], gpus[1]), health_interval=60)
    gateway = dep.gateway()
    gpus[0].stop()
    for i in range(3):
        assert _generate(gateway.url, f"after {i}").status_code == 200
    assert _prompts(gpus[1]) == ["after 0", "after 1", "after 2"]
    assert httpx.get(gateway.url + "/readyz").json()["backends"]["gpu1"] == "down"
    report = _report(gateway, "gpu1")
    assert report["state"] == "down" and "unreachable" in report["why"]
    assert report["failovers"] == 1  # tried once; then known down, never tried again


def test_a_backend_killed_mid_stream_ends_the_stream_and_is_not_retried(gpus, fleet_of) -> None:
    gpus[0].fail = "midstream"
    gpus[0].fail_after = 2
    dep = fleet_of(_backends(gpus[0], gpus[1]))
    gateway = dep.gateway()
    with httpx.stream(
        "POST", gateway.url + "/api/generate", headers=ADMIN, timeout=30,
        json={"model": "llama2", "prompt": "cut"},
    ) as response:  # fmt: skip
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert response.status_code == 200 and "error" in lines[-1]
    assert not _prompts(gpus[1])  # after the first byte, never retried


def test_when_every_backend_for_a_model_is_down_the_answer_says_so(gpus, fleet_of) -> None:
    dep = fleet_of(_backends(gpus[0], gpus[1]), health_interval=60)
    gateway = dep.gateway()
    gpus[0].stop()
    gpus[1].stop()
    native = _generate(gateway.url, "nobody")
    assert native.status_code == 502
    assert "every backend serving model 'llama2' is down" in native.json()["error"]
    assert "gpu1: upstream is unreachable" in native.json()["error"]
    openai = httpx.post(
        gateway.url + "/v1/chat/completions", headers=ADMIN, timeout=30,
        json={"model": "llama2", "messages": [{"role": "user", "content": "hi"}]},
    )  # fmt: skip
    assert openai.status_code == 502 and openai.json()["error"]["type"] == "api_error"


def test_all_candidates_busy_is_a_503_that_says_so(gpus, fleet_of) -> None:
    dep = fleet_of(_backends(gpus[0], gpus[1]))
    gateway = dep.gateway()
    gpus[0].fail = gpus[1].fail = "busy"
    answer = _generate(gateway.url, "busy everywhere")
    assert answer.status_code == 503
    assert _prompts(gpus[0]) == ["busy everywhere"] and _prompts(gpus[1]) == ["busy everywhere"]


# ---- management -------------------------------------------------------------------------------


def test_management_names_its_backend_and_is_never_retried(gpus, fleet_of) -> None:
    dep = fleet_of(_backends(gpus[0], gpus[1]))
    gateway = dep.gateway()
    pull = {"model": "phi3:mini", "stream": False}
    # Several backends and no header: which one is for the operator to say.
    vague = httpx.post(gateway.url + "/api/pull", json=pull, headers=ADMIN, timeout=30)
    assert vague.status_code == 400
    assert "X-Secureig-Backend" in vague.json()["error"] and "gpu1, gpu2" in vague.json()["error"]
    unknown = httpx.post(
        gateway.url + "/api/pull", json=pull, headers={**ADMIN, "X-Secureig-Backend": "gpu9"}
    )
    assert unknown.status_code == 400 and "the backends are gpu1, gpu2" in unknown.json()["error"]
    pinned = httpx.post(
        gateway.url + "/api/pull", json=pull, headers={**ADMIN, "X-Secureig-Backend": "gpu2"},
        timeout=30,
    )  # fmt: skip
    assert pinned.status_code == 200, pinned.text
    assert gpus[1].find_model("phi3:mini") and not gpus[0].find_model("phi3:mini")
    assert not gpus[0].requests_to("/api/pull")
    # The catalogue learns of it at once: phi3 is served, by gpu2 only.
    assert wait_until(lambda: _generate(gateway.url, "p", model="phi3:mini").status_code == 200)
    assert _prompts(gpus[1])[-1] == "p"
    # A backend that cannot be reached: 502, and the other backend never sees the request.
    gpus[0].stop()
    failed = httpx.request(
        "DELETE", gateway.url + "/api/delete", json={"model": "mistral:7b"},
        headers={**ADMIN, "X-Secureig-Backend": "gpu1"}, timeout=30,
    )  # fmt: skip
    assert failed.status_code == 502
    assert not gpus[1].requests_to("/api/delete")


def test_choosing_a_backend_needs_the_manage_scope(gpus, fleet_of) -> None:
    dep = fleet_of(_backends(gpus[0], gpus[1]))
    key = dep.cli.create_key("user")
    gateway = dep.gateway()
    answer = httpx.post(
        gateway.url + "/api/generate", timeout=30,
        headers={"X-API-KEY": key, "X-Secureig-Backend": "gpu2"},
        json={"model": "llama2", "prompt": "pinned", "stream": False},
    )  # fmt: skip
    assert answer.status_code == 403 and "manage" in answer.json()["error"]
    # An admin may pin inference too, to look at one backend.
    pinned = httpx.post(
        gateway.url + "/api/generate", timeout=30, headers={**ADMIN, "X-Secureig-Backend": "gpu2"},
        json={"model": "llama2", "prompt": "pinned", "stream": False},
    )  # fmt: skip
    assert pinned.status_code == 200 and _prompts(gpus[1]) == ["pinned"]


def test_ps_shows_what_is_loaded_across_the_fleet(gpus, fleet_of) -> None:
    dep = fleet_of(_backends(*gpus))
    gateway = dep.gateway()
    for model, pin in (("mistral:7b", "gpu1"), ("qwen3", "gpu2")):
        assert httpx.post(
            gateway.url + "/api/generate", timeout=30,
            headers={**ADMIN, "X-Secureig-Backend": pin},
            json={"model": model, "prompt": "load", "stream": False},
        ).status_code == 200  # fmt: skip
    ps = httpx.get(gateway.url + "/api/ps", headers=ADMIN).json()["models"]
    assert sorted(m["name"] for m in ps) == ["mistral:7b", "qwen3:latest"]


def test_a_backends_own_key_is_sent_and_the_clients_never(gpus, fleet_of) -> None:
    dep = fleet_of([{"name": "gpu1", "url": gpus[0].url, "api_key": "backend-secret-1"}])
    key = dep.cli.create_key("client")
    gateway = dep.gateway()
    assert _generate(gateway.url, "with key", key).status_code == 200
    sent = gpus[0].requests_to("/api/generate")[-1]
    assert sent.header("Authorization") == "Bearer backend-secret-1"
    assert key not in json.dumps(sent.header_items())
    outputs = [
        httpx.get(gateway.url + "/admin/backends", headers=ADMIN).text,
        httpx.get(gateway.url + "/readyz").text, httpx.get(gateway.url + "/metrics").text,
        dep.cli("backends", "--key", "admin").stdout, dep.cli("check", check=False).stdout,
    ]  # fmt: skip
    gateway.stop()
    outputs.append(gateway.log())
    assert not [o for o in outputs if "backend-secret-1" in o]


# ---- what operators see --------------------------------------------------------------------------


def test_usage_metrics_and_the_backends_command_carry_the_backend(gpus, fleet_of) -> None:
    dep = fleet_of(_backends(gpus[0], gpus[1]), health_interval=0.2)
    gateway = dep.gateway()
    assert _generate(gateway.url, "m", model="mistral:7b").status_code == 200
    assert _generate(gateway.url, "q", model="qwen3").status_code == 200
    assert _generate(gateway.url, "q2", model="qwen3").status_code == 200
    db = dep.tmp / "keys.db"

    def backends() -> list[str]:
        with sqlite3.connect(db) as connection:
            rows = connection.execute("SELECT backend FROM usage_records ORDER BY at").fetchall()
        return [r[0] for r in rows]

    assert wait_until(lambda: len(backends()) == 3, timeout=5)
    assert backends() == ["gpu1", "gpu2", "gpu2"]
    by = httpx.get(gateway.url + "/admin/usage?by=backend", headers=ADMIN).json()
    assert {row["group"]: row["requests"] for row in by} == {"gpu1": 1, "gpu2": 2}
    table = dep.cli("usage", "--by", "backend").stdout
    assert "gpu1" in table and "gpu2" in table
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'secureig_backend_requests_total{backend="gpu2"} 2.0' in metrics
    assert 'secureig_backend_up{backend="gpu1"} 1.0' in metrics
    assert wait_until(
        lambda: (
            'secureig_backend_loaded_models{backend="gpu2"} 1.0'
            in httpx.get(gateway.url + "/metrics").text
        )
    )
    shown = dep.cli("backends", "--key", "admin", "--gateway", gateway.url)
    live = shown.stdout
    assert f"as the gateway at {gateway.url} sees them" in shown.stderr
    assert f"gpu2  ollama  {gpus[1].url}  up  in flight 0  queued 0" in live
    assert "loaded: qwen3:latest" in live
    probed = dep.cli("backends")
    assert "asked each backend" in probed.stderr
    assert f"gpu1  ollama  {gpus[0].url}  up" in probed.stdout
    gpus[0].stop()
    down = dep.cli("backends").stdout
    assert "gpu1  ollama" in down and "down (upstream is unreachable" in down


def test_the_routing_decision_survives_many_requests_without_leaking_slots(gpus, fleet_of) -> None:
    dep = fleet_of(_backends(gpus[0], gpus[1], max_concurrency=3))
    gateway = dep.gateway()
    gpus[0].fail = "busy"
    with httpx.Client(timeout=30, headers=ADMIN) as client:
        for i in range(40):
            body = {"model": "llama2", "prompt": f"n{i}", "stream": False}
            assert client.post(gateway.url + "/api/generate", json=body).status_code == 200
    for name in ("gpu1", "gpu2"):
        report = _report(gateway, name)
        assert report["in_flight"] == 0 and report["queued"] == 0
