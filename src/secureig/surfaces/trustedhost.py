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

from secureig.surfaces._asgi import Scope, Send, exchange_of, respond_error
from secureig.untrusted import shown

MISDIRECTED = 421
_MAX_VERDICTS = 1024


class TrustedHost:
    """`allows(scope)` on every request, a loop over its headers; `refuse` answers the rest."""

    def __init__(self, allowed_hosts: Sequence[str], exempt_paths: Sequence[str] = ()) -> None:
        hosts = [h.lower() for h in allowed_hosts]
        if "*" in hosts:
            raise ValueError("every host is allowed: no Host check is needed")
        self._exempt = frozenset(exempt_paths)
        self._exact = frozenset(h for h in hosts if not h.startswith("*."))
        self._suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))  # ".example.com"
        # Verdicts by Host header as sent: clients send the same few. Cleared when full.
        self._verdicts: dict[bytes, bool] = {}

    def allows(self, scope: Scope) -> bool:
        host: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"host":
                if host is not None:
                    return scope["path"] in self._exempt  # two: which one counts is a guess
                host = value
        if host is not None:
            verdict = self._verdicts.get(host)
            if verdict is None:
                verdict = self._judge(host)
            if verdict:
                return True
        return scope["path"] in self._exempt

    def _judge(self, host: bytes) -> bool:
        name = _hostname(host.decode("latin-1"))
        verdict = name in self._exact or bool(self._suffixes and name.endswith(self._suffixes))
        if len(self._verdicts) >= _MAX_VERDICTS:
            self._verdicts.clear()
        self._verdicts[host] = verdict
        return verdict

    async def refuse(self, scope: Scope, send: Send) -> None:
        exchange_of(scope).route = "refused-host"
        names = [v for n, v in scope["headers"] if n == b"host"]
        if len(names) == 1:
            what = f"host {shown(_hostname(names[0].decode('latin-1')), 80)}"
        else:
            what = "a request without one Host header"
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
