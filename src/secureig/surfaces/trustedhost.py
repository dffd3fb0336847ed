"""The Host check: a request that names a host the gateway does not answer for goes no further.

A DNS-rebinding page is same-origin with the gateway, so it sets any header it likes and CORS
does not stop it; what it cannot choose is the `Host` its browser sends, which names the
attacker's domain. Checked before anything else runs (key, route, upstream), as Starlette's
TrustedHostMiddleware does; a request with no Host, or with two, is refused too. The health
routes answer whatever the Host: probes name the address they reach, and those routes need no
key and change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from secureig.surfaces._asgi import ASGIApp, Receive, Scope, Send, exchange_of, respond_error
from secureig.untrusted import shown

MISDIRECTED = 421


class TrustedHost:
    def __init__(
        self, app: ASGIApp, allowed_hosts: Sequence[str], exempt_paths: Sequence[str] = ()
    ) -> None:
        self._app = app
        self._exempt = frozenset(exempt_paths)
        hosts = [h.lower() for h in allowed_hosts]
        self._any = "*" in hosts
        self._exact = frozenset(h for h in hosts if not h.startswith("*."))
        self._suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))  # ".example.com"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._any:
            await self._app(scope, receive, send)
            return
        host: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"host":
                if host is not None:
                    host = b""  # two Host headers: which one the router reads is anyone's guess
                    break
                host = value
        name = _hostname(host.decode("latin-1")) if host else ""
        if (
            name in self._exact
            or (name and name.endswith(self._suffixes))
            or scope["path"] in self._exempt
        ):
            await self._app(scope, receive, send)
            return
        exchange_of(scope).route = "refused-host"
        what = f"host {shown(name, 80)}" if name else "a request without one Host header"
        await respond_error(
            scope, send, MISDIRECTED, f"{what} is not one this gateway answers for", "host"
        )


def _hostname(host: str) -> str:
    """`Host` without its port, lower-cased: `[::1]:8085` -> `[::1]`, `gw:8085` -> `gw`."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.rpartition(":")[0] if ":" in host else host
