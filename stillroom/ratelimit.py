"""Client-side pacing for a rate-limited API: requests/minute and tokens/minute at once.

Each limit is a GCRA ("virtual scheduling") pacer: a reservation of n units pushes the
limit's theoretical arrival time on by n / rate, and a request may go when every limit's
arrival time is at most `burst_s` ahead of now. Unlike a token bucket that refuses, this
hands out send times, so concurrent callers queue in order, a request larger than the
burst still goes (it just waits its share), and token estimates can be corrected after
the answer reports real usage. A 429's `Retry-After` pauses every caller, because the
provider's limit is shared by all of them.

No burst by default: a provider counting per minute sees at most the limit in any window,
and spacing requests evenly costs nothing once enough callers are queued.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable


class Pacer:
    def __init__(self, per_minute: float, burst_s: float) -> None:
        if per_minute <= 0:
            raise ValueError("a rate limit must be positive")
        self.rate = per_minute / 60.0
        self.burst_s = burst_s
        self.arrival = 0.0  # theoretical arrival time of the next unit

    def earliest(self, now: float) -> float:
        return max(now, self.arrival - self.burst_s)

    def reserve(self, units: float, at: float) -> None:
        self.arrival = max(self.arrival, at) + units / self.rate

    def correct(self, units: float) -> None:
        """Give back (negative) or take (positive) units after the real usage is known."""
        self.arrival += units / self.rate


class RateLimiter:
    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        burst_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests = Pacer(requests_per_minute, burst_s) if requests_per_minute else None
        self.tokens = Pacer(tokens_per_minute, burst_s) if tokens_per_minute else None
        self.clock = clock
        self.not_before = 0.0

    def reserve(self, tokens: int) -> float:
        """Book a send slot for one request of `tokens` and return its time (no await)."""
        now = self.clock()
        at = max(now, self.not_before)
        for pacer in (self.requests, self.tokens):
            if pacer:
                at = max(at, pacer.earliest(now))
        if self.requests:
            self.requests.reserve(1, at)
        if self.tokens:
            self.tokens.reserve(tokens, at)
        return at

    async def acquire(self, tokens: int) -> None:
        at = self.reserve(tokens)
        # A pause can arrive while we sleep (another caller got a 429): honour it too.
        while (delay := max(at, self.not_before) - self.clock()) > 0:
            await asyncio.sleep(delay)

    def settle(self, estimated: int, actual: int) -> None:
        if self.tokens:
            self.tokens.correct(actual - estimated)

    def pause(self, seconds: float) -> None:
        self.not_before = max(self.not_before, self.clock() + seconds)


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: spreads retries of many clients apart."""
    return rng.uniform(0.0, min(max_s, base_s * 2**attempt))
