"""Durations as operators type them: `90s`, `45m`, `12h`, `30d`."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
HELP = "a positive number with s, m, h or d: 90s, 45m, 12h, 30d"


def parse_duration(text: str) -> timedelta:
    """Raises ValueError with HELP for anything else."""
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"invalid duration {text!r}: use {HELP}")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
