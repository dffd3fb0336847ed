"""Failed-authentication throttling per client address, so a key-guessing flood is cheap to refuse.

Counted in this process only: a refusal must cost nothing, not a round trip. A request with a
valid key is never refused here, so clients behind a shared address are not starved.

Each address's minute begins at its first failure (not on the clock's minute, whose turn would
forgive a guesser that straddles it, and make the count depend on when a client happens to
start).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from secureig.policy.limits import MINUTE

# Past this many addresses the table drops those whose minute is over, and starts over if that
# is not enough: memory stays bounded under a flood from many addresses, at the price of
# forgetting some counts early.
_MAX_ADDRESSES = 100_000


class AuthThrottle:
    def __init__(
        self, failures_per_minute: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = failures_per_minute
        self._clock = clock
        self._failures: dict[str, tuple[float, int]] = {}  # address -> (minute began, failures)

    def blocked(self, address: str) -> int | None:
        """Seconds to wait, when this address has failed too often in its minute."""
        if self._limit <= 0:
            return None
        entry = self._failures.get(address)
        if entry is None:
            return None
        began, count = entry
        left = began + MINUTE - self._clock()
        if left <= 0:
            del self._failures[address]
            return None
        return max(1, math.ceil(left)) if count >= self._limit else None

    def failed(self, address: str) -> None:
        if self._limit <= 0:
            return
        now = self._clock()
        entry = self._failures.get(address)
        if entry is None or now - entry[0] >= MINUTE:
            if len(self._failures) >= _MAX_ADDRESSES:
                self._forget(now)
            self._failures[address] = (now, 1)
        else:
            self._failures[address] = (entry[0], entry[1] + 1)

    def _forget(self, now: float) -> None:
        live = {a: e for a, e in self._failures.items() if now - e[0] < MINUTE}
        self._failures = live if len(live) < _MAX_ADDRESSES else {}
