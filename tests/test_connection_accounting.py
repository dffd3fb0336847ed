"""Connection accounting: every way a client connection can end gives its place back, the count
begins at accept (before any TLS handshake), upgrades never take a socket out of the count, and
no handful of addresses can hold every place.

The listener is what is tested, so these run a real gateway process; its count is read from
`/metrics` over a connection of its own, from an address of its own (loopback is a /8).
"""

from __future__ import annotations

import json
import socket
import ssl
import struct

import httpx
import pytest

from secureig.networks import Networks
from secureig.protocol import OpenConnections, ServeLimits, client_bucket
from tests.conftest import Deployment, Gateway, connect_from, wait_until
from tests.pki import PKI, make_pki

OBSERVER = "127.0.0.99"
WEBSOCKET = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _metric(gateway: Gateway, name: str, context: ssl.SSLContext | bool = True) -> float:
    transport = httpx.HTTPTransport(local_address=OBSERVER, verify=context)
    with httpx.Client(transport=transport, timeout=10) as client:
        text = client.get(gateway.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _open(gateway: Gateway, context: ssl.SSLContext | bool = True) -> int:
    """Connections open now, less the one asking."""
    return int(_metric(gateway, "secureig_connections_open", context)) - 1


def _connect(gateway: Gateway, source: str = "127.0.0.2") -> socket.socket:
    return connect_from(gateway, source, timeout=20)


def _read_all(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset rather than a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _back_to_zero(gateway: Gateway, context: ssl.SSLContext | bool = True) -> bool:
    return wait_until(lambda: _open(gateway, context) == 0, timeout=10)


def test_every_way_a_plain_connection_ends_gives_its_place_back(deployment: Deployment) -> None:
    gateway = deployment.gateway(header_timeout="1", body_timeout="1", body_min_rate="0")
    assert _open(gateway) == 0

    # Served, then closed by the client.
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as client:
        assert client.get(gateway.url + "/healthz").status_code == 200
        assert _open(gateway) == 1  # kept alive for the next request
    assert _back_to_zero(gateway), "a normal close"

    # Served with Connection: close.
    sock = _connect(gateway)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert _read_all(sock).startswith(b"HTTP/1.1 200")
    sock.close()
    assert _back_to_zero(gateway), "a close the request asked for"

    # Reset by the client, halfway through a head.
    sock = _connect(gateway)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
    assert wait_until(lambda: _open(gateway) == 1)
    _reset(sock)
    assert _back_to_zero(gateway), "a reset"

    # A WebSocket upgrade: refused, closed, given back.
    sock = _connect(gateway)
    sock.sendall(WEBSOCKET)
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 426 Upgrade Required"), answer
    assert _back_to_zero(gateway), "an upgrade refused"

    # An h2c upgrade is ignored: served over HTTP/1.1, and the connection closed after it.
    sock = _connect(gateway)
    sock.sendall(
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: h2c\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in answer, answer
    assert _back_to_zero(gateway), "an upgrade ignored"

    # A head that stops halfway: 408 at the head timeout.
    sock = _connect(gateway)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    assert _read_all(sock).startswith(b"HTTP/1.1 408")
    sock.close()
    assert _back_to_zero(gateway), "a head timeout"

    # Not a byte: closed without a word at the head timeout.
    sock = _connect(gateway)
    assert _read_all(sock) == b""
    sock.close()
    assert _back_to_zero(gateway), "an idle connection"

    # A body that stops halfway: 408 at the body timeout.
    sock = _connect(gateway)
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-KEY: admin\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"mo'
    )
    assert _read_all(sock).startswith(b"HTTP/1.1 408")
    sock.close()
    assert _back_to_zero(gateway), "a body timeout"

    # Shutdown with connections still open: a kept-alive one, one halfway through its head.
    kept = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"))
    assert kept.get(gateway.url + "/healthz").status_code == 200
    halfway = _connect(gateway)
    halfway.sendall(b"GET /healthz HTTP/1.1\r\n")
    assert wait_until(lambda: _open(gateway) == 2)
    assert gateway.stop() in (0, -15)  # uvicorn re-raises the signal once it is done
    kept.close()
    halfway.close()
    assert "shutdown: every client connection closed" in gateway.log(), gateway.log()


def test_every_way_a_tls_connection_ends_gives_its_place_back(
    deployment: Deployment, pki: PKI
) -> None:
    gateway = deployment.gateway(
        verify=pki.trust(),
        ssl_certfile=str(pki.cert),
        ssl_keyfile=str(pki.key),
        tls_handshake_timeout="1",
        header_timeout="1",
    )
    trust = pki.trust()
    assert _open(gateway, trust) == 0

    # Counted from accept, before the handshake: a socket that never says hello holds a place
    # until the handshake timeout, and no longer.
    silent = _connect(gateway)
    assert wait_until(lambda: _open(gateway, trust) == 1)
    assert _read_all(silent) == b""
    silent.close()
    assert _back_to_zero(gateway, trust), "a handshake abandoned"

    # Gone halfway through its ClientHello.
    sock = _connect(gateway)
    sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    sock.close()
    assert _back_to_zero(gateway, trust), "a client gone mid-handshake"

    # Plain HTTP on the TLS port: the handshake fails.
    sock = _connect(gateway)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    _read_all(sock)
    sock.close()
    assert _back_to_zero(gateway, trust), "a failed handshake"

    # A whole request over TLS, and a WebSocket upgrade over TLS.
    wrapped = trust.wrap_socket(_connect(gateway), server_hostname="127.0.0.1")
    wrapped.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert _read_all(wrapped).startswith(b"HTTP/1.1 200")
    wrapped.close()
    wrapped = trust.wrap_socket(_connect(gateway), server_hostname="127.0.0.1")
    wrapped.sendall(WEBSOCKET)
    assert _read_all(wrapped).startswith(b"HTTP/1.1 426")
    wrapped.close()
    assert _back_to_zero(gateway, trust), "requests over TLS"

    # Shutdown with a handshake under way.
    waiting = _connect(gateway)
    assert wait_until(lambda: _open(gateway, trust) == 1)
    assert gateway.stop() in (0, -15)  # uvicorn re-raises the signal once it is done
    waiting.close()
    assert "shutdown: every client connection closed" in gateway.log(), gateway.log()


def test_upgrades_cannot_strand_places(deployment: Deployment) -> None:
    """4,095 unauthenticated WebSocket upgrades once took every place until a restart."""
    gateway = deployment.gateway(max_connections="40", max_connections_per_client="40")
    for _ in range(100):
        sock = _connect(gateway)
        sock.sendall(WEBSOCKET)
        assert _read_all(sock).startswith(b"HTTP/1.1 426")
        sock.close()
    assert _back_to_zero(gateway)
    assert httpx.get(gateway.url + "/readyz").status_code == 200
    refused = 'secureig_connections_refused_total{reason="upgrade"} 100.0'
    assert refused in httpx.get(gateway.url + "/metrics").text
    # The refusal is logged, throttled: not a line per request.
    assert 0 < gateway.log().count("refused an upgrade request") < 100
    assert "Unsupported upgrade request" not in gateway.log()


def test_tls_handshakes_are_bounded_per_address(deployment: Deployment, pki: PKI) -> None:
    gateway = deployment.gateway(
        verify=pki.trust(),
        ssl_certfile=str(pki.cert),
        ssl_keyfile=str(pki.key),
        tls_handshake_timeout="30",
        max_tls_handshakes_per_client="4",
    )
    trust = pki.trust()
    held = [_connect(gateway) for _ in range(4)]
    assert wait_until(lambda: _open(gateway, trust) == 4)
    # A fifth from that address is closed as it opens; another address is served meanwhile.
    extra = _connect(gateway)
    assert _read_all(extra) == b""
    extra.close()
    assert _open(gateway, trust) == 4
    assert (
        'secureig_connections_refused_total{reason="handshakes"} 1.0'
        in httpx.get(gateway.url + "/metrics", verify=trust).text
    )
    for sock in held:
        sock.close()
    assert _back_to_zero(gateway, trust)


def test_a_short_body_timeout_is_kept_when_the_head_timeout_is_long(
    deployment: Deployment,
) -> None:
    """The body's window once waited for the head's timer: a 1 s body timeout took 60 s."""
    gateway = deployment.gateway(header_timeout="600", body_timeout="1")
    sock = _connect(gateway)
    body = json.dumps({"model": "llama2", "prompt": "x" * 200, "stream": False}).encode()
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-KEY: admin\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:20]
    )
    sock.settimeout(30)  # a bound on the wait, far inside the head timeout
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
    assert b"over 1 seconds" in answer


