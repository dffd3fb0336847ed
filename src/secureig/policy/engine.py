"""The one place every request is checked, in one order: key, scope, model allowed, model exists,
then the option clamps.

Surfaces classify a request into an Operation, hand over Ollama's native body, and map the outcome
to their own error shape; they never decide policy themselves. A model the key may not use is
refused before anyone looks whether it exists, so a key cannot probe what the upstream serves.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

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
from secureig.names import InvalidModelName, ModelName, parse_model_name
from secureig.policy.clamps import (
    ClampError,
    ClampPolicy,
    ClampRefused,
    apply_clamps,
    clamp_parameters,
)
from secureig.policy.keyring import AuthError, Keyring
from secureig.policy.limits import Limiter, LimiterUnavailable, RateLimited, Ticket
from secureig.policy.operations import SPECS, Operation, OperationSpec, Rule
from secureig.policy.principal import BOOTSTRAP, Client, Principal
from secureig.policy.throttle import AuthThrottle
from secureig.policy.tokens import estimate_prompt_tokens
from secureig.routing import Fleet
from secureig.untrusted import shown
from secureig.upstream import TagEntry

log = logging.getLogger("secureig")


@dataclass(slots=True)
class Ledger:
    """One request's account, filled as it goes: who, what it holds, what it used. The layer
    above hands it to `admit` and settles it with `settle` once the response is over.

    Tokens are the upstream's own counts, which come on an answer's final line. An answer cut
    short before it (the client left, the upstream broke off), or one whose counts never came
    or cannot be counts (negative, or beyond 2**31: a backend must not refund a budget), is
    charged what was forwarded: Ollama streams a token per line, so the lines counted in
    `chunks`, and a prompt estimated from its text where the upstream never said; `estimated`
    then marks the record.
    """

    principal: Principal | None = None
    ticket: Ticket | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None  # the model's display name, once the policy parsed it
    chunks: int = 0  # answer lines (tokens) received from the upstream
    reported: bool = False  # the upstream's final counts arrived
    estimated: bool = False
    operation: Operation | None = None
    body: dict[str, Any] | None = None  # the native body sent upstream, for an estimate
    # A count that came but cannot be one: neither is taken on the upstream's word then.
    untrusted: bool = False

    def count_tokens(self, prompt: object, completion: object) -> None:
        """Take the upstream's own counts (prompt_eval_count, eval_count) when it reports them
        and they can be counts."""
        if prompt is not None or completion is not None:
            prompt_count, completion_count = _tokens(prompt), _tokens(completion)
            if (prompt is not None and prompt_count is None) or (
                completion is not None and completion_count is None
            ):
                self.untrusted = True
            if prompt_count is not None:
                self.prompt_tokens = prompt_count
            if completion_count is not None:
                self.completion_tokens = completion_count
            self.reported = (
                prompt_count is not None or completion_count is not None
            ) and not self.untrusted

    def charge_unreported(self) -> None:
        """The answer ended without the upstream's counts (or with counts that cannot be):
        charge the lines it forwarded and an estimate of the prompt. A no-op for answers that
        were counted, or that were no inference."""
        if self.reported or self.operation is None:
            return
        self.completion_tokens = max(self.completion_tokens, self.chunks)
        if not self.prompt_tokens and self.body is not None:
            self.prompt_tokens = estimate_prompt_tokens(self.operation, self.body)
        self.estimated = bool(self.prompt_tokens or self.completion_tokens)


_MAX_TOKENS = 2**31


def _tokens(value: object) -> int | None:
    """A token count as an upstream gives it, when it can be one."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_TOKENS:
        return value
    return None


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
    # The catalogue's key for it: what the router routes by (an engine's exact id, or the name's).
    upstream_key: str | None = None

    @property
    def key(self) -> str:
        return self.upstream_key or self.models[0].key

    @property
    def model(self) -> str | None:
        """The model's one spelling for logs, metrics and usage: the upstream's, where known."""
        if self.upstream is not None:
            return self.upstream.name
        return self.models[0].display if self.models else None


