"""Per-key limits shared by several gateway replicas through Redis: `LocalLimiter`'s semantics,
one atomic Lua script (one round trip) per admission and one per release."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
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
from secureig.policy.resp import RedisClient, RedisError, RedisReplyError

log = logging.getLogger("secureig.limits")

MINUTE_KEY_TTL = 120  # seconds: outlives its minute, so a late release still finds it
DAY_KEY_TTL = 2 * 86400

# The window keys are named from the server's clock inside the scripts, so KEYS carries their
# stems and the scripts append the window number. That is fine on a single Redis (or a replicated
# one); Redis Cluster would need the subject's keys in one hash slot, which this naming does not do.
#
# Limits arrive as ARGV: 0 is "no limit", -1 a budget of zero (refuses everything, as `check()`
# does for a limit of 0), anything else the budget.

_ACQUIRE = """
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
end
return {refused and 0 or 1, sec, usec, requests, tokens, day_tokens, in_flight}
"""

_RELEASE = """
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[1])
end
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

# KEYS: the concurrency sets this process holds leases in. ARGV: ttl in ms, then per key the
# number of its leases followed by their ids. Returns the leases that were already gone.
_HEARTBEAT = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local i, lost = 2, {}
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    if redis.call('ZSCORE', KEYS[k], ARGV[i]) then
      redis.call('ZADD', KEYS[k], 'XX', expiry, ARGV[i])
    else
      lost[#lost + 1] = ARGV[i]
    end
    i = i + 1
  end
  redis.call('PEXPIRE', KEYS[k], 2 * tonumber(ARGV[1]))
end
return lost
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
HEARTBEAT = _Script.of(_HEARTBEAT)


def _wire(limit: int | None) -> int:
    """A limit as the scripts take it: 0 is no limit, so a budget of zero (or less) is -1."""
    if limit is None:
        return 0
    return limit if limit > 0 else -1


class RedisLimiter:
    """Limits shared by every replica using the same Redis and prefix, on the server's clock.

    Concurrency slots are leases in a sorted set per subject, scored by their expiry; each
    process renews its own every `lease_ttl / 3` seconds, so a replica that dies without
    releasing gives its slots back within `lease_ttl`.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "secureig:",
        *,
        lease_ttl: float = 30.0,
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
            await asyncio.gather(
                *(
                    self._redis.call("SCRIPT", "LOAD", s.source)
                    for s in (ACQUIRE, RELEASE, HEARTBEAT)
                )
            )
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

    async def acquire(self, subject: str, limits: Limits) -> Ticket:
        if not limits.any:
            return Ticket(subject, limits)
        lease = new_lease() if limits.concurrency is not None else None
        conc_key = self._key("conc", subject)
        keys = [
            self._key("rpm", subject),
            self._key("tpm", subject),
            self._key("tpd", subject),
            conc_key,
        ]
        args: list[str | int] = [
            _wire(limits.rpm),
            _wire(limits.tpm),
            _wire(limits.daily_tokens),
            _wire(limits.concurrency),
            lease or "",
            self._lease_ttl_ms,
            MINUTE_KEY_TTL,
        ]
        try:
            reply = await self._run(ACQUIRE, keys, args)
        except RedisError as exc:
            raise LimiterUnavailable(f"rate limiter unavailable: {exc}") from exc
        admitted, sec, usec, requests, tokens, day_tokens, in_flight = (int(v) for v in reply)
        now = sec + usec / 1_000_000
        if not admitted:
            refusal = check(limits, Usage(requests, tokens, day_tokens), in_flight, now)
            if refusal is None:  # the script and check() disagree: a bug, refuse safely
                raise LimiterUnavailable("rate limiter unavailable: inconsistent answer")
            raise refusal
        if lease is not None:
            self._leases.setdefault(conc_key, set()).add(lease)
        headers = rate_headers(limits, Usage(requests + 1, tokens, day_tokens), now)
        return Ticket(subject, limits, lease=lease, headers=headers)

    async def release(self, ticket: Ticket, tokens: int) -> None:
        if not ticket.limits.any or (ticket.lease is None and not tokens):
            return
        conc_key = self._key("conc", ticket.subject)
        if ticket.lease is not None:
            # forget it first, so the heartbeat stops renewing it even if the ZREM fails
            held = self._leases.get(conc_key)
            if held is not None:
                held.discard(ticket.lease)
                if not held:
                    del self._leases[conc_key]
        keys = [self._key("tpm", ticket.subject), self._key("tpd", ticket.subject), conc_key]
        args: list[str | int] = [ticket.lease or "", tokens, MINUTE_KEY_TTL, DAY_KEY_TTL]
        try:
            await self._run(RELEASE, keys, args)
        except Exception as exc:
            # The request is over either way: its slot expires within lease_ttl, and its tokens
            # go uncharged, which is the lesser harm than failing a finished response.
            log.warning(
                "rate limiter: release for %r failed, %d tokens uncharged (%s)",
                ticket.subject,
                tokens,
                exc,
            )

    async def _beat(self) -> None:
        interval = self._lease_ttl / 3
        while True:
            await asyncio.sleep(interval)
            if not self._leases:
                continue
            keys = list(self._leases)
            args: list[str | int] = [self._lease_ttl_ms]
            for key in keys:
                ids = self._leases[key]
                args.append(len(ids))
                args.extend(ids)
            try:
                lost = await self._run(HEARTBEAT, keys, args)
            except Exception as exc:
                # keep beating: a lease survives two missed beats
                log.warning("rate limiter: lease heartbeat failed (%s)", exc)
                continue
            if lost:
                # Redis was out of reach for longer than lease_ttl (or lost its data): those
                # requests run on uncounted; stop renewing them so this is said once
                log.warning("rate limiter: %d concurrency leases had already expired", len(lost))
                gone = {item.decode() if isinstance(item, bytes) else str(item) for item in lost}
                for key in keys:
                    held = self._leases.get(key)
                    if held is not None:
                        held -= gone
                        if not held:
                            del self._leases[key]
