"""The fleet: every backend's health, models and loaded models, checked every health interval, and
the catalogue that is their union.

The gateway keeps serving while backends are down; each records that it is down and why, and a
request that finds no backend up for its model looks once more (rate-limited), so recovery needs
no restart and no waiting for the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from secureig.errors import UpstreamError
from secureig.names import ModelName, exact_key
from secureig.routing.backend import Backend
from secureig.upstream import TagEntry

log = logging.getLogger("secureig.upstream")


@dataclass(frozen=True, slots=True)
class CatalogState:
    """One snapshot of the catalogue: the models by key, and whether any backend answered."""

    models: dict[str, TagEntry]
    up: bool
    error: str | None
    refreshed_at: float


class Fleet:
    def __init__(
        self, backends: list[Backend], interval: float, miss_cooldown: float = 1.0
    ) -> None:
        if not backends:
            raise ValueError("a fleet needs at least one backend")
        self.backends = backends
        self.by_name = {b.name: b for b in backends}
        self._exact = any(b.kind == "openai" for b in backends)
        self._interval = interval
        # However many requests name unknown models, the backends see one refresh per cooldown.
        self._miss_cooldown = miss_cooldown
        self.state = CatalogState(models={}, up=False, error="not checked yet", refreshed_at=0.0)
        self._refreshing: asyncio.Task[CatalogState] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        # Called with a backend that was down and is up again (the router wakes its waiters).
        self.on_readmit: Callable[[Backend], None] | None = None

    @property
    def single(self) -> Backend | None:
        return self.backends[0] if len(self.backends) == 1 else None

    async def open(self) -> None:
        for backend in self.backends:
            await backend.client.open()

    async def close(self) -> None:
        for backend in self.backends:
            await backend.client.close()

    async def refresh(self) -> CatalogState:
        """Check every backend now; concurrent callers share one round."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._round())
        return await asyncio.shield(self._refreshing)

    async def _round(self) -> CatalogState:
        first = self.state.refreshed_at == 0.0
        await asyncio.gather(*(self._check(b, quiet=first) for b in self.backends))
        return self._union()

    def _union(self) -> CatalogState:
        models: dict[str, TagEntry] = {}
        for backend in self.backends:
            # A model known from a backend that is down now stays known: the request will tell.
            for key, entry in backend.models.items():
                models.setdefault(key, entry)
        up = [b for b in self.backends if b.up]
        error = None
        if not up:
            whys = [b.why or "down" for b in self.backends]
            error = (
                whys[0]
                if len(whys) == 1
                else "; ".join(f"{b.name}: {w}" for b, w in zip(self.backends, whys, strict=True))
            )
        self.state = CatalogState(
            models=models, up=bool(up), error=error, refreshed_at=time.monotonic()
        )
        return self.state

    async def _check(self, backend: Backend, quiet: bool) -> None:
        try:
            version = await backend.client.version()
            entries = await backend.client.tags()
        except UpstreamError as exc:
            if backend.mark_down(str(exc)) and not quiet:
                log.warning("backend %s is down: %s", backend.name, exc)
            return
        backend.set_models(entries)
        try:
            backend.set_loaded(await backend.client.running())
        except UpstreamError as exc:
            # Serving without knowing what is loaded only costs the warm preference.
            backend.set_loaded([])
            log.debug("backend %s: no list of loaded models: %s", backend.name, exc)
        if backend.mark_up(version):
            if not quiet:
                log.info("backend %s is up with %d models", backend.name, len(backend.models))
            if self.on_readmit is not None:
                self.on_readmit(backend)

    def passive_down(self, backend: Backend, why: str) -> None:
        """A request could not reach it: nobody tries it again until a health check passes."""
        if backend.mark_down(why):
            log.warning("backend %s is down: %s", backend.name, why)
            self._union()

    def passive_up(self, backend: Backend) -> None:
        """A backend thought down answered a request: it is back, before its next check."""
        if backend.mark_up(backend.version):
            log.info("backend %s answers again", backend.name)
            self._union()
            if self.on_readmit is not None:
                self.on_readmit(backend)

    async def recheck(self) -> CatalogState:
        """A request found nothing up for its model: look once more, at most once a cooldown."""
        if time.monotonic() - self.state.refreshed_at >= self._miss_cooldown:
            return await self.refresh()
        if self._refreshing is not None and not self._refreshing.done():
            return await asyncio.shield(self._refreshing)
        return self.state

    def find(self, name: ModelName, raw: str) -> tuple[str, TagEntry] | None:
        """The model a request names, and its key: an engine's id exactly as written first, then
        the name as Ollama resolves it."""
        models = self.state.models
        if self._exact:
            entry = models.get(key := exact_key(raw))
            if entry is not None:
                return key, entry
        entry = models.get(name.key)
        return None if entry is None else (name.key, entry)

    async def lookup(self, name: ModelName, raw: str) -> tuple[str, TagEntry] | None:
        """`find`, looking once more if the model is unknown or every backend was down."""
        found = self.find(name, raw)
        if found is not None:
            return found
        await self.recheck()
        return self.find(name, raw)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="secureig-health")

    async def stop(self) -> None:
        for task in (self._loop_task, self._refreshing):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Exception:  # the loop must outlive any one bad answer
                log.exception("health check failed")
