"""The NDJSON line splitter: the same lines however the bytes are cut, and the limit exact."""

from __future__ import annotations

import random

import pytest

from secureig.upstream.lines import LineSplitter, LineTooLong


def _split(body: bytes, cuts: list[int], limit: int) -> bytes:
    splitter = LineSplitter(limit)
    out = []
    start = 0
    for cut in [*cuts, len(body)]:
        out.append(splitter.feed(body[start:cut]))
        start = cut
    return b"".join(out) + splitter.tail()


def test_every_chunking_gives_the_same_lines() -> None:
    rng = random.Random(7)
    for _ in range(300):
        lines = [b"x" * rng.randrange(0, 40) for _ in range(rng.randrange(1, 12))]
        body = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        cuts = sorted(rng.sample(range(len(body) + 1), k=min(len(body) + 1, rng.randrange(6))))
        assert _split(body, cuts, 64) == body


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_a_line_at_the_limit_passes_and_one_byte_more_does_not(chunk: int) -> None:
    limit = 100
    ok = b"a\n" + b"y" * limit + b"\nb\n"
    assert _split(ok, list(range(chunk, len(ok), chunk)), limit) == ok
    long = b"a\n" + b"y" * (limit + 1) + b"\nb\n"
    with pytest.raises(LineTooLong):
        _split(long, list(range(chunk, len(long), chunk)), limit)


def test_a_line_that_never_ends_is_refused_as_soon_as_it_passes_the_limit() -> None:
    splitter = LineSplitter(1000)
    fed = 0
    with pytest.raises(LineTooLong):
        while True:
            splitter.feed(b"z" * 64)
            fed += 64
    assert fed == 960  # the 16th piece took it past 1000


def test_whole_lines_come_back_without_a_copy() -> None:
    chunk = b'{"a":1}\n'
    assert LineSplitter(100).feed(chunk) is chunk
