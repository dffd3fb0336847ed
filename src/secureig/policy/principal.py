"""Who is asking: the verified identity behind a key, with its scopes and allowed models."""

from __future__ import annotations

from dataclasses import dataclass

from secureig.credentials import Scope
from secureig.names import pattern_allows


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scopes: frozenset[Scope]
    patterns: tuple[str, ...]
    key_id: int | None = None  # None for the bootstrap key, which lives in no store
    expires_at: float | None = None  # unix seconds

    def has_scope(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def allows_model(self, key: str) -> bool:
        return Scope.ADMIN in self.scopes or pattern_allows(self.patterns, key)


BOOTSTRAP = Principal(name="bootstrap", scopes=frozenset({Scope.ADMIN}), patterns=("*",))
