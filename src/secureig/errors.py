"""The gateway's one error model: every refusal and every upstream failure, with its HTTP status.

    GatewayError                 message (safe to show), param, headers
    ├── RequestError             400  the request itself is malformed (the surface found it)
    │   ├── RouteNotFound        404
    │   ├── MethodNotAllowed     405  (+ Allow)
    │   └── BodyTooLarge         413  (+ Connection: close: an oversized upload is not drained)
    ├── Refusal                       the policy turns the request away
    │   ├── Unauthenticated      401
    │   ├── Forbidden            403
    │   ├── InvalidRequest       400
    │   │   └── InvalidModel     400
    │   ├── ModelNotFound        404
    │   │   └── NoModels         404  the upstreams answer, and serve no models at all
    │   ├── TooManyRequests      429  (+ Retry-After)
    │   └── LimiterDown          503  the shared limiter cannot be reached
    └── UpstreamError                 no backend answered as asked
        ├── UpstreamUnavailable  502  unreachable, refused, reset before answering
        │   └── UpstreamDown     502  no model list could be had at all
        ├── UpstreamBusy         503  every candidate is at its cap or busy (+ Retry-After)
        ├── UpstreamTimeout      504
        ├── UpstreamStatusError  the backend's own status and message
        ├── UpstreamStreamError  502  broke off, or reported an error, after the answer began
        └── UpstreamTooLarge     502  a line or an answer larger than the gateway accepts

Surfaces raise and catch these; each only renders them in its own shape (plain text, Ollama's
`{"error"}`, OpenAI's envelope), from `status` and, where its clients tell errors apart by kind,
from the class. Nothing else in the gateway picks a status for a failure.

An UpstreamError's `message` may name backends and quote their own words; a key without the
admin scope reads its `public()` text instead (`surfaces._asgi.for_client`): what was said of
it without a backend's name or a credential it may hold, or else its class's reason. The detail
goes to the log and to `/admin/backends`.
"""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]


class GatewayError(Exception):
    """A request the gateway answers with an error; `message` is safe to show the client."""

    status = 500
    model: str | None = None  # the model the request named, where a message should say it

    def __init__(
        self, message: str, param: str | None = None, headers: Headers | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: Headers = headers or []


# ---- the request itself ------------------------------------------------------------------------


class RequestError(GatewayError):
    status = 400

    def __init__(
        self,
        message: str,
        param: str | None = None,
        headers: Headers | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message, param, headers)
        if status is not None:
            self.status = status


class RouteNotFound(RequestError):
    status = 404


class MethodNotAllowed(RequestError):
    status = 405

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message, headers=[(b"allow", allow.encode())])
        self.allow = allow


class BodyTooLarge(RequestError):
    status = 413

    def __init__(self, limit: int, what: str = "request body") -> None:
        super().__init__(
            f"{what} is larger than {limit} bytes", headers=[(b"connection", b"close")]
        )
        self.limit = limit


# ---- the policy ----------------------------------------------------------------------------------


class Refusal(GatewayError):
    """A request the policy turns away."""

    status = 403


class Unauthenticated(Refusal):
    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers=[(b"www-authenticate", b"Bearer")])


class Forbidden(Refusal):
    status = 403


class InvalidRequest(Refusal):
    """The body is malformed where the policy reads it: a model name, keep_alive, options."""

    status = 400


class InvalidModel(InvalidRequest):
    pass


class ModelNotFound(Refusal):
    status = 404


class NoModels(ModelNotFound):
    """The upstreams answer but serve no models at all."""


class TooManyRequests(Refusal):
    """A limit is reached (or the address failed authentication too often)."""

    status = 429

    def __init__(self, message: str, retry_after: int, headers: Headers | None = None) -> None:
        super().__init__(message, headers=[*(headers or []), _retry_after(retry_after)])
        self.retry_after = retry_after


class LimiterDown(Refusal):
    """The shared limiter cannot be reached; keys with limits wait for it."""

    status = 503


# ---- the backends --------------------------------------------------------------------------------


class UpstreamError(GatewayError):
    """Anything that kept a backend from answering as asked. `public`: what any key may read
    of it, when the message itself may not be (the class's reason otherwise)."""

    status = 502
    reason = "the backend could not answer"

    def __init__(
        self,
        message: str,
        param: str | None = None,
        headers: Headers | None = None,
        public: str | None = None,
    ) -> None:
        super().__init__(message, param, headers)
        self._public = public

    def public(self) -> str:
        """What any key may read: no backend's name, address or credentials."""
        return self._public if self._public is not None else self.reason


class UpstreamUnavailable(UpstreamError):
    """No backend could be reached (refused, unresolvable, reset before answering)."""

    reason = "no backend could be reached"


class UpstreamDown(UpstreamUnavailable):
    """No model list could be had: every backend is unreachable."""

    reason = "no models available: no backend can be reached"


class UpstreamBusy(UpstreamError):
    """Every candidate backend is at its cap or said it is busy, for longer than a request waits."""

    status = 503
    reason = "every backend that serves this model is busy; try again shortly"

    def __init__(self, message: str, retry_after: int = 1, public: str | None = None) -> None:
        super().__init__(message, headers=[_retry_after(retry_after)], public=public)
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError):
    """The backend did not connect or answer within the configured timeouts."""

    status = 504
    reason = "the backend did not answer in time"


class UpstreamStatusError(UpstreamError):
    """The backend answered with an error status: `status` is its own, `message` its own text,
    both passed on as they came (a proxy relays what the backend said)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def public(self) -> str:
        # A 400, 404, 429 or 503 is about the request or the load (a model without tools, a
        # model not there, too many at once, "server busy"): its words are the client's to
        # read. Any other status (a 401 naming a service account, a 500 with a stack trace) is
        # about the backend.
        if self.status in _ABOUT_THE_REQUEST:
            return self.message
        if self.status < 500:
            return f"the backend refused the request ({self.status})"
        return f"the backend failed ({self.status})"


_ABOUT_THE_REQUEST = frozenset({400, 404, 429, 503})


class UpstreamStreamError(UpstreamError):
    """The backend broke off, or reported an error, after its answer had started."""

    reason = "the backend broke off its answer"


class UpstreamTooLarge(UpstreamError):
    """The backend sent a line, or an answer held whole, larger than the gateway accepts."""

    reason = "the backend sent more than the gateway accepts"

    def public(self) -> str:
        return self.message  # the gateway's own words, of sizes only

    @classmethod
    def answer(cls, limit: int) -> UpstreamTooLarge:
        return cls(
            f"upstream sent an answer larger than {limit} bytes, more than the gateway accepts"
        )


def _retry_after(seconds: int) -> tuple[bytes, bytes]:
    return (b"retry-after", str(max(0, seconds)).encode())
