"""What the upstream serves: `/api/tags`, cached, refreshed in the background and once on a miss.

The gateway keeps serving while the upstream is down; the catalog records that it is down and why,
and a request that finds it down tries once more (rate-limited), so recovery needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from secureig.names import InvalidModelName, model_key
from secureig.upstream.ollama import OllamaClient, TagEntry, UpstreamError

log = logging.getLogger("secureig.upstream")


@dataclass(frozen=True, slots=True)
class CatalogState:
    """One snapshot of discovery: the models by key, and whether the upstream answered."""

    models: dict[str, TagEntry]
    up: bool
    error: str | None
    refreshed_at: float


class ModelCatalog:
    def __init__(self, client: OllamaClient, interval: float, miss_cooldown: float = 1.0) -> None:
        self.client = client
        self._interval = interval
        # However many requests name unknown models, the upstream sees one refresh per cooldown.
        self._miss_cooldown = miss_cooldown
        self.state = CatalogState(models={}, up=False, error="not checked yet", refreshed_at=0.0)
        self._refreshing: asyncio.Task[CatalogState] | None = None
        self._loop_task: asyncio.Task[None] | None = None

    async def refresh(self) -> CatalogState:
        """Ask the upstream now; concurrent callers share one request."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._fetch())
        return await asyncio.shield(self._refreshing)

    async def _fetch(self) -> CatalogState:
        # Only changes are logged; the first look is reported by whoever started the catalog.
        first = self.state.refreshed_at == 0.0
        was_up = self.state.up
        try:
            entries = await self.client.tags()
        except UpstreamError as exc:
            self.state = CatalogState(
                models=self.state.models, up=False, error=str(exc), refreshed_at=time.monotonic()
            )
            if was_up and not first:
                log.warning("upstream %s is down: %s", self.client.address, exc)
            return self.state
        models: dict[str, TagEntry] = {}
        for entry in entries:
            with contextlib.suppress(InvalidModelName):
                models[model_key(entry.name)] = entry
        self.state = CatalogState(models=models, up=True, error=None, refreshed_at=time.monotonic())
        if not was_up and not first:
            log.info("upstream %s is up with %d models", self.client.address, len(models))
        return self.state

    async def lookup(self, key: str) -> TagEntry | None:
        """The model with this key, refreshing once if it is unknown or the upstream was down."""
        # A known model is served even while discovery fails: the request itself will tell.
        entry = self.state.models.get(key)
        if entry is not None:
            return entry
        if time.monotonic() - self.state.refreshed_at >= self._miss_cooldown:
            await self.refresh()
        elif self._refreshing is not None and not self._refreshing.done():
            await asyncio.shield(self._refreshing)
        return self.state.models.get(key)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="secureig-discovery")

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
                log.exception("model discovery failed")
