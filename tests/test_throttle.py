"""The failed-authentication throttle, on a clock of the test's own: each address's minute
begins at its first failure, so no turn of the clock's minute forgives a guesser."""

from __future__ import annotations

from secureig.policy import AuthThrottle


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_guesser_straddling_the_minute_is_still_refused() -> None:
    clock = Clock(59.5)  # half a second before the clock's minute turns
    throttle = AuthThrottle(3, clock=clock)
    for _ in range(3):
        assert throttle.blocked("192.0.2.1") is None
        throttle.failed("192.0.2.1")
        clock.now += 0.2
    assert throttle.blocked("192.0.2.1") == 60  # the minute that began at its first failure
    assert throttle.blocked("192.0.2.2") is None  # others are not held to its count
    clock.now = 59.5 + 59.9
    assert throttle.blocked("192.0.2.1") == 1
    clock.now = 59.5 + 60.0
    assert throttle.blocked("192.0.2.1") is None
    throttle.failed("192.0.2.1")  # a new minute, counted from here
    assert throttle.blocked("192.0.2.1") is None


def test_zero_turns_it_off() -> None:
    throttle = AuthThrottle(0, clock=Clock(0.0))
    for _ in range(100):
        throttle.failed("192.0.2.1")
    assert throttle.blocked("192.0.2.1") is None
