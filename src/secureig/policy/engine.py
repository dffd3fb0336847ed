"""The one place every request is checked, in one order: key, scope, model allowed, model exists,
then the option clamps.

Surfaces classify a request into an Operation, hand over Ollama's native body, and map the outcome
to their own error shape; they never decide policy themselves. A model the key may not use is
refused before anyone looks whether it exists, so a key cannot probe what the upstream serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from secureig.names import InvalidModelName, ModelName, parse_model_name
from secureig.policy.clamps import ClampError, ClampPolicy, ClampRefused, apply_clamps
from secureig.policy.keyring import AuthError, Keyring
from secureig.policy.operations import SPECS, Operation
from secureig.policy.principal import Principal
from secureig.upstream import ModelCatalog, TagEntry


class Refusal(Exception):
    """A request the policy turns away; `message` is safe to show the client."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class Unauthenticated(Refusal):
    pass


class Forbidden(Refusal):
    pass


class InvalidRequest(Refusal):
    """The body is malformed where the policy reads it: a model name, keep_alive, options."""


class InvalidModel(InvalidRequest):
    pass


class ModelNotFound(Refusal):
    pass


class NoModels(ModelNotFound):
    """The upstream answers but serves no models at all."""


class UpstreamDown(Refusal):
    """No model list could be had: the upstream is unreachable."""


_AUTH_MESSAGES = {
    "missing": "no API key: send it in the X-API-KEY header or as Authorization: Bearer",
    "unknown": "the API key is not valid",
    "expired": "the API key has expired",
}


@dataclass(frozen=True, slots=True)
class Admission:
    principal: Principal
    operation: Operation
    models: tuple[ModelName, ...]
    upstream: TagEntry | None  # the discovered model, for operations that need it to exist


class Gatekeeper:
    """Surfaces call `authenticate` and `check_scope` before reading a body (a stranger's upload
    costs nothing), then `admit` once with the parsed body; `admit` repeats the scope check, so
    no surface can skip it."""

    def __init__(self, keyring: Keyring, catalog: ModelCatalog, clamps: ClampPolicy) -> None:
        self.keyring = keyring
        self.catalog = catalog
        self._clamps = clamps

    def authenticate(self, secret: str | None) -> Principal:
        try:
            return self.keyring.authenticate(secret)
        except AuthError as exc:
            raise Unauthenticated(_AUTH_MESSAGES[exc.reason]) from None

    @staticmethod
    def check_scope(principal: Principal, operation: Operation) -> None:
        scopes = SPECS[operation].scopes
        if not principal.has_any_scope(scopes):
            wanted = " or ".join(sorted(f"'{s.value}'" for s in scopes))
            raise Forbidden(f"the key {principal.name!r} lacks the {wanted} scope")

    @staticmethod
    def check_model(principal: Principal, model: str, param: str = "model") -> ModelName:
        """Is this a model name, not a cloud model, and one this key may use?"""
        try:
            name = parse_model_name(model)
        except InvalidModelName:
            raise InvalidModel(f"invalid model name {model!r}", param) from None
        if name.is_cloud:
            raise Forbidden(f"model {model!r} is a cloud model; the gateway never forwards those")
        if not principal.allows_model(name.key):
            raise Forbidden(f"the key {principal.name!r} may not use model {model!r}", param)
        return name

    def visible(self, principal: Principal, model: str) -> bool:
        """Whether a listing may show this model to this key."""
        try:
            name = parse_model_name(model)
        except InvalidModelName:
            return False
        return not name.is_cloud and principal.allows_model(name.key)

    async def locate(self, name: ModelName, model: str) -> TagEntry:
        entry = await self.catalog.lookup(name.key)
        if entry is not None:
            return entry
        state = self.catalog.state
        if not state.up:
            raise UpstreamDown(f"no models available: {state.error}")
        if not state.models:
            raise NoModels("no models available: the upstream serves none", "model")
        raise ModelNotFound(f"model {model!r} not found", "model")

    async def admit(
        self, principal: Principal, operation: Operation, body: dict[str, Any] | None = None
    ) -> Admission:
        """Check everything about one request; clamps rewrite `body` in place."""
        spec = SPECS[operation]
        self.check_scope(principal, operation)
        body = body if body is not None else {}
        names: list[tuple[ModelName, str]] = []
        for field in spec.models:
            value = next((body[n] for n in field.names if body.get(n)), None)
            if value is None:
                if field.required:
                    raise InvalidRequest(f"{field.names[0]} is required", field.names[0])
                continue
            if not isinstance(value, str):
                raise InvalidRequest(f"{field.names[0]} must be a string", field.names[0])
            names.append((self.check_model(principal, value, field.names[0]), value))
        upstream = None
        if spec.must_exist:
            upstream = await self.locate(*names[0])
        if spec.inference:
            try:
                apply_clamps(principal, operation, body, self._clamps)
            except ClampError as exc:
                raise InvalidRequest(str(exc)) from None
            except ClampRefused as exc:
                raise Forbidden(str(exc)) from None
        return Admission(principal, operation, tuple(n for n, _ in names), upstream)
