"""Policy: who is asking (keys), what they may do (scopes, models, clamps), checked in one place."""

from secureig.errors import (
    Forbidden,
    InvalidModel,
    InvalidRequest,
    LimiterDown,
    ModelNotFound,
    NoModels,
    Refusal,
    TooManyRequests,
    Unauthenticated,
    UpstreamDown,
)
from secureig.policy.clamps import ClampPolicy
from secureig.policy.engine import Admission, Gatekeeper, Ledger
from secureig.policy.keyring import BOOTSTRAP_KEY, AuthError, BootstrapPolicy, Keyring
from secureig.policy.limits import Limiter, Limits, LocalLimiter
from secureig.policy.operations import SPECS, Operation
from secureig.policy.principal import UNKNOWN_CLIENT, Client, Principal
from secureig.policy.sessions import ConsoleSessions, Session
from secureig.policy.throttle import AuthThrottle

__all__ = [
    "BOOTSTRAP_KEY",
    "SPECS",
    "UNKNOWN_CLIENT",
    "Admission",
    "AuthError",
    "AuthThrottle",
    "BootstrapPolicy",
    "ClampPolicy",
    "Client",
    "ConsoleSessions",
    "Forbidden",
    "Gatekeeper",
    "InvalidModel",
    "InvalidRequest",
    "Keyring",
    "Ledger",
    "Limiter",
    "LimiterDown",
    "Limits",
    "LocalLimiter",
    "ModelNotFound",
    "NoModels",
    "Operation",
    "Principal",
    "Refusal",
    "Session",
    "TooManyRequests",
    "Unauthenticated",
    "UpstreamDown",
]
