"""Policy: who is asking (keys), what they may do (scopes, models), checked in one place."""

from secureig.policy.engine import (
    Forbidden,
    Gatekeeper,
    InvalidModel,
    ModelNotFound,
    Operation,
    Refusal,
    Unauthenticated,
    UpstreamDown,
)
from secureig.policy.keyring import BOOTSTRAP_KEY, AuthError, BootstrapPolicy, Keyring
from secureig.policy.principal import Principal

__all__ = [
    "BOOTSTRAP_KEY",
    "AuthError",
    "BootstrapPolicy",
    "Forbidden",
    "Gatekeeper",
    "InvalidModel",
    "Keyring",
    "ModelNotFound",
    "Operation",
    "Principal",
    "Refusal",
    "Unauthenticated",
    "UpstreamDown",
]
