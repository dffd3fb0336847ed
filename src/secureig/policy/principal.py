"""Who is asking: the verified identity behind a key, with its scopes and allowed models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from secureig.credentials import Scope
from secureig.names import ModelName, pattern_allows
from secureig.networks import Networks
from secureig.policy.limits import NO_LIMITS, Limits


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scopes: frozenset[Scope]
    patterns: tuple[str, ...]
    key_id: int | None = None  # None for the bootstrap key, which lives in no store
    expires_at: float | None = None  # unix seconds
    max_num_ctx: int | None = None
    max_num_predict: int | None = None
    limits: Limits = NO_LIMITS
    networks: Networks | None = None  # where the key may be used from; None: anywhere

    @property
    def subject(self) -> str:
        """Whose budgets a request draws on: one key, across its rotations."""
        return f"key:{self.key_id}" if self.key_id is not None else f"name:{self.name}"

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def has_any_scope(self, scopes: frozenset[Scope]) -> bool:
        return self.is_admin or not self.scopes.isdisjoint(scopes)

    def allows_model(self, name: ModelName) -> bool:
        return self.is_admin or pattern_allows(self.patterns, name)


BOOTSTRAP = Principal(name="bootstrap", scopes=frozenset({Scope.ADMIN}), patterns=("*",))


class Client(NamedTuple):
    """Where a request comes from, resolved once per request: the address every decision by
    address uses (allowlists, `allow_from`, the failed-auth throttle, usage, logs), and whether
    it is this machine itself, directly, not through any proxy (the bootstrap key, an open
    `/metrics`), and whether it reached the gateway over TLS (a `Secure` cookie), its own or a
    trusted proxy's. (A named tuple: one is made for every request.)"""

    address: str
    local: bool = False
    secure: bool = False


UNKNOWN_CLIENT = Client("unknown")
