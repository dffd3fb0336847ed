"""Every decision the gateway takes by address takes the one resolved client: the listener's
allowed networks, a key's `allow_from`, the failed-auth throttle, the bootstrap key, an open
`/metrics` and the console cookie's `Secure`. Each runs here with spoofed headers from an
untrusted peer and from a trusted proxy, in process (the peer is the address the listener would
give). Only the configured header is read, from the nearest hop, and the scheme with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from secureig.networks import Networks
from secureig.policy import UNKNOWN_CLIENT
from secureig.surfaces._asgi import EXCHANGE, Exchange
from secureig.surfaces.forwarded import ClientAddress
from tests.inprocess import InProcess, run
from tests.standin import OllamaStandIn

PROXY = "10.0.0.1"
OUTSIDE = "198.51.100.7"
INSIDE = "192.0.2.1"
ADMIN = "an-operators-admin-key"
WRONG = "sig_" + "w" * 43


async def _status(gateway: InProcess, peer: str, key: str, path: str = "/api/version",
                  **headers: str) -> int:  # fmt: skip
    async with gateway.client(peer, **{"X-API-KEY": key, **headers}) as client:
        return (await client.get(path)).status_code


# Headers a client adds to pass as someone else: through a proxy that passes them on, its own
# entries stand to the left of the proxy's, or in the header the gateway does not read.
SPOOFS: list[dict[str, str]] = [
    {"X-Forwarded-For": INSIDE},
    {"Forwarded": f"for={INSIDE}"},
    {"Forwarded": f"for={INSIDE}", "X-Forwarded-For": f"{INSIDE}, {OUTSIDE}"},
    {"X-Real-IP": INSIDE},
]


def test_allowed_networks_take_the_resolved_client(tmp_path: Path, standin: OllamaStandIn) -> None:
    async def test(gateway: InProcess) -> None:
        for spoof in SPOOFS:
            # An untrusted peer outside: its headers are nobody's word.
            assert await _status(gateway, OUTSIDE, ADMIN, **spoof) == 403, spoof
            # Through the proxy, from outside: the proxy's own entry is the one read.
            through = {**spoof, "X-Forwarded-For": ", ".join(
                [*([spoof["X-Forwarded-For"]] if "X-Forwarded-For" in spoof else []), OUTSIDE]
            )}  # fmt: skip
            assert await _status(gateway, PROXY, ADMIN, **through) == 403, through
        assert await _status(gateway, INSIDE, ADMIN) == 200
        assert await _status(gateway, PROXY, ADMIN, **{"X-Forwarded-For": INSIDE}) == 200
        # The proxy names nobody: the proxy itself is no allowed client.
        assert await _status(gateway, PROXY, ADMIN) == 403

    run(tmp_path, test, ollama_url=standin.url, trusted_proxies=[PROXY],
        allowed_networks=["192.0.2.0/24"], admin_key=ADMIN)  # fmt: skip


def test_a_keys_allow_from_takes_the_resolved_client(
    tmp_path: Path, standin: OllamaStandIn
) -> None:
    async def test(gateway: InProcess) -> None:
        key = await gateway.create_key("office", networks=["192.0.2.0/24"])
        for spoof in SPOOFS:
            assert await _status(gateway, OUTSIDE, key, **spoof) == 401, spoof
            forwarded = {**spoof, "X-Forwarded-For": f"{INSIDE}, {OUTSIDE}"}
            assert await _status(gateway, PROXY, key, **forwarded) == 401, forwarded
        assert await _status(gateway, INSIDE, key) == 200
        assert await _status(gateway, PROXY, key, **{"X-Forwarded-For": INSIDE}) == 200

    run(tmp_path, test, ollama_url=standin.url, trusted_proxies=[PROXY], auth_failures_per_minute=0)


def test_the_failed_auth_throttle_counts_the_resolved_client(
    tmp_path: Path, standin: OllamaStandIn
) -> None:
    async def test(gateway: InProcess) -> None:
        # Every guess names another client in a header the gateway does not read, or to the
        # left of its proxy's entry: all count against the one client.
        guesses = [
            {"Forwarded": f"for=192.0.2.{i}", "X-Forwarded-For": f"192.0.2.{i}, {OUTSIDE}"}
            for i in range(4)
        ]
        assert [await _status(gateway, PROXY, WRONG, **g) for g in guesses] == [401, 401, 429, 429]
        # Another client behind the proxy has a bucket of its own.
        assert await _status(gateway, PROXY, WRONG, **{"X-Forwarded-For": INSIDE}) == 401
        # Untrusted: the socket's address, whatever it says.
        spoofs = [{"X-Forwarded-For": f"203.0.113.{i}"} for i in range(3)]
        assert [await _status(gateway, "198.51.100.8", WRONG, **s) for s in spoofs] == [
            401, 401, 429,
        ]  # fmt: skip

    run(tmp_path, test, ollama_url=standin.url, trusted_proxies=[PROXY], auth_failures_per_minute=2)


def test_the_bootstrap_key_serves_this_machine_directly_and_never_behind_proxies(
    tmp_path: Path, standin: OllamaStandIn
) -> None:
    async def direct(gateway: InProcess) -> None:
        assert await _status(gateway, "127.0.0.1", "admin") == 200
        assert await _status(gateway, "::1", "admin") == 200
        # A proxy on this machine that nobody declared: its forwarding header gives it away.
        for spoof in SPOOFS:
            assert await _status(gateway, "127.0.0.1", "admin", **spoof) == 401, spoof
        assert await _status(gateway, "127.0.0.1", "admin", Via="1.1 nginx") == 401
        assert await _status(gateway, OUTSIDE, "admin") == 401

    run(tmp_path / "direct", direct, ollama_url=standin.url, auth_failures_per_minute=0)

    async def proxied(gateway: InProcess) -> None:
        # A remote client through a proxy on this machine: never the bootstrap key.
        forwarded = {"X-Forwarded-For": "203.0.113.9"}
        assert await _status(gateway, "127.0.0.1", "admin", "/admin/keys", **forwarded) == 401
        # Not even from the proxy's own address with no header.
        assert await _status(gateway, "127.0.0.1", "admin") == 401

    (tmp_path / "proxied").mkdir()
    run(tmp_path / "proxied", proxied, ollama_url=standin.url, trusted_proxies=["127.0.0.1"],
        auth_failures_per_minute=0)  # fmt: skip


def test_metrics_are_open_to_this_machine_directly_only(
    tmp_path: Path, standin: OllamaStandIn
) -> None:
    async def direct(gateway: InProcess) -> None:
        assert await _status(gateway, "127.0.0.1", "", "/metrics") == 200
        for spoof in SPOOFS:
            assert await _status(gateway, "127.0.0.1", "", "/metrics", **spoof) == 401, spoof
        assert await _status(gateway, OUTSIDE, "", "/metrics") == 401
        assert await _status(gateway, OUTSIDE, ADMIN, "/metrics") == 200

    (tmp_path / "direct").mkdir()
    run(
        tmp_path / "direct",
        direct,
        ollama_url=standin.url,
        admin_key=ADMIN,
        auth_failures_per_minute=0,
    )

    async def proxied(gateway: InProcess) -> None:
        remote = {"X-Forwarded-For": "203.0.113.9"}
        assert await _status(gateway, "127.0.0.1", "", "/metrics", **remote) == 401
        assert await _status(gateway, "127.0.0.1", ADMIN, "/metrics", **remote) == 200

    (tmp_path / "proxied").mkdir()
    run(tmp_path / "proxied", proxied, ollama_url=standin.url, trusted_proxies=["127.0.0.1"],
        admin_key=ADMIN, auth_failures_per_minute=0)  # fmt: skip


async def _secure(gateway: InProcess, peer: str, **headers: str) -> bool:
    async with gateway.client(peer, **headers) as client:
        login = await client.post("/ui/session", json={"key": ADMIN})
        assert login.status_code == 201, login.text
        return "; Secure" in login.headers["set-cookie"]


def test_the_cookie_is_secure_by_the_nearest_hops_word_only(
    tmp_path: Path, standin: OllamaStandIn
) -> None:
    async def test(gateway: InProcess) -> None:
        assert await _secure(gateway, PROXY, **{"X-Forwarded-Proto": "https"})
        assert not await _secure(gateway, PROXY)
        # The nearest hop said http; what the client wrote before it does not count.
        assert not await _secure(gateway, PROXY, **{"X-Forwarded-Proto": "https, http"})
        # Not the header the gateway reads, or not a trusted peer.
        assert not await _secure(gateway, PROXY, Forwarded=f"for={INSIDE};proto=https")
        assert not await _secure(gateway, OUTSIDE, **{"X-Forwarded-Proto": "https"})

    run(tmp_path, test, ollama_url=standin.url, trusted_proxies=[PROXY], admin_key=ADMIN)


def test_forwarded_mode_reads_forwarded_only(tmp_path: Path, standin: OllamaStandIn) -> None:
    async def test(gateway: InProcess) -> None:
        inside = {"Forwarded": f'for="{INSIDE}:4711";proto=https'}
        assert await _status(gateway, PROXY, ADMIN, **inside) == 200
        assert await _secure(gateway, PROXY, **inside)
        # X-Forwarded-* are a client's words here, however they read.
        spoof = {"X-Forwarded-For": INSIDE, "X-Forwarded-Proto": "https",
                 "Forwarded": f"for={OUTSIDE}"}  # fmt: skip
        assert await _status(gateway, PROXY, ADMIN, **spoof) == 403
        nearest = {"Forwarded": f"for={INSIDE};proto=https, for={OUTSIDE};proto=http"}
        assert await _status(gateway, PROXY, ADMIN, **nearest) == 403
        assert not await _secure(gateway, PROXY, Forwarded=f"for={INSIDE};proto=http")

    run(tmp_path, test, ollama_url=standin.url, trusted_proxies=[PROXY],
        allowed_networks=["192.0.2.0/24"], admin_key=ADMIN, forwarded_header="Forwarded",
        auth_failures_per_minute=0)  # fmt: skip


@pytest.mark.parametrize(
    ("header", "peer", "headers", "client"),
    [
        ("x-forwarded-for", "127.0.0.1", [(b"x-forwarded-for", b"10.0.0.1")], "10.0.0.1"),
        ("x-forwarded-for", "127.0.0.1", [(b"x-forwarded-for", b"10.0.0.1, 127.0.0.2")],
         "10.0.0.1"),
        ("x-forwarded-for", "127.0.0.1",
         [(b"x-forwarded-for", b"10.0.0.1"), (b"x-forwarded-for", b"10.0.0.2")], "10.0.0.2"),
        ("x-forwarded-for", "127.0.0.1", [(b"forwarded", b"for=10.0.0.1")], "127.0.0.1"),
        ("x-forwarded-for", "127.0.0.1", [(b"x-forwarded-for", b"::ffff:10.0.0.9")], "10.0.0.9"),
        ("x-forwarded-for", "127.0.0.1", [(b"x-forwarded-for", b"10.0.0.1, evil")], "unknown"),
        ("x-forwarded-for", "192.0.2.1", [(b"x-forwarded-for", b"10.0.0.1")], "192.0.2.1"),
        ("forwarded", "127.0.0.1",
         [(b"forwarded", b'for=192.0.2.60;proto=http, for="[2001:db8::17]:4711"')],
         "2001:db8::17"),
        ("forwarded", "127.0.0.1", [(b"forwarded", b"for=192.0.2.60:8080")], "192.0.2.60"),
        ("forwarded", "127.0.0.1", [(b"forwarded", b"for=_hidden")], "unknown"),
        ("forwarded", "127.0.0.1", [(b"x-forwarded-for", b"10.0.0.1")], "127.0.0.1"),
        ("forwarded", "127.0.0.1", [], "127.0.0.1"),
    ],
)  # fmt: skip
def test_the_header_is_read_from_the_nearest_hop(
    header: Any, peer: str, headers: list[tuple[bytes, bytes]], client: str
) -> None:
    resolver = ClientAddress(Networks.of(["127.0.0.0/8"]), Networks.of([]), header=header)
    exchange = Exchange(request_id="0")
    assert exchange.client is UNKNOWN_CLIENT
    scope = {"client": (peer, 5000), "headers": headers, "scheme": "http", "path": "/api/tags",
             EXCHANGE: exchange}  # fmt: skip
    assert resolver.admits(scope)
    assert exchange.client.address == client
    # This machine, directly, only with no forwarding header at all.
    assert exchange.client.local is (not headers and peer == "127.0.0.1")


def test_local_means_loopback_without_a_proxy() -> None:
    resolver = ClientAddress(Networks.of([]), Networks.of([]))
    peers = (("127.0.0.1", True), ("127.8.9.1", True), ("::1", True),
             ("::ffff:127.0.0.1", True), ("10.0.0.1", False), ("2001:db8::1", False))  # fmt: skip
    for peer, local in peers:
        exchange = Exchange(request_id="0")
        scope = {"client": (peer, 1), "headers": [], "path": "/", EXCHANGE: exchange}
        resolver.admits(scope)
        assert exchange.client.local is local, peer
