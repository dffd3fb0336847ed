"""Per-key limits shared by several gateway replicas through Redis: `LocalLimiter`'s semantics,
one atomic Lua script (one round trip) per admission and one per release."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from secureig.policy.limits import (
    LimiterUnavailable,
    Limits,
    Ticket,
    Usage,
    check,
    new_lease,
    rate_headers,
)
from secureig.policy.resp import RedisClient, RedisError, RedisReplyError, RedisUnavailable

log = logging.getLogger("secureig.limits")

MINUTE_KEY_TTL = 120  # seconds: outlives its minute, so a late release still finds it
DAY_KEY_TTL = 2 * 86400
MARKER_TTL = 2 * 86400  # outlives the longest request, and an admission's late script
RETRY_FOR = 3600.0  # seconds a release or an undo is retried before it is given up
MAX_RETRIES = 100_000  # releases and undos waiting for Redis, at most

# The window keys are named from the server's clock inside the scripts, so KEYS carries their
# stems and the scripts append the window number. That is fine on a single Redis (or a replicated
# one); Redis Cluster would need the subject's keys in one hash slot, which this naming does not do.
#
# Limits arrive as ARGV: 0 is "no limit", -1 a budget of zero (refuses everything, as `check()`
# does for a limit of 0), anything else the budget.

# Every admission of a limited key has an id, and a marker key (`adm:<id>`) from the moment the
# script admits it until its release: it names the minute's request counter the admission counted
# in. A marker set to '' is a tombstone: the admission was given up (its caller saw a timeout)
# and must not count, should its script still run. This makes each step safe to time out and
# to send again: a release runs once, an abandoned admission is undone once.
#
# The epoch key holds a random value set by the first process to find it missing: a Redis that
# restarted without persistence has none, and every process re-registers its live requests'
# leases (and markers) before it admits another.

_ACQUIRE = """
if redis.call('GET', KEYS[6]) ~= ARGV[8] then
  return {-1}
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  return {-2}
end
local t = redis.call('TIME')
local sec, usec = tonumber(t[1]), tonumber(t[2])
local now_ms = sec * 1000 + math.floor(usec / 1000)
local rpm_key = KEYS[1] .. ':' .. math.floor(sec / 60)
local tpm_key = KEYS[2] .. ':' .. math.floor(sec / 60)
local tpd_key = KEYS[3] .. ':' .. math.floor(sec / 86400)
local conc_key = KEYS[4]
local rpm, tpm, tpd, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
    tonumber(ARGV[4])
local lease, ttl_ms = ARGV[5], tonumber(ARGV[6])

local requests = tonumber(redis.call('GET', rpm_key) or '0')
local tokens = tonumber(redis.call('GET', tpm_key) or '0')
local day_tokens = tonumber(redis.call('GET', tpd_key) or '0')
local in_flight = 0
if cap ~= 0 then
  -- a lease whose holder stopped renewing it (a dead replica) frees its slot here
  redis.call('ZREMRANGEBYSCORE', conc_key, '-inf', now_ms)
  in_flight = redis.call('ZCARD', conc_key)
end

local function over(limit, used)
  return limit ~= 0 and used >= math.max(limit, 0)
end
-- the same order as check(): concurrency, requests, tokens per minute, tokens per day
local refused = over(cap, in_flight) or over(rpm, requests) or over(tpm, tokens)
  or over(tpd, day_tokens)
if not refused then
  redis.call('INCR', rpm_key)
  redis.call('EXPIRE', rpm_key, ARGV[7])
  if cap ~= 0 then
    redis.call('ZADD', conc_key, now_ms + ttl_ms, lease)
    -- every lease expires within ttl of the last write, so the set outlives its live leases
    redis.call('PEXPIRE', conc_key, 2 * ttl_ms)
  end
  redis.call('SET', KEYS[5], rpm_key, 'EX', ARGV[9])
end
return {refused and 0 or 1, sec, usec, requests, tokens, day_tokens, in_flight}
"""

# KEYS: tpm stem, tpd stem, concurrency set, marker. A release whose marker is gone (released
# already, or given up) does nothing.
_RELEASE = """
local marker = redis.call('GET', KEYS[4])
if not marker or marker == '' then
  return 0
