"""What each request leaves behind once it is answered: its key's budgets settled, its metrics
counted, its usage record queued."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from secureig.metrics import Metrics
from secureig.policy import Gatekeeper
from secureig.store.usage import UsageRecord, UsageWriter
from secureig.surfaces._asgi import Exchange

log = logging.getLogger("secureig")


class Accounting:
    def __init__(self, gatekeeper: Gatekeeper, metrics: Metrics, usage: UsageWriter) -> None:
        self._gate = gatekeeper
        self._metrics = metrics
        self._usage = usage

    async def finish(self, ex: Exchange) -> None:
        """After the answer: settle the key's budgets, count, record usage."""
        ledger = ex.ledger
        if ex.model is None:
            ex.model = ledger.model  # the name the policy parsed: valid, so bounded
        status = ex.status or 499
        if status == 499 or ex.outcome is not None or (status == 200 and not ledger.reported):
            # Cut short (the client left, or the upstream broke off) before the final counts, or
            # answered without counts that can be counts: what was forwarded is charged all the
            # same, and the prompt estimated.
            ledger.charge_unreported()
        try:
            await self._gate.settle(ledger)
        except Exception:
            log.exception("settling a request's limits failed")
        now = time.perf_counter()
        m = self._metrics
        ttfb = ex.first_byte - ex.started if ex.first_byte is not None else None
        m.answered(ex.surface, ex.route, status, now - ex.started, ttfb)
        if status == 429:
            m.limit_refusals.labels(ex.surface).inc()
        if ledger.principal is None:
            if status == 401 or (status == 403 and ex.surface == "seed"):
                m.auth_failures.labels(ex.surface).inc()
        else:
            principal = ledger.principal
            if ledger.prompt_tokens or ledger.completion_tokens:
                model = ex.model or "-"
                m.tokens(model, ledger.prompt_tokens, ledger.completion_tokens)
            self._usage.record(
                UsageRecord(
                    at=datetime.now(UTC),
                    request_id=ex.request_id,
                    key_id=principal.key_id,
                    key_name=principal.name,
                    surface=ex.surface,
                    route=ex.route,
                    model=ex.model,
                    backend=ex.backend,
                    status=status,
                    prompt_tokens=ledger.prompt_tokens,
                    completion_tokens=ledger.completion_tokens,
                    tokens_estimated=ledger.estimated,
                    ttfb_ms=ttfb * 1000 if ttfb is not None else None,
                    duration_ms=(now - ex.started) * 1000,
                    bytes_in=ex.bytes_in,
                    bytes_out=ex.bytes_out,
                    outcome=ex.outcome or ("client-disconnected" if status == 499 else "completed"),
                )
            )
        if ex.outcome == "upstream-failed-mid-stream" or status in (502, 504):
            m.upstream_errors.labels(ex.outcome or str(status)).inc()
        if ex.backend is not None:
            m.backend_answered(ex.backend)
