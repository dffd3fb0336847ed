"""Who may connect: the listener's allowed networks, keys limited to networks of their own, and
the forwarding headers of trusted proxies (only theirs: a spoofed header from anyone else is
ignored). Every request here comes from 127.0.0.1; forwarding headers stand for the rest."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from secureig.networks import Networks, parse_network
from tests.conftest import Deployment, fleet_deployment, wait_until

GEN = {"model": "llama2", "prompt": "x", "stream": False}


def _gen(url: str, key: str, **headers: str) -> httpx.Response:
    return httpx.post(url + "/api/generate", json=GEN, headers={"X-API-KEY": key, **headers})


def test_an_address_outside_the_allowed_networks_is_refused_at_the_connection(
    deployment: Deployment,
) -> None:
    key = deployment.cli.create_key("anyone")
    outside = deployment.gateway(allowed_networks="10.0.0.0/8,fd00::/8", wait=False)
    inside = deployment.gateway(allowed_networks="10.0.0.0/8, 127.0.0.0/8")
    assert _gen(inside.url, key).status_code == 200

    answers: list[bytes] = []

    def asked() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", outside.port), timeout=5) as raw:
                raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answers.append(raw.recv(4096))
                return True
        except ConnectionRefusedError:
            return False  # not listening yet

    assert wait_until(asked, timeout=30), outside.log()
    assert answers[-1].startswith(b"HTTP/1.1 403 Forbidden"), answers
    assert b"this address may not connect" in answers[-1]
    assert wait_until(lambda: "not in SECUREIG_ALLOWED_NETWORKS" in outside.log(), timeout=3)


def test_a_bad_network_stops_the_start(deployment: Deployment) -> None:
    gateway = deployment.gateway(trusted_proxies="10.0.0.0/8,not-a-network", wait=False)
    assert gateway.process is not None and gateway.process.wait(timeout=30) == 2
    assert "'not-a-network' is not a network" in gateway.log()


def test_only_a_trusted_proxy_names_the_client(deployment: Deployment) -> None:
    key = deployment.cli.create_key("behind-proxy")
    gateway = deployment.gateway(trusted_proxies="127.0.0.1", allowed_networks="10.0.0.0/8")
    url = gateway.url
    # From the proxy, naming a client inside: served.
    assert _gen(url, key, **{"X-Forwarded-For": "10.1.2.3"}).status_code == 200
    # Forwarded is not the header this gateway reads (SECUREIG_FORWARDED_HEADER): ignored.
    assert _gen(url, key, Forwarded='for="10.0.0.5:4711";proto=https').status_code == 403
    # Naming a client outside, or none (the proxy itself is not an allowed client): refused,
    # in the surface's own shape.
    refused = _gen(url, key, **{"X-Forwarded-For": "192.0.2.9"})
    assert refused.status_code == 403
    assert refused.json() == {"error": "this address may not use the gateway"}
    assert _gen(url, key).status_code == 403
    chat = httpx.post(
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}", "Forwarded": 'for="[2001:db8::1]:4711"'},
        json={"model": "llama2", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 403
    assert chat.json()["error"]["message"] == "this address may not use the gateway"
    # A client that writes its own header gains nothing: its proxy's entry is the one read.
    spoofed = _gen(url, key, **{"X-Forwarded-For": "10.9.9.9, 192.0.2.9"})
    assert spoofed.status_code == 403
    # Garbage where an address belongs: nobody can say who it is, so it is nobody allowed.
    assert _gen(url, key, **{"X-Forwarded-For": "10.1.1.1, evil"}).status_code == 403
    # Probes get their answer whatever they forward: the connection itself was checked.
    assert httpx.get(url + "/healthz", headers={"X-Forwarded-For": "192.0.2.9"}).status_code == 200


def test_a_spoofed_header_from_an_untrusted_address_changes_nothing(
    deployment: Deployment,
) -> None:
    """Not a trusted proxy: its headers are ignored, so the failed-auth throttle counts the
    socket's address however the header varies."""
    gateway = deployment.gateway(trusted_proxies="10.0.0.0/8", auth_failures_per_minute="3")
    statuses = [
        _gen(gateway.url, "sig_" + "x" * 43, **{"X-Forwarded-For": f"10.0.0.{i}"}).status_code
        for i in range(5)
    ]
    assert statuses == [401, 401, 401, 429, 429], statuses


def test_a_trusted_proxys_clients_are_throttled_each_on_their_own(
    deployment: Deployment,
) -> None:
    gateway = deployment.gateway(trusted_proxies="127.0.0.1", auth_failures_per_minute="2")
    wrong = "sig_" + "x" * 43
    first = [_gen(gateway.url, wrong, **{"X-Forwarded-For": "10.0.0.1"}).status_code
             for _ in range(3)]  # fmt: skip
    assert first == [401, 401, 429]
    # Another client behind the same proxy is not held to the first one's failures.
    assert _gen(gateway.url, wrong, **{"X-Forwarded-For": "10.0.0.2"}).status_code == 401