end
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[3], ARGV[1])
local tokens = tonumber(ARGV[2])
if tokens ~= 0 then
  local sec = tonumber(redis.call('TIME')[1])
  local tpm_key = KEYS[1] .. ':' .. math.floor(sec / 60)
  local tpd_key = KEYS[2] .. ':' .. math.floor(sec / 86400)
  redis.call('INCRBY', tpm_key, tokens)
  redis.call('EXPIRE', tpm_key, ARGV[3])
  redis.call('INCRBY', tpd_key, tokens)
  redis.call('EXPIRE', tpd_key, ARGV[4])
end
return 1
"""

# KEYS: concurrency set, marker. An admission whose caller gave up: undone if its script ran,
# refused in advance (the tombstone) if it has yet to.
_UNDO = """
local marker = redis.call('GET', KEYS[2])
if marker and marker ~= '' then
  -- a minute gone by has taken its counter with it: nothing to give back, nothing to leave
  if marker ~= '+' and redis.call('EXISTS', marker) == 1 then
    redis.call('DECR', marker)
  end
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('SET', KEYS[2], '', 'EX', ARGV[2])
return 1
"""

# KEYS: the epoch, then the concurrency sets this process holds leases in. ARGV: an epoch to set
# if there is none, ttl in ms, the marker prefix and ttl, then per set the number of its leases
# followed by their ids. Renews (or puts back) every lease and its marker; returns the epoch.
_REGISTER = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1])
  epoch = ARGV[1]
end
local t = redis.call('TIME')
local ttl = tonumber(ARGV[2])
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl
local i, back = 5, 0
for k = 2, #KEYS do
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    if redis.call('ZADD', KEYS[k], expiry, ARGV[i]) == 1 then
      back = back + 1
    end
    -- a marker lost with the data: '+' releases like any other, and undoes no request count
    redis.call('SET', ARGV[3] .. ARGV[i], '+', 'NX', 'EX', ARGV[4])
    i = i + 1
  end
  redis.call('PEXPIRE', KEYS[k], 2 * ttl)
end
return {epoch, back}
"""


@dataclass(frozen=True, slots=True)
class _Script:
    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> _Script:
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


ACQUIRE = _Script.of(_ACQUIRE)
RELEASE = _Script.of(_RELEASE)
UNDO = _Script.of(_UNDO)
REGISTER = _Script.of(_REGISTER)
SCRIPTS = (ACQUIRE, RELEASE, UNDO, REGISTER)


def _wire(limit: int | None) -> int:
    """A limit as the scripts take it: 0 is no limit, so a budget of zero (or less) is -1."""
    if limit is None:
        return 0
    return limit if limit > 0 else -1


@dataclass(slots=True)
class _Retry:
    """A release or an undo that has yet to reach Redis."""

    script: _Script
    keys: list[str]
    args: list[str | int]
    since: float


