"""The one place every request is checked, in one order: key, scope, model allowed, model exists.

Surfaces hand over what they parsed and map the outcome to their own error shape; they never decide
policy themselves. A model the key may not use is refused before anyone looks whether it exists,
so a key cannot probe what the upstream serves.
"""

from __future__ import annotations

from enum import StrEnum

from secureig.credentials import Scope
from secureig.names import InvalidModelName, ModelName, parse_model_name
from secureig.policy.keyring import AuthError, Keyring
from secureig.policy.principal import Principal
from secureig.upstream import ModelCatalog, TagEntry


class Operation(StrEnum):
    GENERATE = "generate"


_SCOPE_FOR: dict[Operation, Scope] = {Operation.GENERATE: Scope.INFERENCE}


class Refusal(Exception):
    """A request the policy turns away; `message` is safe to show the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthenticated(Refusal):
    pass


class Forbidden(Refusal):
    pass


class InvalidModel(Refusal):
    pass


class ModelNotFound(Refusal):
    pass


class UpstreamDown(Refusal):
    """No model list could be had: the upstream is unreachable or serves no models."""


_AUTH_MESSAGES = {
    "missing": "no API key: send it in the X-API-KEY header",
    "unknown": "the API key is not valid",
    "expired": "the API key has expired",
}


class Gatekeeper:
    """Surfaces call authenticate, authorize and locate in this order, each once per request;
    the body is read between the first two, so a stranger's upload costs nothing."""

    def __init__(self, keyring: Keyring, catalog: ModelCatalog) -> None:
        self.keyring = keyring
        self.catalog = catalog

    def authenticate(self, secret: str | None) -> Principal:
        try:
            return self.keyring.authenticate(secret)
        except AuthError as exc:
            raise Unauthenticated(_AUTH_MESSAGES[exc.reason]) from None

    def authorize(self, principal: Principal, operation: Operation, model: str) -> ModelName:
        """Scope, then the model's name, then whether this key may use it."""
        scope = _SCOPE_FOR[operation]
        if not principal.has_scope(scope):
            raise Forbidden(f"the key {principal.name!r} lacks the {scope.value!r} scope")
        try:
            name = parse_model_name(model)
        except InvalidModelName:
            raise InvalidModel(f"invalid model name {model!r}") from None
        if name.is_cloud:
            raise Forbidden(f"model {model!r} is a cloud model; the gateway never forwards those")
        if not principal.allows_model(name.key):
            raise Forbidden(f"the key {principal.name!r} may not use model {model!r}")
        return name

    async def locate(self, name: ModelName, model: str) -> TagEntry:
        entry = await self.catalog.lookup(name.key)
        if entry is not None:
            return entry
        state = self.catalog.state
        if not state.up:
            raise UpstreamDown(f"no models available: {state.error}")
        if not state.models:
            raise UpstreamDown("no models available: the upstream serves none")
        raise ModelNotFound(f"model {model!r} not found")
