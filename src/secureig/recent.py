"""A bounded set that remembers what was seen most recently: the oldest is forgotten first."""

from __future__ import annotations

from collections import OrderedDict


class Recent:
    """`add` what was just seen, ask `in`; at most `size` are kept, the least recently added
    forgotten first, so a flood of new ones costs memory once."""

    __slots__ = ("_seen", "_size")

    def __init__(self, size: int) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, item: str) -> None:
        seen = self._seen
        if item in seen:
            seen.move_to_end(item)
            return
        seen[item] = None
        if len(seen) > self._size:
            seen.popitem(last=False)

    def discard(self, item: str) -> None:
        self._seen.pop(item, None)

    def __contains__(self, item: object) -> bool:
        return item in self._seen
