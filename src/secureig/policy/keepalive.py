"""`keep_alive` as Ollama will read it: a whole number of nanoseconds (Go's `time.Duration`).

Ollama takes a JSON number of seconds, converted with `time.Duration(seconds * 1e9)` (truncated
toward zero), or a Go duration string (`time.ParseDuration`); a negative value becomes "forever".
A duration of zero or less unloads the model as soon as it is idle (server/sched.go), so `1e-10`,
`"0.5ns"` and `"-0"` unload as surely as `0` does. The policy judges this value, never the text.
"""

from __future__ import annotations

import math

FOREVER = 2**63 - 1  # math.MaxInt64 nanoseconds, what Ollama makes of a negative keep_alive
_OVERFLOW = 2**63
_UNITS = {
    b"ns": 1,
    b"us": 1_000,
    "µs".encode(): 1_000,  # U+00B5 micro sign
    "μs".encode(): 1_000,  # U+03BC Greek mu
    b"ms": 1_000_000,
    b"s": 1_000_000_000,
    b"m": 60 * 1_000_000_000,
    b"h": 3600 * 1_000_000_000,
}
_DIGITS = b"0123456789"


class InvalidDuration(ValueError):
    """Not something Ollama would accept as a keep_alive (it would answer 400)."""


def parse_go_duration(text: str) -> int:
    """Go's `time.ParseDuration`, nanoseconds and errors alike, on the string's UTF-8 bytes."""
    s = text.encode("utf-8", "surrogatepass")
    bad = InvalidDuration(f"invalid duration {text[:40]!r}")
    negative = False
    if s[:1] in (b"-", b"+"):
        negative = s[:1] == b"-"
        s = s[1:]
    if s == b"0":
        return 0
    if not s:
        raise bad
    total = 0
    while s:
        if s[0] not in b"." + _DIGITS:
            raise bad
        i = 0
        whole = 0
        while i < len(s) and s[i] in _DIGITS:
            whole = whole * 10 + s[i] - 48
            if whole > _OVERFLOW:
                raise bad
            i += 1
        pre = i > 0
        s = s[i:]
        fraction, scale, post = 0, 1.0, False
        if s[:1] == b".":
            s = s[1:]
            i, overflow = 0, False
            while i < len(s) and s[i] in _DIGITS:
                if not overflow:
                    # Go stops gathering precision, without error, once the digits overflow.
                    step = fraction * 10 + s[i] - 48
                    if step > _OVERFLOW:
                        overflow = True
                    else:
                        fraction, scale = step, scale * 10
                i += 1
            post = i > 0
            s = s[i:]
        if not (pre or post):
            raise bad
        i = 0
        while i < len(s) and s[i] not in b"." + _DIGITS:
            i += 1
        unit = _UNITS.get(s[:i])
        if unit is None:
            raise bad
        s = s[i:]
        if whole > _OVERFLOW // unit:
            raise bad
        value = whole * unit
        if fraction:
            # Go computes this step in float64 (to be exact to the nanosecond for hours).
            value += int(float(fraction) * (float(unit) / scale))
            if value > _OVERFLOW:
                raise bad
        total += value
        if total > _OVERFLOW:
            raise bad
    if negative:
        return -total
    if total > _OVERFLOW - 1:
        raise bad
    return total


def keep_alive_nanoseconds(value: object) -> int:
    """The `time.Duration` Ollama makes of a keep_alive value; raises InvalidDuration."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidDuration("keep_alive must be a number of seconds or a duration such as '5m'")
    if isinstance(value, str):
        nanoseconds = parse_go_duration(value)
        return FOREVER if nanoseconds < 0 else nanoseconds
    if value < 0:
        return FOREVER
    try:
        scaled = float(value) * 1e9
    except OverflowError:  # an integer beyond any float
        scaled = math.inf
    if not math.isfinite(scaled) or scaled >= _OVERFLOW:
        # Go's float-to-int conversion of an out-of-range value is the CPU's business: on
        # x86-64 it is the most negative Duration, which unloads. Read it as an unload.
        return 0
    return int(scaled)  # truncated toward zero, as Go converts
