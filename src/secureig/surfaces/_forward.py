"""How a request reaches a backend: the one forwarding path every surface calls.

    async with forwarder.open(receive, exchange, call) as answer:
        ...stream `answer` out in the surface's own shape...

Entering the block watches for the client leaving (which cancels it), asks the router for a
backend, sends, and fails over: a backend that fails before its answer began (refused, reset, no
answer, 502 or 503) is left for the next candidate, each at most once, for calls that may be
retried. What the block gets is an answer whose status is below 400; any other status, and every
failure, is raised as a `secureig.errors` error for the surface to render. Leaving the block hands
the connection and the backend's slot back. After the answer began nothing is retried: the
surface ends its stream with its own mid-stream error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from secureig.credentials import Scope as KeyScope
from secureig.errors import (
    Forbidden,
    GatewayError,
    RequestError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from secureig.policy import Admission, Operation, Principal
from secureig.routing import Affinity, Backend, Fleet, Router, Slot
from secureig.surfaces._asgi import (
    CancelOnDisconnect,
    ClientGone,
    Exchange,
    Receive,
    Scope,
    header,
    json_bytes,
)
from secureig.untrusted import shown
from secureig.upstream import Answer, Pending

if TYPE_CHECKING:
    from secureig.tracing import Tracing

# Statuses after which another backend is asked: the backend's own trouble, not the request's.
_RETRY_STATUSES = frozenset({502, 503})
PIN_HEADER = b"x-secureig-backend"
_PIN_SCOPES = frozenset({KeyScope.MANAGE})


class Target(Enum):
    INFERENCE = "inference"  # the best candidate for the model; counts against caps
    MODEL = "model"  # a backend that lists the model (any that is up, if none does)
    ANY = "any"  # any backend that is up
    PINNED = "pinned"  # exactly `Call.backend`


@dataclass(slots=True)
class Call:
    """One request to a backend, as the surface hands it over after policy."""

    method: str
    path: str
    body: bytes | AsyncIterable[bytes] | None
    target: Target
    model: str = ""  # its display name, for messages
    model_key: str | None = None
    subject: str = ""  # whose turn it is in the fair queue: the key
    backend: Backend | None = None  # for PINNED
    retry: bool = True  # may go to another backend if the first fails before answering
    whole: bool = False  # the answer is one JSON object, however long its line
    affinity: bytes | None = None  # the conversation, when it continues one
    continues: bool = False


class Forwarder:
    def __init__(
        self, router: Router, max_answer_bytes: int, tracing: Tracing | None = None
    ) -> None:
        self.router = router
        self.tracing = tracing
        self.fleet: Fleet = router.fleet
        self.max_answer_bytes = max_answer_bytes
        self._names = ", ".join(b.name for b in self.fleet.backends)
        self.streams = 0  # generations streaming their answer now

    def open(self, receive: Receive, ex: Exchange, call: Call) -> _Open:
        return _Open(self, receive, ex, call)

    def pinned(self, scope: Scope, principal: Principal) -> Backend | None:
        """The backend `X-Secureig-Backend` names, for a key that may choose one."""
        name = header(scope, PIN_HEADER)
        if name is None:
            return None
        # The scope first: a key that may not choose a backend learns nothing of their names.
        if not principal.has_any_scope(_PIN_SCOPES):
            raise Forbidden(
                f"the key {principal.name!r} lacks the 'manage' scope that choosing a backend"
                " with X-Secureig-Backend needs"
            )
        backend = self.fleet.by_name.get(name.strip())
        if backend is None:
            raise RequestError(
                f"X-Secureig-Backend names no backend {shown(name, 64)}; the backends are"
                f" {self._names}",
                "X-Secureig-Backend",
            )
        return backend

    def management(
        self,
        scope: Scope,
        principal: Principal,
        method: str,
        path: str,
        body: bytes | AsyncIterable[bytes] | None,
    ) -> Call:
        """A call to exactly one backend, the one named or the only one there is, never retried:
        a pull or a delete must not happen twice, or somewhere nobody asked for."""
        backend = self.pinned(scope, principal)
        if backend is None:
            backend = self.fleet.single
            if backend is None:
                raise RequestError(
                    f"{method} {path} acts on one backend of several: name it in the"
                    f" X-Secureig-Backend header (one of {self._names})",
                    "X-Secureig-Backend",
                )
        if backend.kind != "ollama":
            raise RequestError(
                f"{method} {path} manages an Ollama server's models; backend {backend.name} is an"
                " OpenAI-compatible engine, whose models are its own configuration",
                "X-Secureig-Backend",
            )
        return Call(method, path, body, Target.PINNED, backend=backend, retry=False)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None,
        target: Target,
        model: str = "",
        model_key: str | None = None,
    ) -> Call:
        return Call(method, path, body, target, model=model, model_key=model_key)  # fmt: skip

    async def gather(self, path: str) -> list[tuple[Backend, int, bytes]]:
        """`GET path` from every backend that is up, at once: listings across the fleet. Each
        answer's status and body; a backend that fails is left out, unless all do."""
        up = [b for b in self.fleet.backends if b.up]
        if not up:
            await self.fleet.recheck()
            up = [b for b in self.fleet.backends if b.up] or list(self.fleet.backends)
        answers = await asyncio.gather(*(self._get(b, path) for b in up), return_exceptions=True)
        got: list[tuple[Backend, int, bytes]] = []
        failure: BaseException | None = None
        for backend, answer in zip(up, answers, strict=True):
            if isinstance(answer, UpstreamError):
                failure = failure or answer
                if isinstance(answer, UpstreamUnavailable):
                    self.fleet.passive_down(backend, str(answer))
            elif isinstance(answer, BaseException):
                raise answer
            else:
                got.append((backend, *answer))
        if not got and failure is not None:
            raise failure
        return got

    @staticmethod
    async def _get(backend: Backend, path: str) -> tuple[int, bytes]:
        async with backend.client.request("GET", path) as raw:
            return raw.status, await raw.read()

    def inference(
        self,
        admission: Admission,
        path: str,
        body: dict[str, Any],
        requested: str,
        pinned: Backend | None,
    ) -> Call:
        """A generation or an embedding: routed by the model, retried before the answer began."""
        key = admission.key
        subject = admission.principal.subject
        call = Call(
            "POST", path, json_bytes(body),
            Target.PINNED if pinned is not None else Target.INFERENCE,
            model=requested, model_key=key, subject=subject, backend=pinned,
            whole=body.get("stream") is False,
        )  # fmt: skip
        if admission.operation is Operation.CHAT and len(self.fleet.backends) > 1:
            found = Affinity.fingerprint(subject, key, body)
            if found is not None:
                call.affinity, call.continues = found
        return call

    def _take(self, call: Call) -> Slot | None:
        """A place at once, for a first try that needs no waiting (most requests)."""
        target = call.target
        if target is Target.INFERENCE:
            prefer = None
            if call.affinity is not None and call.continues:
                prefer = self.router.affinity.get(call.affinity)
            return self.router.take(call.model_key, prefer=prefer)
        if target is Target.ANY:
            return self.router.take(None, counted=False)
        return None

    async def _slot(self, call: Call, tried: tuple[Backend, ...]) -> Slot:
        router = self.router
        if call.target is Target.PINNED:
            assert call.backend is not None
            # Pinned inference still waits its turn for the backend's places.
            counted = call.model_key is not None and call.retry
            return await router.acquire(
                call.model_key, call.model, call.subject, tried=tried, counted=counted,
                only=call.backend,
            )  # fmt: skip
        if call.target is Target.INFERENCE:
            prefer = None
            if call.affinity is not None and call.continues:
                prefer = router.affinity.get(call.affinity)
            return await router.acquire(
                call.model_key, call.model, call.subject, tried=tried, prefer=prefer
            )
        key = call.model_key
        if call.target is Target.MODEL and key is not None and not router.candidates(key, tried):
            key = None  # nobody lists it: any backend answers for itself (a 404, most likely)
        if call.target is Target.ANY:
            key = None
        return await router.acquire(key, call.model, call.subject, tried=tried, counted=False)