def test_no_handful_of_addresses_holds_every_place(deployment: Deployment) -> None:
    # 64 places: 8 per address by default, and the last 8 kept for clients that used a key.
    gateway = deployment.gateway(max_connections="64", header_timeout="60")
    for known in ("127.0.0.50", OBSERVER):
        with httpx.Client(transport=httpx.HTTPTransport(local_address=known)) as client:
            answer = client.get(gateway.url + "/api/version", headers={"X-API-KEY": "admin"})
            assert answer.status_code == 200
    # Its address is remembered, not its connection.
    assert _back_to_zero(gateway)

    held = [_connect(gateway, "127.0.1.0") for _ in range(8)]
    try:
        more = _connect(gateway, "127.0.1.0")
        assert b"this address holds its most connections (8)" in _read_all(more)
        held += [_connect(gateway, f"127.0.1.{i // 8}") for i in range(8, 56)]
        assert wait_until(lambda: _open(gateway) == 56)
        # Seven addresses hold every place open to strangers: the next stranger gets 503.
        stranger = _connect(gateway, "127.0.2.1")
        assert b"the gateway holds its most connections (64)" in _read_all(stranger)
        # The client that used a valid key is still served, from the places kept back.
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.50")) as again:
            answer = again.get(gateway.url + "/api/version", headers={"X-API-KEY": "admin"})
            assert answer.status_code == 200
    finally:
        for sock in held:
            sock.close()
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'secureig_connections_refused_total{reason="reserved"} 1.0' in metrics
    assert 'secureig_connections_refused_total{reason="per-client"} 1.0' in metrics
    assert wait_until(lambda: "(SECUREIG_RESERVED_CONNECTIONS)" in gateway.log())


