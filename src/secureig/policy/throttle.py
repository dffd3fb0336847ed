"""Failed-authentication throttling per client address, so a key-guessing flood is cheap to refuse.

Counted in this process only: a refusal must cost nothing, not a round trip. A request with a
valid key is never refused here, so clients behind a shared address are not starved.
"""

from __future__ import annotations

import time

from secureig.policy.limits import MINUTE, window_reset

# Past this many addresses in one minute the table starts over: memory stays bounded under a
# flood from many addresses, at the price of forgetting some counts early.
_MAX_ADDRESSES = 100_000


class AuthThrottle:
    def __init__(self, failures_per_minute: int) -> None:
        self._limit = failures_per_minute
        self._minute = -1
        self._failures: dict[str, int] = {}

    def _roll(self, now: float) -> None:
        minute = int(now // MINUTE)
        if minute != self._minute or len(self._failures) > _MAX_ADDRESSES:
            self._minute = minute
            self._failures = {}

    def blocked(self, address: str) -> int | None:
        """Seconds to wait, when this address has failed too often this minute."""
        if self._limit <= 0:
            return None
        now = time.time()
        self._roll(now)
        if self._failures.get(address, 0) >= self._limit:
            return window_reset(now, MINUTE)
        return None

    def failed(self, address: str) -> None:
        if self._limit > 0:
            self._roll(time.time())
            self._failures[address] = self._failures.get(address, 0) + 1
