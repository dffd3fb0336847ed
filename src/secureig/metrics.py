"""Prometheus metrics: one registry per gateway, names starting with `secureig_`.

Labels are bounded: a surface and an operation (never a raw path or a key), a status code, a model,
a backend's configured name.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from secureig.routing import Backend, Router

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip


# `*_created` series double the output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


# Bucket bounds as Prometheus writes them ("1.0", "+Inf").
_BOUNDS: list[str] = [
    floatToGoString(b)  # type: ignore[no-untyped-call]
    for b in (*_LATENCY_BUCKETS, float("inf"))
]


class _Histogram:
    """One label set's buckets, kept as plain numbers: observing is a bisect and two additions,
    with no lock (the event loop is the only writer)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(_LATENCY_BUCKETS, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, out = 0, []
        for bound, count in zip(_BOUNDS, self.counts, strict=True):
            cumulative += count
            out.append((bound, float(cumulative)))
        return out


class _PerRequest:
    """The metrics every request touches, read by Prometheus only when it scrapes."""

    def __init__(self) -> None:
        self.active = 0
        self.requests: dict[tuple[str, str, str], int] = {}
        self.duration: dict[tuple[str, str], _Histogram] = {}
        self.ttfb: dict[tuple[str, str], _Histogram] = {}
        self.tokens: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "secureig_requests", "Requests answered.", labels=["surface", "route", "status"]
        )
        for triple, count in self.requests.items():
            requests.add_metric(triple, count)
        yield requests
        for name, doc, series in (
            ("secureig_request_duration_seconds", "Time from request to the end of the answer.",
             self.duration),
            ("secureig_time_to_first_byte_seconds",
             "Time from request to the answer's first byte.", self.ttfb),
        ):  # fmt: skip
            family = HistogramMetricFamily(name, doc, labels=["surface", "route"])
            for pair, histogram in series.items():
                family.add_metric(pair, histogram.buckets(), histogram.total)
            yield family
        tokens = CounterMetricFamily(
            "secureig_tokens", "Tokens as the upstream counted them.", labels=["model", "direction"]
        )
        for pair, count in self.tokens.items():
            tokens.add_metric(pair, count)
        yield tokens
        yield GaugeMetricFamily(
            "secureig_active_requests", "Requests and streams in flight.", value=self.active
        )


class _Refusals:
    def __init__(self, refused: Mapping[str, int]) -> None:
        self._refused = refused

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "secureig_connections_refused",
            "Client connections refused or closed by a serving limit.",
            labels=["reason"],
        )
        for reason, count in sorted(self._refused.items()):
            family.add_metric([reason], count)
        yield family


class _Backends:
    """Per-backend series, read from the router's live state at each scrape."""

    def __init__(self, router: Router, answered: Mapping[str, int]) -> None:
        self._router = router
        self._answered = answered
        self.waits: dict[str, _Histogram] = {}

    def collect(self) -> Iterator[Metric]:
        router = self._router
        backends = router.fleet.backends
        now = time.monotonic()
        series = (
            ("secureig_backend_up", "1 if the backend passed its last health check.",
             GaugeMetricFamily, lambda b: 1 if b.up else 0),
            ("secureig_backend_in_flight", "Inference requests holding a place on the backend.",
             GaugeMetricFamily, lambda b: b.in_flight),
            ("secureig_backend_queued",
             "Requests waiting for a place that this backend could take.",
             GaugeMetricFamily, router.queued_for),
            ("secureig_backend_loaded_models", "Models loaded on the backend.", GaugeMetricFamily,
             lambda b: sum(1 for until in b.loaded.values() if until > now)),
            ("secureig_backend_requests", "Requests the backend answered.", CounterMetricFamily,
             lambda b: self._answered.get(b.name, 0)),
            ("secureig_backend_failovers",
             "Requests the backend failed before answering, sent to another backend.",
             CounterMetricFamily, lambda b: b.failovers),
        )  # fmt: skip
        for name, doc, kind, value in series:
            family = kind(name, doc, labels=["backend"])
            for backend in backends:
                family.add_metric([backend.name], value(backend))
            yield family
        waits = HistogramMetricFamily(
            "secureig_backend_queue_wait_seconds",
            "Time requests waited for a free place on the backend.",
            labels=["backend"],
        )
        for name, histogram in self.waits.items():
            waits.add_metric([name], histogram.buckets(), histogram.total)
        yield waits


# What the gateway turned away, by the status it answered: the console's names for them.
_REFUSALS = {
    400: "invalid request", 401: "no valid key", 403: "not allowed", 404: "no such model or route",
    405: "method not allowed", 413: "body too large", 421: "unknown host", 429: "over a limit",
    503: "busy, or the limiter unreachable",
}  # fmt: skip