def _limits(**overrides: object) -> ServeLimits:
    values: dict[str, object] = {
        "head_bytes": 65536, "head_timeout": 10.0, "body_timeout": 30.0, "body_min_rate": 500,
        "max_connections": 100, "max_per_client": 2, "reserved": 10,
    }  # fmt: skip
    values.update(overrides)
    return ServeLimits(**values)  # type: ignore[arg-type]


def test_ipv6_clients_are_counted_per_64() -> None:
    assert client_bucket("2001:db8::1") == client_bucket("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_bucket("2001:db8:0:1::1") == "2001:db8:0:1::/64"
    assert client_bucket("::ffff:10.0.0.1") == "10.0.0.1"
    assert client_bucket("10.0.0.1") == "10.0.0.1"
    connections = OpenConnections(_limits())
    for address in ("2001:db8::1", "2001:db8::2"):
        assert connections.admit(address, client_bucket(address)) is None
    # A third from the same /64 is over the cap, whatever its last 64 bits.
    assert connections.admit("2001:db8::3", client_bucket("2001:db8::3")) == "per-client"
    assert connections.admit("2001:db8:0:1::1", client_bucket("2001:db8:0:1::1")) is None


def test_trusted_proxies_are_held_to_no_per_client_cap_and_known_clients_keep_places() -> None:
    proxy = "10.0.0.1"
    connections = OpenConnections(_limits(proxies=Networks.of([proxy])))
    for _ in range(50):
        assert connections.admit(proxy, proxy) is None
    for i in range(20):
        address = f"192.0.2.{i // 2}"
        assert connections.admit(address, address) is None
    # 70 open, 90 for anyone: the strangers take the rest, and the last 10 are kept.
    for i in range(20):
        address = f"198.51.100.{i // 2}"
        assert connections.admit(address, address) is None
    assert connections.admit("203.0.113.1", "203.0.113.1") == "reserved"
    connections.vouch("203.0.113.1")
    assert connections.admit("203.0.113.1", "203.0.113.1") is None
    connections.vouch("2001:db8::1")  # remembered by its /64
    assert connections.admit("2001:db8::2", "2001:db8::/64") is None
    connections.release(proxy)
    assert connections.open == 91
