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
from secureig.names import ModelName, exact_key, model_key
from secureig.routing.backend import Backend
from secureig.untrusted import printable
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
        # Engine ids that outrank Ollama's resolution of the same name: listed by an engine
        # whose `models` the operator set.
        self._vouched: frozenset[str] = frozenset()
        self._outside: dict[str, frozenset[str]] = {}  # by backend: what it lists, ignored
        self._conflicts: frozenset[str] = frozenset()  # what was last said about claims
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
        vouched: set[str] = set()
        for backend in self.backends:
            # A model known from a backend that is down now stays known: the request will tell.
            for key, entry in backend.models.items():
                models.setdefault(key, entry)
                if backend.kind == "openai" and backend.spec.models is not None:
                    vouched.add(key)
        self._vouched = frozenset(vouched)
        self._say_conflicts()
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
        outside = frozenset(backend.set_models(entries))
        if outside != self._outside.get(backend.name, frozenset()):
            self._outside[backend.name] = outside
            if outside:
                names = sorted(outside)
                shown = ", ".join(printable(n, 80) for n in names[:10])
                log.warning(
                    "backend %s lists %d models outside its models setting, ignored: %s%s",
                    backend.name,
                    len(names),
                    shown,
                    " ..." if len(names) > 10 else "",
                )
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

    def _say_conflicts(self) -> None:
        """One model claimed by backends of different kinds, or by an engine's exact id and
        Ollama's name alike: which one serves it is the catalogue's rule (Ollama's name first,
        unless the engine's `models` claim it), but the operator should know. Said when what is
        claimed twice changes."""
        kinds: dict[str, set[str]] = {}
        for backend in self.backends:
            for key, entry in backend.models.items():
                name = model_key(entry.name) if key.startswith("=") else key
                kinds.setdefault(name, set()).add(backend.kind)
        conflicts = frozenset(k for k, found in kinds.items() if len(found) > 1)
        if conflicts != self._conflicts:
            self._conflicts = conflicts
            if conflicts:
                names = sorted(conflicts)
                log.warning(
                    "models listed by both an Ollama backend and an OpenAI-compatible engine: %s;"
                    " requests go to the Ollama backends unless the engine's models setting"
                    " names them",
                    ", ".join(printable(n, 80) for n in names[:10])
                    + (" ..." if len(names) > 10 else ""),
                )

    def find(self, name: ModelName, raw: str) -> tuple[str, TagEntry] | None:
        """The model a request names, and its key: the name as Ollama resolves it first, then an
        engine's id exactly as written. An engine whose `models` setting claims its ids (the
        operator's word) comes before Ollama's resolution: a backend's own listing outranks
        nothing by itself."""
        models = self.state.models
        exact = exact_key(raw) if self._exact else None
        if exact is not None and exact in self._vouched:
            entry = models.get(exact)
            if entry is not None:
                return exact, entry
        entry = models.get(name.key)
        if entry is not None:
            return name.key, entry
        if exact is not None:
            entry = models.get(exact)
            if entry is not None:
                return exact, entry
        return None

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