# Surfaces whose requests are the operator's own: left out of the live page's rates.
_OWN = frozenset({"admin", "console"})


@dataclass(frozen=True, slots=True)
class LiveCounts:
    """This process's counters now, for the console's live page: totals since start, from which
    it draws rates between two readings."""

    uptime_seconds: float
    requests: int  # answered since start, the admin API's and the console's left out
    server_errors: int  # of those, answered with 5xx
    in_flight: int
    streams: int
    connections: int
    tokens_in: int
    tokens_out: int
    refusals: dict[str, int]  # by reason, since start


class Metrics:
    def __init__(self) -> None:
        self._started = time.monotonic()
        self._streams: Callable[[], int] = lambda: 0
        self._open: Callable[[], int] = lambda: 0
        self._refused: Mapping[str, int] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self._backend_answers: dict[str, int] = {}
        self._per_request = _PerRequest()
        r.register(self._per_request)
        self.upstream_errors = Counter(
            "secureig_upstream_errors", "Upstream failures (unreachable, timeout, broke off).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.limit_refusals = Counter(
            "secureig_limit_refusals", "Requests refused with 429.", ["surface"], registry=r
        )
        self.auth_failures = Counter(
            "secureig_auth_failures", "Requests without a valid key.", ["surface"], registry=r
        )
        self.usage_pending = Gauge(
            "secureig_usage_records_pending", "Usage records not yet written.", registry=r
        )
        self.usage_dropped = Counter(
            "secureig_usage_records_dropped", "Usage records that could not be held.", registry=r
        )

    def watch_backends(self, router: Router) -> None:
        self._backends = _Backends(router, self._backend_answers)
        self.registry.register(self._backends)

    def queue_wait(self, backend: Backend, seconds: float) -> None:
        waits = self._backends.waits
        histogram = waits.get(backend.name)
        if histogram is None:
            histogram = waits[backend.name] = _Histogram()
        histogram.observe(seconds)

    def backend_answered(self, name: str) -> None:
        answers = self._backend_answers
        answers[name] = answers.get(name, 0) + 1

    def watch_connections(self, open_now: Callable[[], int], refused: Mapping[str, int]) -> None:
        """Client connections open now, and those refused by reason, read at each scrape."""
        gauge = Gauge(
            "secureig_connections_open", "Client connections open.", registry=self.registry
        )
        gauge.set_function(open_now)
        self.registry.register(_Refusals(refused))
        self._open, self._refused = open_now, refused

    def watch_streams(self, streaming_now: Callable[[], int]) -> None:
        gauge = Gauge(
            "secureig_streams_in_flight", "Generations streaming their answer now.",
            registry=self.registry,
        )  # fmt: skip
        gauge.set_function(streaming_now)
        self._streams = streaming_now

    def live(self) -> LiveCounts:
        """Summed from the same counters Prometheus reads; costs nothing until asked."""
        stats = self._per_request
        requests = errors = 0
        refusals: dict[str, int] = {}
        for (surface, _, status), count in stats.requests.items():
            code = int(status)
            reason = _REFUSALS.get(code)
            if reason is not None:
                refusals[reason] = refusals.get(reason, 0) + count
            if surface in _OWN:
                continue  # the console's polls would be the rate it shows
            requests += count
            if code >= 500:
                errors += count
        for reason, count in self._refused.items():
            refusals[f"connection: {reason}"] = count
        tokens_in = tokens_out = 0
        for (_, direction), count in stats.tokens.items():
            if direction == "in":
                tokens_in += count
            else:
                tokens_out += count
        return LiveCounts(
            uptime_seconds=round(time.monotonic() - self._started, 3),
            requests=requests, server_errors=errors, in_flight=stats.active,
            streams=self._streams(), connections=self._open(), tokens_in=tokens_in,
            tokens_out=tokens_out, refusals=dict(sorted(refusals.items())),
        )  # fmt: skip

    @property
    def active(self) -> int:
        return self._per_request.active

    def started(self) -> None:
        self._per_request.active += 1

    def answered(
        self, surface: str, route: str, status: int, seconds: float, ttfb: float | None
    ) -> None:
        """Count one answered request, its duration and time to first byte."""
        stats = self._per_request
        stats.active -= 1
        key = (surface, route, str(status))
        stats.requests[key] = stats.requests.get(key, 0) + 1
        pair = (surface, route)
        duration = stats.duration.get(pair)
        if duration is None:
            duration = stats.duration[pair] = _Histogram()
            stats.ttfb[pair] = _Histogram()
        duration.observe(seconds)
        if ttfb is not None:
            stats.ttfb[pair].observe(ttfb)

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        counts = self._per_request.tokens
        for key, n in (((model, "in"), prompt), ((model, "out"), completion)):
            counts[key] = counts.get(key, 0) + n

    def render(self) -> bytes:
        return generate_latest(self.registry)
