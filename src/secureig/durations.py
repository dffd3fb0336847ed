"""Durations as operators type them: `90s`, `45m`, `12h`, `30d`."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"(\d{1,12})([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# A hundred years: longer than any key or report needs, and far inside what dates can hold.
MAX_DURATION = timedelta(days=36500)
HELP = "a positive number with s, m, h or d, at most 36500d: 90s, 45m, 12h, 30d"


def parse_duration(text: str) -> timedelta:
    """Raises ValueError with HELP for anything else."""
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"invalid duration {text[:40]!r}: use {HELP}")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"duration {text[:40]!r} is too long: use {HELP}")
    return timedelta(seconds=seconds)