class Gatekeeper:
    """Surfaces call `authenticate` and `check_scope` before reading a body (a stranger's upload
    costs nothing), then `admit` once with the parsed body; `admit` repeats the scope check, so
    no surface can skip it."""

    def __init__(
        self,
        keyring: Keyring,
        catalog: Fleet,
        clamps: ClampPolicy,
        limiter: Limiter,
        throttle: AuthThrottle,
    ) -> None:
        self.keyring = keyring
        self.catalog = catalog
        self.limiter = limiter
        self._clamps = clamps
        self._throttle = throttle
        self._outside_logged: dict[str, float] = {}

    def authenticate(self, secret: str | None, client: Client, ledger: Ledger) -> Principal:
        """The key's principal. An address that keeps failing is refused before anything else,
        but never a request that carries a valid key."""
        try:
            principal = self.keyring.authenticate(secret)
        except AuthError as exc:
            raise self.failed_authentication(client.address, _AUTH_MESSAGES[exc.reason]) from None
        self.check_origin(principal, client)
        ledger.principal = principal
        return principal

    def check_origin(
        self, principal: Principal, client: Client, message: str = _AUTH_MESSAGES["unknown"]
    ) -> None:
        """A key may be used from where it may be used: its own networks, and for the
        well-known bootstrap key this machine only, directly. Refused as a wrong key is, so
        whoever holds a copy learns nothing from trying it elsewhere."""
        networks = principal.networks
        if networks is not None and client.address not in networks:
            self._outside(
                principal.name, client.address, "outside the networks it may be used from"
            )
            raise self.failed_authentication(client.address, message)
        if principal is BOOTSTRAP and not client.local and self.keyring.bootstrap_local_only:
            where = "through a proxy or from another machine (it serves this one directly only)"
            self._outside(principal.name, client.address, where)
            raise self.failed_authentication(client.address, message)

    def _outside(self, name: str, address: str, where: str) -> None:
        # The operator's clue to a refused key, at most a line a minute per key.
        now = time.monotonic()
        if now - self._outside_logged.get(name, -60.0) >= 60.0:
            if len(self._outside_logged) >= 1024:
                self._outside_logged.clear()
            self._outside_logged[name] = now
            log.warning("key %r used from %s, %s: refused as an invalid key", name, address, where)

    def check_throttle(self, address: str) -> None:
        """Refuse an address that has failed too often, before any work on its credential (a
        console session is looked up in the store)."""
        wait = self._throttle.blocked(address)
        if wait is not None:
            raise TooManyRequests("too many failed authentications from this address", wait)

    def failed_authentication(self, address: str, message: str) -> Refusal:
        """A credential that failed: counted against the address; the refusal to raise."""
        wait = self._throttle.blocked(address)
        if wait is not None:
            return TooManyRequests("too many failed authentications from this address", wait)
        self._throttle.failed(address)
        return Unauthenticated(message)

    @staticmethod
    def check_scope(principal: Principal, operation: Operation) -> None:
        scopes = SPECS[operation].scopes
        if not principal.has_any_scope(scopes):
            wanted = " or ".join(sorted(f"'{s.value}'" for s in scopes))
            raise Forbidden(f"the key {principal.name!r} lacks the {wanted} scope")

    @staticmethod
    def check_model(
        principal: Principal, model: str, param: str = "model", ledger: Ledger | None = None
    ) -> ModelName:
        """Is this a model name, not a cloud model, and one this key may use? The first name a
        request names is noted in its ledger once it parses, refused or not, for the log."""
        try:
            name = parse_model_name(model)
        except InvalidModelName:
            raise InvalidModel(f"invalid model name {shown(model)}", param) from None
        if ledger is not None and ledger.model is None:
            ledger.model = name.display
        if name.is_cloud:
            raise Forbidden(f"model {model!r} is a cloud model; the gateway never forwards those")
        if not principal.allows_model(name):
            raise Forbidden(f"the key {principal.name!r} may not use model {model!r}", param)
        return name

    def visible(self, principal: Principal, model: str) -> bool:
        """Whether a listing may show this model to this key."""
        try:
            name = parse_model_name(model)
        except InvalidModelName:
            return False
        return not name.is_cloud and principal.allows_model(name)

    async def locate(self, name: ModelName, model: str) -> tuple[str, TagEntry]:
        """The model as the catalogue knows it, and its key there."""
        found = await self.catalog.lookup(name, model)
        if found is not None:
            return found
        state = self.catalog.state
        if not state.up:
            raise UpstreamDown(f"no models available: {state.error}")
        if not state.models:
            raise NoModels("no models available: the upstream serves none", "model")
        raise ModelNotFound(f"model {model!r} not found", "model")

    async def admit(
        self,
        principal: Principal,
        operation: Operation,
        ledger: Ledger,
        body: dict[str, Any] | None = None,
    ) -> Admission:
        """Check everything about one request; clamps rewrite `body` in place. Last, the key's
        limits: what is refused before this point consumes no budget."""
        spec = SPECS[operation]
        self.check_scope(principal, operation)
        body = body if body is not None else {}
        if not body.keys() <= spec.plain_fields:
            _check_fields(principal, spec, body)
        admission = await self._models(principal, operation, spec, body, ledger)
        self._clamp(principal, operation, spec, body, ledger)
        if operation is Operation.CREATE:
            try:
                clamp_parameters(principal, body)
            except ClampError as exc:
                raise InvalidRequest(str(exc), "parameters") from None
        await self._limit(principal, ledger)
        return admission

    async def admit_model(
        self, principal: Principal, operation: Operation, ledger: Ledger, model: str
    ) -> Admission:
        """A request the gateway must translate, before it is translated: scope, model (allowed,
        then served) and the key's limits, so that a body nobody may send, or too many of them,
        costs no translation. `admit_body` checks the native body it becomes."""
        spec = SPECS[operation]
        self.check_scope(principal, operation)
        admission = await self._models(principal, operation, spec, {"model": model}, ledger)
        await self._limit(principal, ledger)
        return admission

    def admit_body(self, admission: Admission, ledger: Ledger, body: dict[str, Any]) -> None:
        """The native body a translation made of an admitted request: its fields, the model it
        names (the one admitted), and the clamps, which rewrite it in place."""
        principal, operation = admission.principal, admission.operation
        spec = SPECS[operation]
        if not body.keys() <= spec.plain_fields:
            _check_fields(principal, spec, body)
        model = body.get("model")
        if not isinstance(model, str) or parse_model_name(model).key != admission.models[0].key:
            raise InvalidRequest("the translated request names another model", "model")
        self._clamp(principal, operation, spec, body, ledger)

    async def _models(
        self,
        principal: Principal,
        operation: Operation,
        spec: OperationSpec,
        body: dict[str, Any],
        ledger: Ledger,
    ) -> Admission:
        names: list[tuple[ModelName, str]] = []
        for field in spec.models:
            value = next((body[n] for n in field.names if body.get(n)), None)
            if value is None:
                if field.required:
                    raise InvalidRequest(f"{field.names[0]} is required", field.names[0])
                continue
            if not isinstance(value, str):
                raise InvalidRequest(f"{field.names[0]} must be a string", field.names[0])
            names.append((self.check_model(principal, value, field.names[0], ledger), value))
        upstream = upstream_key = None
        if spec.must_exist:
            upstream_key, upstream = await self.locate(*names[0])
        return Admission(principal, operation, tuple(n for n, _ in names), upstream, upstream_key)

    def _clamp(
        self,
        principal: Principal,
        operation: Operation,
        spec: OperationSpec,
        body: dict[str, Any],
        ledger: Ledger,
    ) -> None:
        if not spec.inference:
            return
        try:
            apply_clamps(principal, operation, body, self._clamps)
        except ClampError as exc:
            raise InvalidRequest(str(exc)) from None
        except ClampRefused as exc:
            raise Forbidden(str(exc)) from None
        ledger.operation, ledger.body = operation, body

    async def _limit(self, principal: Principal, ledger: Ledger) -> None:
        if principal.limits.any:
            try:
                ledger.ticket = await self.limiter.acquire(principal.subject, principal.limits)
            except RateLimited as exc:
                raise TooManyRequests(str(exc), exc.retry_after, exc.headers) from None
            except LimiterUnavailable as exc:
                raise LimiterDown(str(exc)) from None

    async def settle(self, ledger: Ledger) -> None:
        """The request is over: give back its slot and charge its tokens."""
        if ledger.ticket is not None:
            ticket, ledger.ticket = ledger.ticket, None
            await self.limiter.release(ticket, ledger.prompt_tokens + ledger.completion_tokens)


def _check_fields(principal: Principal, spec: OperationSpec, body: dict[str, Any]) -> None:
    """Every field of the body is one the operation lists, and allowed for this key. A field the
    policy restricts but the body leaves empty (false, "", null) is dropped: it asks nothing."""
    for name in list(body):
        rule = spec.fields.get(name)
        if rule is None:
            hint = (
                " (field names are lower case, in ASCII)"
                if name != name.lower() or not name.isascii()
                else ""
            )
            raise InvalidRequest(f"unknown field {shown(name, 64)}{hint}", name[:64])
        if rule.rule is Rule.FORWARD:
            continue
        value = body[name]
        if value is None or value is False or value == "":
            del body[name]
        elif rule.rule is Rule.NEVER:
            raise Forbidden(f"field {name!r} is never forwarded: {rule.why}", name)
        elif not principal.is_admin:
            raise Forbidden(f"field {name!r} needs a key with the admin scope: {rule.why}", name)
