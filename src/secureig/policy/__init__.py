"""Policy: who is asking (keys), what they may do (scopes, models, clamps), checked in one place."""

from secureig.policy.clamps import ClampPolicy
from secureig.policy.engine import (
    Admission,
    Forbidden,
    Gatekeeper,
    InvalidModel,
    InvalidRequest,
    ModelNotFound,
    NoModels,
    Refusal,
    Unauthenticated,
    UpstreamDown,
)
from secureig.policy.keyring import BOOTSTRAP_KEY, AuthError, BootstrapPolicy, Keyring
from secureig.policy.operations import SPECS, Operation
from secureig.policy.principal import Principal

__all__ = [
    "BOOTSTRAP_KEY",
    "SPECS",
    "Admission",
    "AuthError",
    "BootstrapPolicy",
    "ClampPolicy",
    "Forbidden",
    "Gatekeeper",
    "InvalidModel",
    "InvalidRequest",
    "Keyring",
    "ModelNotFound",
    "NoModels",
    "Operation",
    "Principal",
    "Refusal",
    "Unauthenticated",
    "UpstreamDown",
]