def test_a_key_used_outside_its_networks_is_refused_as_invalid(deployment: Deployment) -> None:
    cli = deployment.cli
    created = cli("keys", "create", "office", "--allow-from", "10.0.0.0/8",
                  "--allow-from", "fd00::/8")  # fmt: skip
    office = created.stdout.strip()
    assert "from: 10.0.0.0/8, fd00::/8" in created.stderr
    listing = cli("keys", "list").stdout
    assert "10.0.0.0/8,fd00::/8" in listing
    # Behind trusted proxies the bootstrap key never serves: the admin calls take a real key.
    admin = {"X-API-KEY": cli.create_key("ops", "--scope", "admin")}
    gateway = deployment.gateway(trusted_proxies="127.0.0.1")
    url = gateway.url
    # From 127.0.0.1 itself (no forwarding header): refused exactly as a wrong key is.
    refused = _gen(url, office)
    assert refused.status_code == 401
    assert refused.json() == {"error": "the API key is not valid"}
    assert "key 'office' used from 127.0.0.1, outside the networks" in gateway.log()
    assert office not in gateway.log()
    counted = 'secureig_auth_failures_total{surface="ollama"} 1.0'
    assert wait_until(lambda: counted in httpx.get(url + "/metrics").text, timeout=3)
    # From inside (through the trusted proxy): served.
    assert _gen(url, office, **{"X-Forwarded-For": "10.20.30.40"}).status_code == 200
    assert _gen(url, office, **{"X-Forwarded-For": "fd00::7"}).status_code == 200
    assert _gen(url, office, **{"X-Forwarded-For": "192.0.2.1"}).status_code == 401

    # The admin API sets and lifts it; every replica applies it within the key refresh.
    made = httpx.post(url + "/admin/keys", headers=admin,
                      json={"name": "lab", "allow_from": ["192.0.2.0/24"]})  # fmt: skip
    assert made.status_code == 201 and made.json()["key"]["allow_from"] == ["192.0.2.0/24"]
    lab = made.json()["secret"]
    assert wait_until(lambda: _gen(url, lab, **{"X-Forwarded-For": "192.0.2.5"}).status_code
                      == 200, timeout=3)  # fmt: skip
    assert _gen(url, lab).status_code == 401
    lifted = httpx.patch(url + "/admin/keys/lab", headers=admin, json={"allow_from": []})
    assert lifted.status_code == 200 and lifted.json()["allow_from"] == []
    assert wait_until(lambda: _gen(url, lab).status_code == 200, timeout=3)
    bad = httpx.patch(url + "/admin/keys/lab", headers=admin, json={"allow_from": ["10.0.0.0/33"]})
    assert bad.status_code == 400 and "is not a network" in bad.json()["error"]
    # The CLI lifts it with 'any'.
    cli("keys", "update", "office", "--allow-from", "any")
    assert wait_until(lambda: _gen(url, office).status_code == 200, timeout=3)
    failed = cli("keys", "create", "typo", "--allow-from", "10.0.0/8x", check=False)
    assert failed.returncode != 0 and "is not a network" in failed.stderr


def test_a_trusted_proxy_over_tls_makes_the_console_cookie_secure(
    deployment: Deployment,
) -> None:
    admin = deployment.cli.create_key("ops", "--scope", "admin")
    gateway = deployment.gateway(trusted_proxies="127.0.0.1")
    login = httpx.post(gateway.url + "/ui/session", json={"key": admin},
                       headers={"X-Forwarded-Proto": "https"})  # fmt: skip
    assert login.status_code == 201 and "; Secure" in login.headers["set-cookie"]
    plain = httpx.post(gateway.url + "/ui/session", json={"key": admin})
    assert "; Secure" not in plain.headers["set-cookie"]


def test_networks_parse_cidr_and_single_addresses() -> None:
    assert str(parse_network(" 10.1.2.3/8 ")) == "10.0.0.0/8"
    assert str(parse_network("192.0.2.7")) == "192.0.2.7/32"
    assert str(parse_network("fd00::/8")) == "fd00::/8"
    allowed = Networks.of(["10.0.0.0/8", "fd00::/8"])
    assert "10.255.0.1" in allowed and "fd12::1" in allowed and "::ffff:10.0.0.1" in allowed
    assert "11.0.0.1" not in allowed and "unknown" not in allowed and "" not in allowed
    with pytest.raises(ValueError, match="is not a network"):
        parse_network("10.0.0.0/33")


def test_the_lists_are_toml_lists_in_the_settings_file(tmp_path: Path, standin: Any) -> None:
    dep = fleet_deployment(
        tmp_path, [{"name": "gpu1", "url": standin.url}],
        allowed_networks=["127.0.0.0/8", "fd00::/8"], trusted_proxies=["127.0.0.1"],
    )  # fmt: skip
    try:
        key = dep.cli.create_key("from-file")
        gateway = dep.gateway()
        assert _gen(gateway.url, key, **{"X-Forwarded-For": "127.0.0.9"}).status_code == 200
        assert _gen(gateway.url, key, **{"X-Forwarded-For": "192.0.2.1"}).status_code == 403
    finally:
        dep.close()
