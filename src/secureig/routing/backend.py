"""One backend of the fleet: its client, and what the gateway knows of it (health, models, load).

Only the event loop writes these fields; the router reads them for every request, so they are
plain attributes, not properties behind locks.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from secureig.names import (
    InvalidModelName,
    exact_key,
    model_key,
    parse_model_name,
    pattern_allows,
)
from secureig.untrusted import printable
from secureig.upstream import BackendClient, Loaded, TagEntry

# How long a backend that answered for a model is taken to have it loaded, until the next look at
# its /api/ps says otherwise: Ollama's own default keep-alive. A backend's own "loaded until" is
# believed no longer than this either: it is asked again every health interval, and a backend
# that says "forever" must not win every request for good on its word.
TRAFFIC_WARMTH_SECONDS = 300.0
# A backend that said it is busy (Ollama's 503 "server busy": its queue is full) is skipped this
# long, unless nothing else can serve.
BUSY_COOLDOWN_SECONDS = 2.0
_RECENT_ERRORS = 10


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """A backend as configured: `[[backends]]` in the settings file, or one URL of the list."""

    name: str
    url: str = field(repr=False)  # it may carry credentials
    kind: str = "ollama"
    max_concurrency: int | None = None
    api_key: str | None = field(default=None, repr=False)
    weight: float = 1.0
    ca_file: Path | None = None  # an HTTPS backend's own CA, instead of the system's
    tls_verify: bool = True
    # The models it may serve (the keys' pattern grammar); None: whatever it lists.
    models: tuple[str, ...] | None = None


class Backend:
    """A backend's client and state. `in_flight` counts the inference requests it holds a slot
    for; `max_concurrency` caps them."""

    __slots__ = (
        "busy_until", "checked_at", "client", "errors", "failovers", "in_flight", "kind", "loaded",
        "max_concurrency", "models", "name", "served", "spec", "up", "version", "weight", "why",
    )  # fmt: skip

    def __init__(self, spec: BackendSpec, client: BackendClient) -> None:
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self.client = client
        self.weight = spec.weight
        self.max_concurrency = spec.max_concurrency
        self.up = False
        self.why: str | None = "not checked yet"
        self.checked_at = 0.0
        self.version: str | None = None
        self.models: dict[str, TagEntry] = {}  # by model key
        self.loaded: dict[str, float] = {}  # model key -> monotonic time it stays loaded until
        self.in_flight = 0
        self.served = 0
        self.failovers = 0  # requests it failed before answering, that went to another backend
        self.busy_until = 0.0
        self.errors: deque[tuple[float, str]] = deque(maxlen=_RECENT_ERRORS)

    @property
    def address(self) -> str:
        return self.client.address  # credentials stripped

    def has_slot(self) -> bool:
        cap = self.max_concurrency
        return cap is None or self.in_flight < cap

    def is_warm(self, key: str, now: float) -> bool:
        until = self.loaded.get(key)
        return until is not None and until > now

    def load(self) -> float:
        """How busy it is for its weight: what the router compares."""
        return self.in_flight / self.weight

    # ---- what health checks and traffic teach ------------------------------------------------

    def mark_up(self, version: str | None) -> bool:
        """A health check passed; True if that readmits it."""
        was_down = not self.up
        self.up, self.why = True, None
        self.version = printable(version, 64) if version is not None else None
        self.checked_at = time.monotonic()
        return was_down

    def mark_down(self, why: str) -> bool:
        """It failed (a health check, or a request's connection); True if it was up. `why` may
        quote the backend's own words: kept to one printable line, as a terminal may show it."""
        why = printable(why, 300)
        was_up = self.up
        self.up, self.why = False, why
        self.checked_at = time.monotonic()
        self.errors.append((time.time(), why))
        return was_up

    def mark_busy(self, why: str) -> None:
        self.busy_until = time.monotonic() + BUSY_COOLDOWN_SECONDS
        self.note(why)

    def note(self, why: str) -> None:
        """An error of its own, for the operator: the recent ones are in /admin/backends."""
        self.errors.append((time.time(), printable(why, 300)))

    def key(self, name: str) -> str:
        """The catalogue's key for one of its models; raises InvalidModelName. An engine's ids
        are exact; Ollama's names resolve as Ollama resolves them."""
        if self.kind == "openai":
            # Only what the policy can name is served (patterns match names, not any string).
            model_key(name)
            return exact_key(name)
        return model_key(name)

    def set_models(self, entries: list[TagEntry]) -> list[str]:
        """What it lists now, within its `models` patterns; gives the names left out."""
        models: dict[str, TagEntry] = {}
        patterns = self.spec.models
        outside: list[str] = []
        for entry in entries:
            try:
                key = self.key(entry.name)
                if patterns is not None and not pattern_allows(
                    patterns, parse_model_name(entry.name)
                ):
                    outside.append(entry.name)
                    continue
            except InvalidModelName:
                continue
            models[key] = entry
        self.models = models
        return outside

    def set_loaded(self, running: list[Loaded]) -> None:
        """What /api/ps says now replaces what was known."""
        now_wall, now = time.time(), time.monotonic()
        loaded: dict[str, float] = {}
        for item in running:
            try:
                key = self.key(item.name)
            except InvalidModelName:
                continue
            if key in self.models:  # what it may not serve, it cannot be warm for either
                left = min(_seconds_left(item.expires_at, now_wall), TRAFFIC_WARMTH_SECONDS)
                loaded[key] = now + left
        self.loaded = loaded

    def answered(self, key: str) -> None:
        """It just answered for this model: the model is loaded there now."""
        self.served += 1
        until = time.monotonic() + TRAFFIC_WARMTH_SECONDS
        if self.loaded.get(key, 0.0) < until:
            self.loaded[key] = until


def _seconds_left(expires_at: str, now: float) -> float:
    if not expires_at:
        return TRAFFIC_WARMTH_SECONDS
    try:
        # Go writes nanoseconds and an offset; Python reads at most microseconds.
        text = expires_at.replace("Z", "+00:00")
        head, dot, rest = text.partition(".")
        if dot:
            digits = "".join(c for c in rest[:9] if c.isdigit())
            zone = rest[len(digits) :]
            text = f"{head}.{digits[:6]}{zone}"
        when = datetime.fromisoformat(text)
    except ValueError:
        return TRAFFIC_WARMTH_SECONDS
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # Ollama says a model kept forever expires in ~292 years: a year is as good.
    return max(0.0, min(when.timestamp() - now, 365 * 86400.0))
