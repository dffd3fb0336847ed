"""The red team's findings, a regression test each; every one of them failed before its fix.

Tests are numbered by finding: 1 model globs reaching registry hosts, 2 create's remote fields
and unknown fields, 3 budgets dodged by disconnecting, 4 the Host check, 5 the request head's
size and time, 6 the bootstrap key's return, 7 keep_alive values that unload, 8 unbounded
client strings, 9 URL credentials shown, 10 out-of-range admin input.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Deployment, wait_until
from tests.standin import OllamaStandIn

CHAT = {"model": "llama2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def _h(key: str) -> dict[str, str]:
    return {"X-API-KEY": key}


def _paths(standin: OllamaStandIn, since: int) -> list[str]:
    return [r.path for r in standin.requests[since:] if r.path not in ("/api/tags", "/api/ps")]


@pytest.fixture(scope="module")
def gate(
    tmp_path_factory: pytest.TempPathFactory, standin: OllamaStandIn
) -> Iterator[tuple[Deployment, dict[str, str]]]:
    """One gateway and the keys the findings were reproduced with."""
    tmp = tmp_path_factory.mktemp("security")
    dep = Deployment(tmp, f"sqlite:///{tmp / 'keys.db'}", standin.url)
    keys = {
        "llama": dep.cli.create_key(
            "llama-ops", "--scope", "manage", "--scope", "inference", "--models", "llama2*"
        ),
        "registry": dep.cli.create_key(
            "registry-ops", "--scope", "manage", "--models", "registry.example.com/*/*"
        ),
        "manage": dep.cli.create_key("ops", "--scope", "manage"),
        "inference": dep.cli.create_key("app"),
        "admin": dep.cli.create_key("root", "--scope", "admin"),
    }
    dep.gateway(auth_failures_per_minute="0", health_interval="0.5")
    yield dep, keys
    dep.close()


# -- 1. a model glob also matched registry hosts --------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/pull", {"model": "llama2.attacker.example/x/llama2", "stream": False}),
        ("/api/pull", {"model": "llama2:8080/x/y", "stream": False}),
        ("/api/pull", {"model": "llama2-evil.com:443/x/y", "stream": False}),
        ("/api/copy", {"source": "llama2", "destination": "llama2.attacker.example/loot/llama2"}),
        (
            "/api/push",
            {"model": "llama2.attacker.example/loot/llama2:13b", "insecure": True, "stream": False},
        ),
        ("/api/create", {"model": "llama2.attacker.example/x/y", "from": "llama2"}),
    ],
)
def test_1_a_model_glob_never_reaches_another_registry(
    gate: tuple[Deployment, dict[str, str]],
    standin: OllamaStandIn,
    path: str,
    body: dict[str, Any],
) -> None:
    dep, keys = gate
    before = len(standin.requests)
    response = httpx.post(dep.gateways[0].url + path, json=body, headers=_h(keys["llama"]))
    assert response.status_code == 403, response.text
    assert "may not use model" in response.json()["error"] or body.get("insecure")
    assert _paths(standin, before) == []


def _names(url: str, key: str) -> list[str]:
    listing = httpx.get(url + "/api/tags", headers=_h(key)).json()
    return [m["name"] for m in listing["models"]]


def test_1_a_foreign_model_is_neither_listed_nor_served(
    gate: tuple[Deployment, dict[str, str]], standin: OllamaStandIn
) -> None:
    dep, keys = gate
    url = dep.gateways[0].url
    standin.add_model("llama2.evil.example/library/mistral:latest")
    foreign = "llama2.evil.example/library/mistral:latest"
    assert wait_until(lambda: foreign in _names(url, keys["admin"]))
    for key in ("llama", "inference", "manage"):
        names = _names(url, keys[key])
        assert all(not n.startswith("llama2.evil") for n in names), (key, names)
    models = httpx.get(url + "/v1/models", headers=_h(keys["inference"])).json()["data"]
    assert all(not m["id"].startswith("llama2.evil") for m in models)
    chat = {**CHAT, "model": "llama2.evil.example/library/mistral"}
    before = len(standin.requests)
    for key in ("llama", "inference"):
        refused = httpx.post(url + "/api/chat", json=chat, headers=_h(keys[key]))
        assert refused.status_code == 403, refused.text
    assert _paths(standin, before) == []
    # The same key still serves what its pattern means: llama2 models of the default registry.
    assert httpx.post(url + "/api/chat", json=CHAT, headers=_h(keys["llama"])).status_code == 200


def test_1_other_registries_need_a_pattern_naming_them_and_insecure_needs_admin(
    gate: tuple[Deployment, dict[str, str]], standin: OllamaStandIn
) -> None:
    dep, keys = gate
    url = dep.gateways[0].url + "/api/pull"
    pull = {"model": "registry.example.com/team/model:1", "stream": False}
    assert httpx.post(url, json=pull, headers=_h(keys["manage"])).status_code == 403
    assert httpx.post(url, json=pull, headers=_h(keys["registry"])).status_code == 200
    assert standin.requests_to("/api/pull")[-1].json["model"] == pull["model"]
    before = len(standin.requests)
    insecure = httpx.post(url, json={**pull, "insecure": True}, headers=_h(keys["registry"]))
    assert insecure.status_code == 403
    assert insecure.json()["error"].startswith("field 'insecure' needs a key with the admin scope")
    assert _paths(standin, before) == []
    # insecure: false asks nothing, and is what ollama-python sends by default.
    assert httpx.post(
        url, json={**pull, "insecure": False}, headers=_h(keys["registry"])
    ).is_success
    assert httpx.post(url, json={**pull, "insecure": True}, headers=_h(keys["admin"])).is_success


# -- 2. /api/create forwarded remote_host / remote_model ------------------------------------------


@pytest.mark.parametrize("key", ["manage", "admin"])
@pytest.mark.parametrize(
    "body",
    [
        {"model": "relay", "from": "llama2", "remote_host": "https://ollama.com"},
        {"model": "relay", "from": "llama2", "remote_model": "gpt-oss:120b"},
    ],
)
def test_2_create_never_forwards_a_remote(
    gate: tuple[Deployment, dict[str, str]], standin: OllamaStandIn, key: str, body: dict[str, Any]
) -> None:
    dep, keys = gate
    before = len(standin.requests)
    response = httpx.post(dep.gateways[0].url + "/api/create", json=body, headers=_h(keys[key]))
    assert response.status_code == 403, response.text
    assert "is never forwarded" in response.json()["error"]
    assert _paths(standin, before) == []


@pytest.mark.parametrize("key", ["manage", "admin"])
def test_2_create_from_a_cloud_model_is_refused(
    gate: tuple[Deployment, dict[str, str]], standin: OllamaStandIn, key: str
) -> None:
    dep, keys = gate
    before = len(standin.requests)
    for source in ("gpt-oss:120b-cloud", "deepseek-v3.1:cloud"):
        body = {"model": "relay", "from": source, "stream": False}
        response = httpx.post(dep.gateways[0].url + "/api/create", json=body, headers=_h(keys[key]))
        assert response.status_code == 403, response.text
        assert "cloud model" in response.json()["error"]
    assert _paths(standin, before) == []


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/create", {"model": "x", "from": "llama2", "brand_new_field": 1}, 400),
        ("/api/copy", {"source": "llama2", "destination": "llama2-b", "overwrite": True}, 400),
        ("/api/delete", {"model": "llama2-b", "force": True}, 400),
        ("/api/pull", {"model": "llama2", "username": "u", "password": "p"}, 403),
        ("/api/push", {"model": "llama2", "password": "p"}, 403),
        ("/api/generate", {"model": "llama2", "prompt": "hi", "_debug_render_only": True}, 403),
        ("/api/chat", {**CHAT, "brand_new_field": "x"}, 400),
    ],
)
def test_2_bodies_carry_only_the_fields_the_policy_knows(
    gate: tuple[Deployment, dict[str, str]],
    standin: OllamaStandIn,
    path: str,
    body: dict[str, Any],
    status: int,
) -> None:
    dep, keys = gate
    before = len(standin.requests)
    method = "DELETE" if path == "/api/delete" else "POST"
    response = httpx.request(
        method, dep.gateways[0].url + path, json=body, headers=_h(keys["llama"])
    )
    assert response.status_code == status, response.text
    assert _paths(standin, before) == []


# -- 3. token budgets dodged by disconnecting before the last line --------------------------------


def _cut(url: str, path: str, body: dict[str, Any], key: str, size: int) -> int:
    """Read `size` bytes of a stream, then hang up; the status the stream began with."""
    with httpx.stream("POST", url + path, json=body, headers=_h(key), timeout=30) as response:
        if response.status_code != 200:
            return response.status_code
        got = 0
        for chunk in response.iter_bytes():
            got += len(chunk)
            if got >= size:
                break
    return 200


def _usage_rows(db: Path, key_name: str) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute(
            "SELECT * FROM usage_records WHERE key_name = ? ORDER BY id", (key_name,)
        ).fetchall()


@pytest.mark.parametrize(
    ("path", "body", "size"),
    [
        # About 30 of the 300 pieces: NDJSON lines, SSE events, or the seed's plain text.
        ("/api/chat", {**CHAT, "stream": True}, 30 * 100),
        ("/api/generate", {"model": "llama2", "prompt": "hi"}, 30 * 80),
        ("/v1/chat/completions", {**CHAT, "stream": True}, 30 * 200),
        ("/request", {"model": "llama2", "request": "hi", "stream": True}, 30 * 4),
    ],
)
def test_3_a_cut_stream_is_charged_what_it_was_sent(
    deployment: Deployment, standin: OllamaStandIn, path: str, body: dict[str, Any], size: int
) -> None:
    key = deployment.cli.create_key("budget", "--daily-tokens", "100")
    gateway = deployment.gateway()
    standin.reply = lambda prompt: [f" t{i}" for i in range(300)]
    standin.chunk_delay = 0.005
    statuses = [_cut(gateway.url, path, body, key, size) for _ in range(6)]
    # Each cut stream was charged at least the tokens it was sent (some 30): by the sixth the
    # budget of 100 is spent.
    assert statuses[:2] == [200, 200] and statuses[-1] == 429, statuses
    db = deployment.tmp / "keys.db"
    assert wait_until(lambda: len(_usage_rows(db, "budget")) == 6, timeout=10)
    cut = [r for r in _usage_rows(db, "budget") if r["status"] != 429]
    for row in cut:
        assert row["status"] == 499, dict(row)
        assert row["completion_tokens"] >= 20, dict(row)  # one token a line
        assert row["prompt_tokens"] >= 1 and row["tokens_estimated"] == 1, dict(row)


def test_3_a_whole_answer_keeps_the_upstreams_exact_counts(
    deployment: Deployment, standin: OllamaStandIn
) -> None:
    key = deployment.cli.create_key("exact")
    gateway = deployment.gateway()
    assert httpx.post(gateway.url + "/api/chat", json=CHAT, headers=_h(key)).status_code == 200
    db = deployment.tmp / "keys.db"
    assert wait_until(lambda: len(_usage_rows(db, "exact")) == 1, timeout=10)
    row = _usage_rows(db, "exact")[0]
    assert (row["prompt_tokens"], row["completion_tokens"], row["tokens_estimated"]) == (1, 2, 0)


# -- 4. no Host check: DNS rebinding --------------------------------------------------------------


def test_4_a_foreign_host_is_refused_before_anything_runs(
    deployment: Deployment, standin: OllamaStandIn
) -> None:
    gateway = deployment.gateway()  # loopback, bootstrap key live
    before = len(standin.requests)
    evil = {"Host": "evil.example", "X-API-KEY": "admin"}
    created = httpx.post(gateway.url + "/admin/keys", json={"name": "pwned"}, headers=evil)
    assert created.status_code == 421
    assert created.json() == {"error": "host 'evil.example' is not one this gateway answers for"}
    pull = {"model": "evil.example/x/y", "stream": False}
    assert httpx.post(gateway.url + "/api/pull", json=pull, headers=evil).status_code == 421
    chat = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=evil)
    assert chat.status_code == 421 and chat.json()["error"]["param"] == "host"
    seed = httpx.post(
        gateway.url + "/request", json={"model": "llama2", "request": "hi"}, headers=evil
    )
    assert seed.status_code == 421 and seed.headers["content-type"].startswith("text/plain")
    assert _paths(standin, before) == []
    assert "pwned" not in deployment.cli("keys", "list").stdout
    for host in (f"localhost:{gateway.port}", f"127.0.0.1:{gateway.port}", "LOCALHOST"):
        ok = httpx.get(gateway.url + "/api/version", headers={"Host": host, "X-API-KEY": "admin"})
        assert ok.status_code == 200, host


def _raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def test_4_no_host_or_two_hosts_is_refused(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    two = _raw(
        gateway.port,
        b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n"
        b"X-API-KEY: admin\r\nConnection: close\r\n\r\n",
    )
    assert two.startswith(b"HTTP/1.1 421"), two[:100]
    none = _raw(gateway.port, b"GET /api/version HTTP/1.0\r\nX-API-KEY: admin\r\n\r\n")
    assert none.startswith(b"HTTP/1.1 421"), none[:100]


def test_4_allowed_hosts_is_configurable(deployment: Deployment) -> None:
    gateway = deployment.gateway(allowed_hosts="gw.example.com, *.internal")
    assert "answering for Host: gw.example.com, *.internal" in gateway.log()
    for host, status in (
        ("gw.example.com", 200), ("gw.example.com:8085", 200), ("api.internal", 200),
        ("127.0.0.1", 421), ("internal", 421), ("gw.example.com.evil", 421),
    ):  # fmt: skip
        response = httpx.get(
            gateway.url + "/api/version", headers={"Host": host, "X-API-KEY": "admin"}
        )
        assert response.status_code == status, host


# -- 5. unbounded header size and time before authentication --------------------------------------


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_5_a_request_head_is_bounded_in_size(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    big = httpx.get(gateway.url + "/healthz", headers={"X-Big": "a" * 70_000})
    assert big.status_code == 431
    assert httpx.get(gateway.url + "/healthz", headers={"X-Ok": "a" * 60_000}).status_code == 200
    assert gateway.process is not None
    before = _rss_mib(gateway.process.pid)
    # A never-ending header from a caller with no key: refused at 64 KiB, not held to 128 MiB.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
        sent = 0
        try:
            while sent < 128 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass
        answer = b""
        with contextlib.suppress(OSError):
            answer = sock.recv(200)
    assert sent < 32 * 1024 * 1024, sent
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer
    assert _rss_mib(gateway.process.pid) - before < 20
    assert wait_until(lambda: "refused a request head of more than 65536 bytes" in gateway.log())


def test_5_a_request_head_must_arrive_in_time(deployment: Deployment) -> None:
    gateway = deployment.gateway(header_timeout="1.5")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer = b""
        for _ in range(10):  # a header line a second, never the end of the head
            try:
                sock.sendall(b"X-Slow: 1\r\n")
                sock.settimeout(1.0)
                answer = sock.recv(200)
                if answer:
                    break
            except TimeoutError:
                continue
            except OSError:
                break
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 4
    # A connection that never sends a byte is closed as well.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as idle:
        idle.settimeout(5)
        assert idle.recv(10) == b""
    assert wait_until(lambda: "no whole request head within 1.5s (408)" in gateway.log())
    # Keep-alive requests that come whole are not touched.
    with httpx.Client() as client:
        for _ in range(3):
            assert client.get(gateway.url + "/healthz").status_code == 200
            time.sleep(0.7)


# -- 6. the bootstrap key came back ---------------------------------------------------------------


def test_6_the_bootstrap_key_is_over_once_an_admin_key_existed(deployment: Deployment) -> None:
    gateway = deployment.gateway()
    url = gateway.url + "/admin/keys"
    assert httpx.get(url, headers=_h("admin")).status_code == 200
    created = httpx.post(url, json={"name": "ops", "scopes": ["admin"]}, headers=_h("admin"))
    ops = created.json()["secret"]
    assert wait_until(lambda: httpx.get(url, headers=_h("admin")).status_code == 401)
    # The only admin key revokes itself: the bootstrap key stays over.
    assert httpx.delete(url + "/ops", headers=_h(ops)).status_code == 200
    time.sleep(2.5)
    assert httpx.get(url, headers=_h("admin")).status_code == 401
    assert "bootstrap key retired for good" in gateway.log()
    # The store remembers, for every later server too.
    gateway.stop()
    again = deployment.gateway()
    assert httpx.get(again.url + "/admin/keys", headers=_h("admin")).status_code == 401
    assert "bootstrap key: inactive" in again.log()
    check = deployment.cli("check", check=False).stdout
    assert "bootstrap key is retired for good" in check


def test_6_an_expired_admin_key_does_not_bring_it_back(deployment: Deployment) -> None:
    deployment.cli.create_key("brief", "--scope", "admin", "--expires-in", "2s")
    gateway = deployment.gateway(admin_key="container-chosen-secret")
    time.sleep(3)
    for secret in ("admin", "container-chosen-secret"):
        assert httpx.get(gateway.url + "/admin/keys", headers=_h(secret)).status_code == 401


# -- 7. tiny keep_alive values unloaded a model ---------------------------------------------------


def _loaded(url: str, admin: str) -> list[str]:
    return [m["name"] for m in httpx.get(url + "/api/ps", headers=_h(admin)).json()["models"]]


@pytest.mark.parametrize("value", [0, "0", -0.0, "-0", 1e-10, "0.5ns", "1ns", "0.0000001s", 1e30])
def test_7_a_keep_alive_ollama_reads_as_an_unload_never_unloads(
    gate: tuple[Deployment, dict[str, str]], standin: OllamaStandIn, value: object
) -> None:
    dep, keys = gate
    url = dep.gateways[0].url
    gen = {"model": "llama2", "prompt": "hi", "stream": False}
    assert httpx.post(url + "/api/generate", json=gen, headers=_h(keys["admin"])).is_success
    assert "llama2:latest" in _loaded(url, keys["admin"])
    asked = {**gen, "keep_alive": value}
    assert httpx.post(url + "/api/generate", json=asked, headers=_h(keys["inference"])).is_success
    assert "llama2:latest" in _loaded(url, keys["admin"]), value
    unload = httpx.post(
        url + "/api/generate", json={"model": "llama2", "keep_alive": value},
        headers=_h(keys["inference"]),
    )  # fmt: skip
    assert unload.status_code in (200, 403), unload.text
    if unload.status_code == 200:  # raised to the minimum: a load, not an unload
        assert unload.json()["done_reason"] == "load"
    assert "llama2:latest" in _loaded(url, keys["admin"]), value


# -- 8. client-chosen strings were unbounded in logs and usage rows ------------------------------


def test_8_a_huge_model_name_is_refused_before_it_is_logged(deployment: Deployment) -> None:
    key = deployment.cli.create_key("huge")
    gateway = deployment.gateway()
    huge = "m" * 5_000_000
    size = gateway.log_path.stat().st_size
    answers = [
        httpx.post(gateway.url + "/api/generate", json={"model": huge, "prompt": "x"},
                   headers=_h(key)),
        httpx.post(gateway.url + "/v1/chat/completions", json={**CHAT, "model": huge},
                   headers=_h(key)),
        httpx.post(gateway.url + "/request", json={"model": huge, "request": "x"},
                   headers=_h(key)),
        httpx.get(gateway.url + "/v1/models/" + "m" * 60_000, headers=_h(key)),
    ]  # fmt: skip
    assert [a.status_code for a in answers] == [400, 400, 403, 400], [a.text[:200] for a in answers]
    assert all(len(a.content) < 1000 for a in answers)
    gateway.stop()
    assert gateway.log_path.stat().st_size - size < 20_000
    db = deployment.tmp / "keys.db"
    rows = _usage_rows(db, "huge")
    assert len(rows) == 4 and all(r["model"] is None for r in rows), [r["model"] for r in rows]


# -- 9. /readyz showed the upstream URL, credentials included -------------------------------------


def test_9_upstream_credentials_are_used_and_never_shown(
    tmp_path: Path, standin: OllamaStandIn
) -> None:
    upstream = standin.url.replace("http://", "http://ops:s3cretpw@")
    dep = Deployment(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}", upstream)
    try:
        gateway = dep.gateway()
        ready = httpx.get(gateway.url + "/readyz")
        assert ready.status_code == 200 and ready.json()["backends"] == {"ollama": "up"}
        models = httpx.get(gateway.url + "/admin/models", headers=_h("admin")).json()
        assert models["backends"] == {"ollama": sorted(standin.models)}
        backends = httpx.get(gateway.url + "/admin/backends", headers=_h("admin")).json()
        assert backends[0]["url"] == standin.url.replace("http://", "http://***@")
        assert httpx.post(gateway.url + "/api/chat", json=CHAT, headers=_h("admin")).is_success
        # The credentials are the upstream's own: sent to it as Basic auth, shown nowhere.
        assert standin.requests_to("/api/chat")[-1].header("Authorization") == (
            "Basic b3BzOnMzY3JldHB3"
        )
        outputs = [
            ready.text, json.dumps(models), json.dumps(backends),
            dep.cli("check", check=False).stdout, dep.cli("models").stderr,
            dep.cli("backends", "--key", "admin").stdout, httpx.get(gateway.url + "/metrics").text,
        ]  # fmt: skip
        gateway.stop()
        outputs.append(gateway.log())
        with sqlite3.connect(tmp_path / "keys.db") as connection:
            outputs.append(repr(connection.execute("SELECT backend FROM usage_records").fetchall()))
        for text in outputs:
            assert "s3cretpw" not in text
    finally:
        dep.close()


# -- 10. out-of-range admin input gave 500 or a reset connection --------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "fragment"),
    [
        ("POST", "/admin/keys", {"name": "a", "expires_in": "999999999d"}, "duration"),
        ("POST", "/admin/keys", {"name": "a", "rpm": 1e30}, "rpm"),
        ("POST", "/admin/keys", {"name": "a", "daily_tokens": 10**30}, "daily_tokens"),
        ("POST", "/admin/keys", {"name": "a", "max_num_ctx": -5}, "max_num_ctx"),
        ("POST", "/admin/keys", {"name": "a", "tpm": 2**40}, "tpm"),
        ("POST", "/admin/keys", {"name": "a" * 100_000}, "invalid key name"),
        ("PATCH", "/admin/keys/root", {"concurrency": 10**20}, "concurrency"),
        ("PATCH", "/admin/keys/root", {"expires_in": "99999999999999999999d"}, "duration"),
        ("GET", "/admin/usage?since=99999999999d", None, "duration"),
        ("GET", "/admin/usage?since=" + "9" * 5000 + "d", None, "since"),
    ],
)
def test_10_out_of_range_admin_input_is_a_clear_4xx(
    gate: tuple[Deployment, dict[str, str]],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    fragment: str,
) -> None:
    dep, keys = gate
    response = httpx.request(
        method, dep.gateways[0].url + path, json=body, headers=_h(keys["admin"])
    )
    assert response.status_code == 400, response.text[:300]
    assert fragment in response.json()["error"]
    assert len(response.content) < 2000


def test_10_out_of_range_cli_input_is_a_clear_error(deployment: Deployment) -> None:
    for flags in (["--rpm", "99999999999999"], ["--expires-in", "99999999999d"]):
        result = deployment.cli("keys", "create", "x", *flags, check=False)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
    assert "x " not in deployment.cli("keys", "list").stdout
