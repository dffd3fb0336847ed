"""Prometheus metrics: one registry per gateway, names starting with `secureig_`.

Labels are bounded: a surface and an operation (never a raw path or a key), a status code, a model.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip


# `*_created` series double the output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "secureig_requests", "Requests answered.", ["surface", "route", "status"], registry=r
        )
        self.duration = Histogram(
            "secureig_request_duration_seconds", "Time from request to the end of the answer.",
            ["surface", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttfb = Histogram(
            "secureig_time_to_first_byte_seconds", "Time from request to the answer's first byte.",
            ["surface", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "secureig_tokens", "Tokens as the upstream counted them.", ["model", "direction"],
            registry=r,
        )  # fmt: skip
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
        self.active = Gauge(
            "secureig_active_requests", "Requests and streams in flight.", registry=r
        )
        self.usage_pending = Gauge(
            "secureig_usage_records_pending", "Usage records not yet written.", registry=r
        )
        self.usage_dropped = Counter(
            "secureig_usage_records_dropped", "Usage records that could not be held.", registry=r
        )

        # Labelled children by their label values: `labels()` validates and locks on every call,
        # and this runs once per request.
        self._answered: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def answered(
        self, surface: str, route: str, status: int, seconds: float, ttfb: float | None
    ) -> None:
        """Count one answered request, its duration and time to first byte."""
        children = self._answered.get((surface, route, status))
        if children is None:
            children = (
                self.requests.labels(surface, route, str(status)),
                self.duration.labels(surface, route),
                self.ttfb.labels(surface, route),
            )
            self._answered[(surface, route, status)] = children
        requests, duration, first_byte = children
        requests.inc()
        duration.observe(seconds)
        if ttfb is not None:
            first_byte.observe(ttfb)

    def render(self) -> bytes:
        return generate_latest(self.registry)
