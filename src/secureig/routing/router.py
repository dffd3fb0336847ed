"""Which backend serves a request: the one component that decides, below policy and above the
backend clients.

Candidates are the backends that are up and list the model. Among those with a free slot, the
conversation's own backend first (affinity), then one where the model is loaded, then the least
busy for its weight. When every candidate is at its cap, the request waits in a queue that is
fair across keys: keys take turns, so one key's burst cannot hold another key's request behind it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from secureig.errors import UpstreamBusy, UpstreamUnavailable
from secureig.routing.backend import Backend
from secureig.routing.fleet import Fleet


@dataclass(frozen=True, slots=True)
class LoadedModel:
    name: str
    seconds_left: float


@dataclass(frozen=True, slots=True)
class BackendReport:
    """What `GET /admin/backends` and `secureig backends` show of one backend: never a
    credential (the URL's are stripped, and the backend's api_key is not in it)."""

    name: str
    kind: str
    url: str
    state: str  # "up" or "down"
    why: str | None  # why it is down
    version: str | None
    models: list[str]
    loaded: list[LoadedModel]
    in_flight: int
    queued: int
    max_concurrency: int | None
    weight: float
    busy_for: float  # seconds it is still skipped for having said it is busy
    served: int
    failovers: int
    recent_errors: list[str]


class Slot:
    """A place on a backend, held from the choice to the end of the answer."""

    __slots__ = ("_router", "backend", "counted", "waited")

    def __init__(self, router: Router, backend: Backend, counted: bool, waited: float) -> None:
        self._router = router
        self.backend = backend
        self.counted = counted  # it holds one of the backend's max_concurrency places
        self.waited = waited  # seconds it queued for a place

    def release(self) -> None:
        if self.counted:
            self.counted = False
            self._router.release(self.backend)


class _Waiter:
    __slots__ = ("eligible", "future", "subject")

    def __init__(self, subject: str, eligible: list[Backend], future: asyncio.Future[Backend]):
        self.subject = subject
        self.eligible = eligible
        self.future = future


class FairQueue:
    """Waiting requests by key; a freed place goes to the next key in turn that can use it."""

    def __init__(self) -> None:
        # Insertion order is the turn order: a key that is served goes to the back.
        self._keys: dict[str, deque[_Waiter]] = {}
        self.size = 0

    def push(self, waiter: _Waiter) -> None:
        self._keys.setdefault(waiter.subject, deque()).append(waiter)
        self.size += 1

    def remove(self, waiter: _Waiter) -> None:
        queue = self._keys.get(waiter.subject)
        if queue is None:
            return
        try:
            queue.remove(waiter)
        except ValueError:
            return
        self.size -= 1
        if not queue:
            del self._keys[waiter.subject]

    def take(self, backend: Backend) -> _Waiter | None:
        """The first waiter, in key order, that this backend can serve; its key goes last."""
        for subject, queue in self._keys.items():
            for waiter in queue:
                if backend in waiter.eligible and not waiter.future.done():
                    queue.remove(waiter)
                    self.size -= 1
                    del self._keys[subject]
                    if queue:
                        self._keys[subject] = queue
                    return waiter
        return None

    def waiting_of(self, subject: str) -> int:
        queue = self._keys.get(subject)
        return len(queue) if queue is not None else 0

    def waiting_for(self, backend: Backend) -> int:
        return sum(1 for q in self._keys.values() for w in q if backend in w.eligible)


class Affinity:
    """Which backend served a conversation, so its next turn goes there while the backend still
    holds its prompt in cache. Bounded, and entries expire."""

    def __init__(self, max_entries: int = 10_000, ttl: float = 600.0) -> None:
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl

    @staticmethod
    def fingerprint(subject: str, model: str, body: dict[str, Any]) -> tuple[bytes, bool] | None:
        """A conversation's identity, its opening up to the first user message, and whether
        this request continues it (it has more messages than the opening)."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        opening = len(messages)
        for i, message in enumerate(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                opening = i + 1
                break
        digest = hashlib.blake2b(digest_size=16)
        digest.update(subject.encode())
        digest.update(b"\0" + model.encode() + b"\0")
        digest.update(repr(messages[:opening]).encode())
        return digest.digest(), len(messages) > opening

    def get(self, key: bytes) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            del self._entries[key]
            return None
        return entry[0]

    def put(self, key: bytes, backend: str) -> None:
        self._entries[key] = (backend, time.monotonic() + self._ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class Router:
    def __init__(
        self,
        fleet: Fleet,
        queue_timeout: float,
        max_queued: int,
        max_queued_per_key: int | None = None,
        affinity: Affinity | None = None,
        observe_wait: Callable[[Backend, float], None] | None = None,
    ) -> None:
        self.fleet = fleet
        self.queue_timeout = queue_timeout
        self.max_queued = max_queued
        self.max_queued_per_key = max_queued if max_queued_per_key is None else max_queued_per_key
        self.queue = FairQueue()
        self.affinity = affinity if affinity is not None else Affinity()
        self._observe_wait = observe_wait
        fleet.on_readmit = self._fill

    def candidates(
        self, key: str | None, tried: tuple[Backend, ...] = (), only: Backend | None = None
    ) -> list[Backend]:
        """Backends that are up and list the model (any model, for None), less those tried."""
        pool = self.fleet.backends if only is None else (only,)
        return [b for b in pool if b.up and (key is None or key in b.models) and b not in tried]

    def _choose(
        self, candidates: list[Backend], key: str | None, counted: bool, prefer: str | None
    ) -> Backend | None:
        now = time.monotonic()
        best: Backend | None = None
        best_score: tuple[bool, bool, float, int] | None = None
        for backend in candidates:
            if counted and not backend.has_slot():
                continue
            if backend.name == prefer:
                return backend
            score = (
                backend.busy_until > now,  # said it is busy: last resort
                key is not None and not backend.is_warm(key, now),
                backend.load(),
                backend.in_flight,
            )
            if best_score is None or score < best_score:
                best, best_score = backend, score
        return best

    def take(self, key: str | None, counted: bool = True, prefer: str | None = None) -> Slot | None:
        """The common case, without waiting: a free place on the best candidate that is up, or
        None, and then `acquire` decides (looks again, tries the down, queues, refuses)."""
        lone = self.fleet.single
        if lone is not None:
            if not (lone.up and (key is None or key in lone.models)):
                return None
            backend: Backend | None = lone if not counted or lone.has_slot() else None
        else:
            candidates = self.candidates(key)
            backend = self._choose(candidates, key, counted, prefer) if candidates else None
        if backend is None:
            return None
        if counted:
            backend.in_flight += 1
        return Slot(self, backend, counted, 0.0)

    async def acquire(
        self,
        key: str | None,
        model: str,
        subject: str,
        *,
        tried: tuple[Backend, ...] = (),
        counted: bool = True,
        prefer: str | None = None,
        only: Backend | None = None,
    ) -> Slot:
        """A slot on the best candidate for the model with this key, waiting in turn for one when
        all are at their caps. Raises UpstreamUnavailable when every backend that lists the
        model was tried, and UpstreamBusy when none frees up within the queue timeout."""
        candidates = self.candidates(key, tried, only)
        if not candidates:
            await self.fleet.recheck()
            candidates = self.candidates(key, tried, only)
        if not candidates:
            # Nothing that is up serves it: those that list it are tried all the same, since one
            # may have come back since its last check. The request will tell.
            pool = self.fleet.backends if only is None else (only,)
            candidates = [b for b in pool if (key is None or key in b.models) and b not in tried]
            if not candidates:
                raise self._unavailable(key, model, tried, only)
        backend = self._choose(candidates, key, counted, prefer)
        if backend is not None:
            if counted:
                backend.in_flight += 1
            return Slot(self, backend, counted, 0.0)
        return await self._wait(candidates, model, subject)

    async def _wait(self, candidates: list[Backend], model: str, subject: str) -> Slot:
        if self.queue_timeout <= 0:
            raise self._busy(model, candidates, "requests do not queue")
        if self.queue.size >= self.max_queued:
            raise self._busy(model, candidates, f"{self.max_queued} requests wait already")
        if self.queue.waiting_of(subject) >= self.max_queued_per_key:
            raise self._busy(
                model, candidates, f"this key has {self.max_queued_per_key} requests waiting"
            )
        future: asyncio.Future[Backend] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(subject, candidates, future)
        self.queue.push(waiter)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.queue_timeout):
                backend = await future
        except TimeoutError:
            self.queue.remove(waiter)
            if future.done() and not future.cancelled():
                backend = future.result()  # handed a slot as the time ran out: take it
            else:
                raise self._busy(
                    model, candidates, f"none freed up within {self.queue_timeout:g}s"
                ) from None
        except asyncio.CancelledError:
            # The client left while waiting: out of the queue, and any slot it was handed back.
            self.queue.remove(waiter)
            if future.done() and not future.cancelled():
                self.release(future.result())
            else:
                future.cancel()
            raise
        waited = time.monotonic() - started
        if self._observe_wait is not None:
            self._observe_wait(backend, waited)
        return Slot(self, backend, True, waited)

    def release(self, backend: Backend) -> None:
        backend.in_flight -= 1
        if self.queue.size:
            self._fill(backend)

    def _fill(self, backend: Backend) -> None:
        """Hand the backend's free places to waiters, in turn."""
        while self.queue.size and backend.up and backend.has_slot():
            waiter = self.queue.take(backend)
            if waiter is None:
                return
            backend.in_flight += 1
            waiter.future.set_result(backend)

    def queued_for(self, backend: Backend) -> int:
        return self.queue.waiting_for(backend) if self.queue.size else 0

    def report(self) -> list[BackendReport]:
        now, wall = time.monotonic(), time.time()
        reports = []
        for b in self.fleet.backends:
            names = {key: entry.name for key, entry in b.models.items()}
            loaded = [
                LoadedModel(names.get(key, key), round(until - now, 1))
                for key, until in sorted(b.loaded.items())
                if until > now
            ]
            reports.append(
                BackendReport(
                    name=b.name, kind=b.kind, url=b.address, state="up" if b.up else "down",
                    why=b.why, version=b.version, models=sorted(names.values()), loaded=loaded,
                    in_flight=b.in_flight, queued=self.queued_for(b),
                    max_concurrency=b.max_concurrency, weight=b.weight,
                    busy_for=round(max(0.0, b.busy_until - now), 1), served=b.served,
                    failovers=b.failovers,
                    recent_errors=[f"{round(wall - at)}s ago: {why}" for at, why in b.errors],
                )
            )  # fmt: skip
        return reports

    def _unavailable(
        self, key: str | None, model: str, tried: tuple[Backend, ...], only: Backend | None
    ) -> UpstreamUnavailable:
        lone = only or self.fleet.single
        if lone is not None and not lone.up:
            return UpstreamUnavailable(lone.why or "upstream is down", public="upstream is down")
        if key is None:
            return UpstreamUnavailable("no backend is up", public="no backend is up")
        serving = [b for b in self.fleet.backends if key in b.models]
        down = [b for b in serving if not b.up]
        if down and len(down) == len(serving):
            whys = "; ".join(f"{b.name}: {b.why}" for b in down)
            said = f"every backend serving model {model!r} is down"
            return UpstreamUnavailable(f"{said} ({whys})", public=said)
        if tried:
            names = ", ".join(b.name for b in tried)
            said = f"no backend could serve model {model!r}"
            return UpstreamUnavailable(f"{said} (tried {names})", public=said)
        said = f"no backend that is up serves model {model!r}"
        return UpstreamUnavailable(said, public=said)

    def _busy(self, model: str, candidates: list[Backend], how: str) -> UpstreamBusy:
        names = ", ".join(b.name for b in candidates)
        retry = max(1, math.ceil(min(self.queue_timeout, 5.0))) if self.queue_timeout > 0 else 1
        said = f"every backend serving model {model!r} is at its limit of concurrent requests"
        return UpstreamBusy(f"{said} ({names}); {how}", retry_after=retry, public=f"{said}; {how}")
