"""OpenTelemetry traces, off unless an OTLP endpoint is configured: one span per request, with
the GenAI semantic conventions and the key's name (never a secret or a prompt), a child span for
the upstream call, whose `traceparent` the backend receives.

Spans are exported in batches by the SDK's own thread, off the request path; a collector that
is down costs a log line (at most one a minute), never a request. With tracing off nothing here
is imported, and the request path pays one `is None`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from secureig import __version__

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from secureig.surfaces._asgi import Exchange

log = logging.getLogger("secureig")

# The operation names of the GenAI conventions, by the gateway's route label.
_OPERATIONS = {
    "chat": "chat",
    "generate": "text_completion",
    "embed": "embeddings",
    "embeddings": "embeddings",
}


# Where the SDK says an export failed (its module names have moved between releases).
_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk._shared_internal",
)


class _OncePerMinute(logging.Filter):
    """The exporter logs each failed export; a dead collector is said once a minute."""

    def __init__(self) -> None:
        super().__init__()
        self._last = -60.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        if now - self._last < 60.0:
            return False
        self._last = now
        return True


def traces_endpoint(configured: str | None, environ: dict[str, str]) -> str | None:
    """Where spans go: SECUREIG_OTEL_ENDPOINT, else the standard OTLP variables (a base URL,
    to which /v1/traces is added, or the traces URL itself); None: tracing is off."""
    if configured:
        return configured if configured.rstrip("/").endswith("/v1/traces") else (
            configured.rstrip("/") + "/v1/traces"
        )  # fmt: skip
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return base.rstrip("/") + "/v1/traces" if base else None


class Tracing:
    def __init__(self, endpoint: str) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.context import Context
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError:
            raise RuntimeError(
                "tracing is configured but OpenTelemetry is not installed:"
                " pip install 'secureig[otel]'"
            ) from None
        # Given here, attributes would override OTEL_SERVICE_NAME: it is read first.
        service = os.environ.get("OTEL_SERVICE_NAME") or "secureig"
        resource = Resource.create({"service.name": service, "service.version": __version__})
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=endpoint, timeout=5),
                max_queue_size=4096,  # spans beyond it are dropped, never waited for
                schedule_delay_millis=1000,
                max_export_batch_size=512,
            )
        )
        quiet = _OncePerMinute()
        for name in _EXPORT_LOGGERS:
            logging.getLogger(name).addFilter(quiet)
        self._tracer = self._provider.get_tracer("secureig", __version__)
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._root = Context()  # no parent, whatever context a task happens to run in
        self.endpoint = endpoint

    def request(self, method: str, headers: list[tuple[bytes, bytes]]) -> Span:
        """The request's span: the root of a trace of the gateway's own, always recorded. The
        client's traceparent, when it sent one, is a link to that trace, not its parent: a
        client must not keep its requests out of the traces (an unsampled flag) nor hand the
        backends a tracestate of its choosing."""
        links = []
        for name, value in headers:
            if name == b"traceparent":
                carried = self._propagator.extract({"traceparent": value.decode("latin-1")})
                context = self._trace.get_current_span(carried).get_span_context()
                if context.is_valid:
                    links.append(self._trace.Link(context))
                break
        return self._tracer.start_span(
            method, context=self._root, kind=self._trace.SpanKind.SERVER, links=links,
            attributes={"http.request.method": method},
        )  # fmt: skip

    def upstream(self, parent: Span, backend: str, method: str, path: str) -> tuple[Span, bytes]:
        """The upstream call's span, and the header lines that carry it to the backend."""
        context = self._trace.set_span_in_context(parent)
        span = self._tracer.start_span(
            f"{method} {backend}", context=context, kind=self._trace.SpanKind.CLIENT,
            attributes={"secureig.backend": backend, "http.request.method": method,
                        "url.path": path.partition("?")[0]},
        )  # fmt: skip
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        lines = "".join(f"{name}: {value}\r\n" for name, value in carrier.items())
        return span, lines.encode("latin-1")

    def finish(self, span: Span, ex: Exchange, method: str) -> None:
        """Named and described once the answer is over, from what the request left behind."""
        ledger = ex.ledger
        operation = _OPERATIONS.get(ex.route)
        attributes: dict[str, Any] = {
            "http.response.status_code": ex.status or 499,
            "http.route": ex.route,
            "secureig.surface": ex.surface,
            "secureig.request_id": ex.request_id,
        }
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
        if ex.model:
            attributes["gen_ai.request.model"] = ex.model
        if ex.backend:
            attributes["secureig.backend"] = ex.backend
        if ex.key_name:
            attributes["secureig.key"] = ex.key_name
        if ledger.prompt_tokens or ledger.completion_tokens:
            attributes["gen_ai.usage.input_tokens"] = ledger.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = ledger.completion_tokens
        if ex.outcome:
            attributes["secureig.outcome"] = ex.outcome
        span.set_attributes(attributes)
        name = f"{operation} {ex.model}" if operation and ex.model else f"{method} {ex.route}"
        span.update_name(name)
        status = ex.status or 499
        if status >= 500 or ex.outcome not in (None, "completed"):
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end()

    def shutdown(self, within: float = 5.0) -> None:
        """What is held is sent, for at most `within` seconds."""
        self._provider.force_flush(int(within * 1000))
        self._provider.shutdown()
