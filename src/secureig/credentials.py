"""What an API key is: its format, how one is made, the digest it is stored under, its scopes.

A key is `sig_` plus 43 URL-safe characters (256 random bits). Only its SHA-256 digest is kept;
with that much entropy a fast digest is safe, and it keeps verification an in-memory lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from enum import StrEnum

KEY_PREFIX = "sig_"
# How much of a key `keys list` shows, so an operator can tell keys apart without the secret.
VISIBLE_PREFIX_LENGTH = 8


class Scope(StrEnum):
    INFERENCE = "inference"
    MANAGE = "manage"
    ADMIN = "admin"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def visible_prefix(secret: str) -> str:
    return secret[:VISIBLE_PREFIX_LENGTH]


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    """Scopes from their names; raises ValueError naming the unknown one."""
    scopes = set()
    for value in values:
        try:
            scopes.add(Scope(value.strip().lower()))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise ValueError(f"unknown scope {value!r} (known: {known})") from None
    return frozenset(scopes)
