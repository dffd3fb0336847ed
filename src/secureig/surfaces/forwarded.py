"""Who the client is, resolved once per request: the socket's address, or, from a trusted proxy
only, the address the one configured forwarding header names; and whether it is this machine
itself, reached directly.

Exactly one header is read, `X-Forwarded-For` (the default) or `Forwarded` (RFC 7239), as
`SECUREIG_FORWARDED_HEADER` says, never the other: a proxy that passes one through unchanged
while it writes the other would otherwise let a client name itself. The header is read right to
left, from the hop nearest the gateway: each hop a trusted proxy added is stepped over, and the
first address a trusted proxy did not write is the client's. A client that sends its own header
gains nothing: its entries sit to the left of the one its proxy added. The scheme is the nearest
hop's too (the last `X-Forwarded-Proto` value, or the last element's `proto=`), so the console's
cookie is `Secure` behind a TLS proxy and a client cannot say so itself.

The result is the exchange's `client`, and replaces `scope["client"]`: the allowlists, `allow_from`,
the failed-auth throttle, the bootstrap key, an open `/metrics`, usage and the access log all
read that one answer.
"""

from __future__ import annotations

from typing import Literal

from secureig.networks import Networks, parse_address
from secureig.policy import Client
from secureig.surfaces._asgi import Scope, Send, exchange_of, respond_error

FORBIDDEN = 403
_MAX_HOPS = 32  # a longer chain is read no further: its far end is the client's own say
_UNKNOWN = "unknown"  # what a trusted proxy forwarded that is no address
ForwardedHeader = Literal["x-forwarded-for", "forwarded"]
# Any of these says a proxy carried the request: its client is not this machine's own.
_PROXIED = frozenset({b"forwarded", b"x-forwarded-for", b"x-real-ip", b"via"})
_SCHEMES = frozenset({"http", "https"})


class ClientAddress:
    """`admits(scope)` on every request: the client resolved (the forwarding header read from
    trusted proxies), recorded on the exchange, and checked when networks are restricted;
    `refuse` answers the rest. The health routes answer a proxy or a probe whatever address it
    forwards: they need no key and change nothing, and the connection itself was checked."""

    def __init__(
        self,
        trusted_proxies: Networks,
        allowed: Networks,
        exempt_paths: tuple[str, ...] = (),
        header: ForwardedHeader = "x-forwarded-for",
    ) -> None:
        self._trusted = trusted_proxies
        self._allowed = allowed
        self._exempt = frozenset(exempt_paths)
        self._resolves = bool(trusted_proxies)
        self._checks = bool(allowed)
        self._header = header.encode()

    def admits(self, scope: Scope) -> bool:
        peer = scope.get("client")
        address = str(peer[0]) if peer else _UNKNOWN
        if self._resolves and address in self._trusted:
            address = self._forwarded(scope, address)
        local = _is_loopback(address) and _direct(scope)
        exchange_of(scope).client = Client(address, local, scope.get("scheme") == "https")
        return not self._checks or address in self._allowed or scope["path"] in self._exempt

    def _forwarded(self, scope: Scope, peer: str) -> str:
        """The client a trusted proxy names, and the scheme its nearest hop received; the
        proxy's own address when it names none."""
        values: list[bytes] = []
        protos: list[bytes] = []
        wanted = self._header
        for name, value in scope["headers"]:
            if name == wanted:
                values.append(value)
            elif name == b"x-forwarded-proto":
                protos.append(value)
        text = b",".join(values).decode("latin-1")
        if wanted == b"forwarded":
            hops = _forwarded(text) if values else []
            proto = hops[-1][1] if hops else None
        else:
            hops = [(entry.strip(), None) for entry in text.split(",")] if values else []
            proto = b",".join(protos).decode("latin-1").split(",")[-1] if protos else None
        if proto is not None and (scheme := proto.strip().lower()) in _SCHEMES:
            scope["scheme"] = scheme
        if not hops:
            return peer  # no client named: the proxy's own request
        address = self._client(hops)
        scope["client"] = (address, 0)
        return address

    def _client(self, hops: list[tuple[str, str | None]]) -> str:
        """The first address from the right that no trusted proxy holds."""
        found = _UNKNOWN
        for hop, _ in reversed(hops[-_MAX_HOPS:]):
            address = parse_address(_without_port(hop))
            if address is None:
                # A trusted proxy passed on something that is no address: nobody can say who.
                return _UNKNOWN
            found = str(address)
            if found not in self._trusted:
                return found
        return found  # every hop a proxy we trust: the farthest of them

    async def refuse(self, scope: Scope, send: Send) -> None:
        exchange_of(scope).route = "refused-network"
        await respond_error(scope, send, FORBIDDEN, "this address may not use the gateway")


def _is_loopback(address: str) -> bool:
    if address.startswith("127.") or address == "::1":
        return True
    if ":" not in address:
        return False  # any other IPv4 address, or none
    parsed = parse_address(address)
    return parsed is not None and parsed.is_loopback


def _direct(scope: Scope) -> bool:
    """No proxy says it carried this request (a client naming a proxy only loses by it)."""
    # A loop, not all() over a generator: it runs for every request from loopback.
    for name, _ in scope["headers"]:  # noqa: SIM110
        if name in _PROXIED:
            return False
    return True


def _forwarded(value: str) -> list[tuple[str, str | None]]:
    """RFC 7239: each element's `for=` and `proto=`, in order; an element without `for=` names
    no address (and is no client)."""
    hops: list[tuple[str, str | None]] = []
    for element in value.split(","):
        where, proto = "", None
        for pair in element.split(";"):
            name, _, raw = pair.strip().partition("=")
            text = raw.strip().strip('"')
            if name.strip().lower() == "for":
                where = text
            elif name.strip().lower() == "proto":
                proto = text
        hops.append((where, proto))
    return hops


def _without_port(hop: str) -> str:
    """`[2001:db8::1]:4711` -> `2001:db8::1`, `192.0.2.1:80` -> `192.0.2.1`; bare IPv6 as is."""
    if hop.startswith("["):
        return hop[1 : hop.find("]")] if "]" in hop else hop
    if hop.count(":") == 1:
        return hop.partition(":")[0]
    return hop