class RedisLimiter:
    """Limits shared by every replica using the same Redis and prefix, on the server's clock.

    Concurrency slots are leases in a sorted set per subject, scored by their expiry; each
    process renews its own every `lease_ttl / 3` seconds, so a replica that dies without
    releasing gives its slots back within `lease_ttl`. A release or an undo that cannot reach
    Redis is retried every second until it lands (they are idempotent); a request the caller
    saw refused for want of Redis is undone, so it spends nothing.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "secureig:",
        *,
        lease_ttl: float = 10.0,
        timeout: float = 2.0,
    ) -> None:
        if lease_ttl <= 0 or timeout <= 0:
            raise ValueError("lease_ttl and timeout must be positive")
        self._url = url
        self._prefix = prefix
        self._lease_ttl = lease_ttl
        self._lease_ttl_ms = max(round(lease_ttl * 1000), 1)
        self._timeout = timeout
        self._redis: RedisClient | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        # concurrency key -> this process's live lease ids in it, renewed by the heartbeat
        self._leases: dict[str, set[str]] = {}
        self._epoch = ""  # the Redis data this process registered its leases with
        self._registering: asyncio.Future[None] | None = None
        self._retries: deque[_Retry] = deque()
        self.given_up = 0  # releases and undos dropped: too many waiting, or too old

    def _key(self, kind: str, subject: str) -> str:
        return f"{self._prefix}{kind}:{subject}"

    def _client(self) -> RedisClient:
        if self._redis is None:
            raise RuntimeError("RedisLimiter used before start()")
        return self._redis

    async def start(self) -> None:
        if self._redis is not None:
            return
        # The client sends again only a command that never left (Redis had closed the
        # connection); never after a timeout, when the script may have run and a rerun would
        # admit twice.
        self._redis = RedisClient(self._url, timeout=self._timeout)
        try:
            await asyncio.gather(*(self._redis.call("SCRIPT", "LOAD", s.source) for s in SCRIPTS))
            await self._register()
        except RedisError as exc:
            # Not fatal: keys without limits keep working, keys with limits get
            # LimiterUnavailable until Redis answers, and the scripts load on first use.
            log.warning("rate limiter: Redis unavailable at start (%s)", exc)
        self._heartbeat = asyncio.create_task(self._beat(), name="secureig-limits-heartbeat")

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._redis is None:
            return
        await self._retry_due()
        if self._retries:
            log.warning(
                "rate limiter: %d releases or undos never reached Redis; their slots expire"
                " within %gs",
                len(self._retries),
                self._lease_ttl,
            )
        leases, self._leases = self._leases, {}
        if leases:
            # give the slots back now rather than after lease_ttl
            try:
                await asyncio.gather(
                    *(self._redis.call("ZREM", key, *ids) for key, ids in leases.items())
                )
            except RedisError as exc:
                log.warning("rate limiter: could not free leases on close (%s)", exc)
        await self._redis.aclose()
        self._redis = None

    async def ping(self) -> None:
        try:
            await self._client().call("PING")
        except RedisError as exc:
            raise LimiterUnavailable(f"rate limiter unavailable: {exc}") from exc

    async def _run(self, script: _Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        client = self._client()
        try:
            return await client.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # the server lost its script cache (restart, SCRIPT FLUSH): EVAL also re-caches it
            return await client.call("EVAL", script.source, len(keys), *keys, *args)

    async def _register(self) -> None:
        """Put this process's live leases (back) under the current epoch; one at a time."""
        if self._registering is not None:
            await asyncio.shield(self._registering)
            return
        self._registering = asyncio.get_running_loop().create_future()
        try:
            keys = [self._prefix + "epoch", *self._leases]
            args: list[str | int] = [
                uuid.uuid4().hex, self._lease_ttl_ms, self._prefix + "adm:", MARKER_TTL,
            ]  # fmt: skip
            for key in keys[1:]:
                ids = self._leases[key]
                args.append(len(ids))
                args.extend(ids)
            epoch, back = await self._run(REGISTER, keys, args)
            epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
            if self._epoch and epoch != self._epoch:
                log.warning(
                    "rate limiter: Redis lost its data (a restart?): %d live requests"
                    " re-registered before any new one was admitted",
                    int(back),
                )
            elif int(back):
                log.warning(
                    "rate limiter: %d concurrency leases had expired while Redis was out of"
                    " reach: put back",
                    int(back),
                )
            self._epoch = epoch
            self._registering.set_result(None)
        except BaseException as exc:
            self._registering.set_exception(exc)
            self._registering.exception()  # retrieved: whoever waits gets it too
            raise
        finally:
            self._registering = None

    async def acquire(self, subject: str, limits: Limits) -> Ticket:
        if not limits.any:
            return Ticket(subject, limits)
        lease = new_lease()
        conc_key = self._key("conc", subject)
        marker = self._prefix + "adm:" + lease
        keys = [
            self._key("rpm", subject),
            self._key("tpm", subject),
            self._key("tpd", subject),
            conc_key,
            marker,
            self._prefix + "epoch",
        ]
        capped = limits.concurrency is not None
        try:
            for _ in range(2):
                args: list[str | int] = [
                    _wire(limits.rpm), _wire(limits.tpm), _wire(limits.daily_tokens),
                    _wire(limits.concurrency), lease, self._lease_ttl_ms, MINUTE_KEY_TTL,
                    self._epoch, MARKER_TTL,
                ]  # fmt: skip
                reply = await self._run(ACQUIRE, keys, args)
                if int(reply[0]) == -2:  # given up before it ran: cannot happen to a new id
                    raise LimiterUnavailable("rate limiter unavailable: admission given up")
                if int(reply[0]) != -1:
                    break
                # Redis has no epoch, or another one: the live leases go back first.
                await self._register()
            else:
                raise LimiterUnavailable("rate limiter unavailable: Redis keeps losing its data")
        except RedisError as exc:
            if not isinstance(exc, RedisUnavailable) or exc.sent:
                # The script may yet run (or have run) with nobody to answer: undo it.
                self._retry(UNDO, [conc_key, marker], [lease, MARKER_TTL])
            raise LimiterUnavailable(f"rate limiter unavailable: {exc}") from exc
        admitted, sec, usec, requests, tokens, day_tokens, in_flight = (int(v) for v in reply)
        now = sec + usec / 1_000_000
        if admitted != 1:
            refusal = check(limits, Usage(requests, tokens, day_tokens), in_flight, now)
            if refusal is None:  # the script and check() disagree: a bug, refuse safely
                raise LimiterUnavailable("rate limiter unavailable: inconsistent answer")
            raise refusal
        if capped:
            self._leases.setdefault(conc_key, set()).add(lease)
        headers = rate_headers(limits, Usage(requests + 1, tokens, day_tokens), now)
        return Ticket(subject, limits, lease=lease, headers=headers)

    async def release(self, ticket: Ticket, tokens: int) -> None:
        if not ticket.limits.any or ticket.lease is None:
            return
        conc_key = self._key("conc", ticket.subject)
        # forget it first, so the heartbeat stops renewing it even if the release fails
        held = self._leases.get(conc_key)
        if held is not None:
            held.discard(ticket.lease)
            if not held:
                del self._leases[conc_key]
        keys = [
            self._key("tpm", ticket.subject),
            self._key("tpd", ticket.subject),
            conc_key,
            self._prefix + "adm:" + ticket.lease,
        ]
        args: list[str | int] = [ticket.lease, tokens, MINUTE_KEY_TTL, DAY_KEY_TTL]
        try:
            await self._run(RELEASE, keys, args)
        except Exception as exc:
            # The request is over either way; its release lands when Redis answers again.
            log.warning(
                "rate limiter: release for %r failed (%s); retrying until it lands",
                ticket.subject,
                exc,
            )
            self._retry(RELEASE, keys, args)

    def _retry(self, script: _Script, keys: list[str], args: list[str | int]) -> None:
        if len(self._retries) >= MAX_RETRIES:
            self._retries.popleft()
            self._give_up(1, "too many waiting")
        self._retries.append(_Retry(script, keys, args, time.monotonic()))

    def _give_up(self, n: int, why: str) -> None:
        self.given_up += n
        if self.given_up == n or self.given_up % 1000 == 0:
            log.error(
                "rate limiter: %d releases or undos given up so far (%s): their tokens go"
                " uncharged",
                self.given_up,
                why,
            )

    async def _retry_due(self) -> None:
        """Send what waits, oldest first, until Redis fails again."""
        landed = 0
        while self._retries:
            item = self._retries[0]
            if time.monotonic() - item.since > RETRY_FOR:
                self._retries.popleft()
                self._give_up(1, f"Redis out of reach for {RETRY_FOR:g}s")
                continue
            try:
                await self._run(item.script, item.keys, item.args)
            except Exception:
                break
            self._retries.popleft()
            landed += 1
        if landed:
            log.info("rate limiter: %d releases or undos retried and landed", landed)

    async def _beat(self) -> None:
        interval = self._lease_ttl / 3
        retry_every = min(1.0, interval)
        next_renewal = time.monotonic() + interval
        while True:
            await asyncio.sleep(retry_every if self._retries else interval)
            if self._retries:
                await self._retry_due()
            if time.monotonic() < next_renewal:
                continue
            next_renewal = time.monotonic() + interval
            try:
                await self._register()
            except Exception as exc:
                # keep beating: a lease survives two missed beats, and is put back after more
                log.warning("rate limiter: lease heartbeat failed (%s)", exc)
