"""Networks: the CIDR lists the gateway admits clients from (globally and per key) and trusts
forwarding headers from, with one way to parse them and one way to ask whether an address is in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_NETWORKS = 256  # in one list: anything longer is a mistake, and each is a check per request
_MAX_VERDICTS = 4096


def parse_network(text: str) -> Network:
    """`10.0.0.0/8`, `fd00::/8`, or one address (`192.0.2.7` is `192.0.2.7/32`)."""
    value = text.strip()
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        shown = value if len(value) <= 64 else value[:64] + "…"
        raise ValueError(
            f"{shown!r} is not a network: write it as CIDR (10.0.0.0/8, fd00::/8) or one address"
        ) from None


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    networks = tuple(parse_network(t) for t in texts if t.strip())
    if len(networks) > MAX_NETWORKS:
        raise ValueError(f"at most {MAX_NETWORKS} networks in one list")
    return networks


def parse_address(text: str) -> Address | None:
    """A client address as a socket or a forwarding header gives it; None if it is none."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1, on a dual-stack socket
    return address


class Networks:
    """`address in networks`: parsed once; verdicts kept per address string, as the same few
    clients come back (cleared when full, so a scan of addresses costs memory once)."""

    __slots__ = ("_networks", "_verdicts")

    def __init__(self, networks: Iterable[Network]) -> None:
        self._networks = tuple(networks)
        self._verdicts: dict[str, bool] = {}

    @classmethod
    def of(cls, texts: Iterable[str]) -> Networks:
        return cls(parse_networks(texts))

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        verdict = self._verdicts.get(address)
        if verdict is None:
            parsed = parse_address(address)
            verdict = parsed is not None and any(parsed in n for n in self._networks)
            if len(self._verdicts) >= _MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict
