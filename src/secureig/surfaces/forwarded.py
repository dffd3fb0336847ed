"""Who the client is, and whether it may be served: the socket's address, or, from a trusted
proxy only, the address its `Forwarded` / `X-Forwarded-For` header names.

The headers are read right to left, from the hop nearest the gateway: each hop a trusted proxy
added is stepped over, and the first address a trusted proxy did not write is the client's. A
client that sends its own header gains nothing: its entries sit to the left of the one its proxy
added. The address found replaces `scope["client"]`, so the allowlists, the failed-auth
throttle, usage and the access log all see the same one; `X-Forwarded-Proto` (or `proto=`)
from a trusted proxy sets the scheme, so the console's cookie is `Secure` behind a TLS proxy.
"""

from __future__ import annotations

from secureig.networks import Networks, parse_address
from secureig.surfaces._asgi import Scope, Send, exchange_of, respond_error

FORBIDDEN = 403
_MAX_HOPS = 32  # a longer chain is read no further: its far end is the client's own say
_UNKNOWN = "unknown"  # what a trusted proxy forwarded that is no address


class ClientAddress:
    """`admits(scope)` on every request: the client's address resolved (when proxies are
    trusted) and checked (when networks are restricted); `refuse` answers the rest. The health
    routes answer a proxy or a probe whatever address it forwards: they need no key and change
    nothing, and the connection itself was checked."""

    def __init__(
        self, trusted_proxies: Networks, allowed: Networks, exempt_paths: tuple[str, ...] = ()
    ) -> None:
        self._trusted = trusted_proxies
        self._allowed = allowed
        self._exempt = frozenset(exempt_paths)
        self._resolves = bool(trusted_proxies)
        self._checks = bool(allowed)

    def admits(self, scope: Scope) -> bool:
        if self._resolves:
            self.resolve(scope)
        return not self._checks or self.allows(scope)

    def resolve(self, scope: Scope) -> None:
        client = scope.get("client")
        if not client or client[0] not in self._trusted:
            return
        forwarded: list[bytes] = []
        legacy: list[bytes] = []
        legacy_proto: str | None = None
        for name, value in scope["headers"]:
            if name == b"forwarded":
                forwarded.append(value)
            elif name == b"x-forwarded-for":
                legacy.append(value)
            elif name == b"x-forwarded-proto":
                legacy_proto = value.decode("latin-1").split(",")[0]
        if forwarded:
            hops = _forwarded(b",".join(forwarded).decode("latin-1"))
        elif legacy:
            entries = b",".join(legacy).decode("latin-1").split(",")
            hops = [(entry.strip(), None) for entry in entries]
            hops[-1] = (hops[-1][0], legacy_proto)  # what the nearest proxy says it received
        else:
            hops = []
        if hops:
            address, proto = self._client(hops)
            scope["client"] = (address, 0)
        else:
            proto = legacy_proto  # no client named: the proxy's own request, by its scheme
        if proto is not None and proto.strip().lower() in ("https", "http"):
            scope["scheme"] = proto.strip().lower()

    def _client(self, hops: list[tuple[str, str | None]]) -> tuple[str, str | None]:
        """The first address from the right that no trusted proxy holds, and the scheme the
        proxy that wrote it received the request by."""
        found: tuple[str, str | None] = (_UNKNOWN, None)
        for hop, proto in reversed(hops[-_MAX_HOPS:]):
            address = parse_address(_without_port(hop))
            if address is None:
                # A trusted proxy passed on something that is no address: nobody can say who.
                return _UNKNOWN, None
            found = (str(address), proto)
            if found[0] not in self._trusted:
                return found
        return found  # every hop a proxy we trust: the farthest of them

    def allows(self, scope: Scope) -> bool:
        client = scope.get("client")
        if client is not None and client[0] in self._allowed:
            return True
        return scope["path"] in self._exempt

    async def refuse(self, scope: Scope, send: Send) -> None:
        exchange_of(scope).route = "refused-network"
        await respond_error(scope, send, FORBIDDEN, "this address may not use the gateway")


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