class _Open:
    """The context manager `Forwarder.open` returns (a plain class: every request enters one)."""

    __slots__ = (
        "_call", "_ex", "_exchange", "_forwarder", "_slot", "_span", "_streaming", "_watch",
    )  # fmt: skip
    _watch: CancelOnDisconnect | None

    def __init__(self, forwarder: Forwarder, receive: Receive, ex: Exchange, call: Call) -> None:
        self._forwarder = forwarder
        self._ex = ex
        self._call = call
        # A streamed upload reads `receive` itself: nothing else may, and its end is its own watch.
        self._watch = (
            None if isinstance(call.body, AsyncIterable) else CancelOnDisconnect(receive, ex)
        )
        self._slot: Slot | None = None
        self._exchange: Pending | None = None
        self._streaming = False
        self._span: Any = None  # the upstream call's, when tracing is on

    async def __aenter__(self) -> Answer:
        watch = self._watch
        if watch is not None:
            await watch.__aenter__()
        try:
            answer = await self._send()
        except BaseException as exc:
            if isinstance(exc, GatewayError) and exc.model is None:
                exc.model = self._call.model
            self._let_go()
            if watch is None or not await watch.__aexit__(type(exc), exc, None):
                raise
            raise ClientGone from None
        call = self._call
        if not call.whole and call.model_key is not None:
            self._streaming = True
            self._forwarder.streams += 1
        return answer

    async def _send(self) -> Answer:
        call, ex, forwarder = self._call, self._ex, self._forwarder
        tried: tuple[Backend, ...] = ()
        last: UpstreamError | None = None
        while True:
            try:
                slot = forwarder._take(call) if not tried else None
                if slot is None:
                    slot = await forwarder._slot(call, tried)
            except UpstreamError:
                # Nowhere else to go. What the backend itself said says more, unless several
                # were tried and the router can say why each is out.
                if last is not None and (
                    len(tried) == 1 or isinstance(last, UpstreamStatusError | UpstreamTimeout)
                ):
                    raise last from None
                raise
            self._slot = slot
            backend = slot.backend
            ex.backend = backend.name
            extra = b""
            tracing = forwarder.tracing
            if tracing is not None and ex.span is not None:
                self._end_span()  # a failover's earlier try
                self._span, extra = tracing.upstream(ex.span, backend.name, call.method, call.path)
            exchange = backend.client.request(
                call.method, call.path, call.body, whole=call.whole, extra=extra
            )
            try:
                raw = await exchange.__aenter__()
            except UpstreamError as exc:
                self._let_go()
                if isinstance(exc, UpstreamUnavailable):
                    forwarder.fleet.passive_down(backend, str(exc))
                if not call.retry or not isinstance(exc, UpstreamUnavailable | UpstreamTimeout):
                    raise
                backend.failovers += 1
                tried, last = (*tried, backend), exc
                continue
            self._exchange = exchange
            ex.upstream_seconds = raw.waited
            if not backend.up:
                forwarder.fleet.passive_up(backend)
            if raw.status < 400:
                if slot.waited:
                    ex.queue_seconds = slot.waited
                return raw
            message = await raw.error_message()
            self._let_go()
            error = UpstreamStatusError(raw.status, message)
            if raw.status == 503:
                backend.mark_busy(f"answered 503: {message}"[:300])
            elif raw.status != 404:
                # Its words stay with the operator (/admin/backends), not every key.
                backend.note(f"answered {raw.status} to {call.method} {call.path}: {message}")
            if call.retry and raw.status in _RETRY_STATUSES:
                backend.failovers += 1
                tried, last = (*tried, backend), error
                continue
            raise error

    def _end_span(self) -> None:
        span, self._span = self._span, None
        if span is not None:
            span.end()

    def _let_go(self) -> None:
        """Hand back the connection and the slot (each once)."""
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange.release()
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()
        if self._span is not None:
            self._end_span()

    async def __aexit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> bool:
        call, slot = self._call, self._slot
        if self._streaming:
            self._streaming = False
            self._forwarder.streams -= 1
        if isinstance(exc, GatewayError) and exc.model is None:
            exc.model = call.model
        if kind is None and slot is not None and call.model_key is not None:
            slot.backend.answered(call.model_key)
            if call.affinity is not None:
                self._forwarder.router.affinity.put(call.affinity, slot.backend.name)
        self._let_go()
        watch = self._watch
        return watch is not None and await watch.__aexit__(kind, exc, tb)
