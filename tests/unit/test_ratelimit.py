"""The pacer on a fake clock: rates hold over a window, bursts are bounded, pauses apply."""

import asyncio
import random

import pytest

from stillroom.ratelimit import RateLimiter, backoff_delay


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def send_times(limiter: RateLimiter, clock: FakeClock, n: int, tokens: int = 0) -> list[float]:
    """Reserve n requests back to back, as n concurrent callers would."""
    return [limiter.reserve(tokens) - clock.now for _ in range(n)]


def test_request_rate_is_held_after_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=None, burst_s=1.0, clock=clock)
    times = send_times(limiter, clock, 100)
    # 10/s with one second of burst: 11 go at once (the burst, plus the one whose slot is
    # now), then one every 0.1 s; over any window the rate is 10/s plus at most the burst.
    assert times[:11] == pytest.approx([0.0] * 11) and times[11] == pytest.approx(0.1)
    assert times[99] == pytest.approx(8.9)
    assert all(b >= a for a, b in zip(times, times[1:], strict=False))


def test_token_rate_binds_when_requests_are_large() -> None:
    clock = FakeClock()
    limiter = RateLimiter(
        requests_per_minute=6000, tokens_per_minute=60_000, burst_s=1.0, clock=clock
    )
    times = send_times(limiter, clock, 11, tokens=1000)  # 1000 tokens/s allowed
    assert times[1] == 0.0 and times[2] == pytest.approx(1.0)
    assert times[10] == pytest.approx(9.0)


def test_a_request_bigger_than_the_burst_still_goes() -> None:
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=600, burst_s=1.0, clock=clock)
    assert send_times(limiter, clock, 2, tokens=5000) == [0.0, pytest.approx(499.0)]


def test_settling_real_usage_moves_later_requests() -> None:
    clock = FakeClock()
    limiter = RateLimiter(
        requests_per_minute=None, tokens_per_minute=60_000, burst_s=1.0, clock=clock
    )
    limiter.reserve(3000)  # estimated 3000 tokens ...
    limiter.settle(estimated=3000, actual=1000)  # ... the answer says 1000
    assert limiter.reserve(1000) == pytest.approx(clock.now)
    assert limiter.reserve(1000) == pytest.approx(clock.now + 1.0)


def test_default_has_no_burst_so_no_window_sees_more_than_the_limit() -> None:
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=None, clock=clock)
    times = send_times(limiter, clock, 50)
    assert times == pytest.approx([i * 0.1 for i in range(50)])


def test_pause_holds_everyone_including_callers_already_waiting() -> None:
    async def scenario() -> float:
        limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=None)
        loop = asyncio.get_running_loop()
        started = loop.time()
        limiter.pause(0.3)
        await limiter.acquire(0)
        return loop.time() - started

    assert asyncio.run(scenario()) >= 0.29


def test_unlimited_never_waits() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, None, clock=clock)
    assert set(send_times(limiter, clock, 50, tokens=10**6)) == {0.0}


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(0)
    for attempt, ceiling in [(0, 0.5), (3, 4.0), (10, 30.0)]:
        draws = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert max(draws) <= ceiling and max(draws) > 0.7 * ceiling
