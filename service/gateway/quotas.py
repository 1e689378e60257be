"""Per-client quotas: a token bucket (rate + burst) and a cap on requests at once.

Each client name (from the key file) has one :class:`TokenBucket` and one count of
requests in progress, in this process: with ``serve --workers N`` or N replicas each
process enforces its own, so a client gets up to N times its limit in total (the
load balancer decides how its requests spread). :meth:`Quotas.admit` checks the
concurrency cap first (a refused request spends no token), then takes a token;
refusals are 429 with ``Retry-After``: for the rate, the whole seconds until the
bucket holds a token again; for concurrency, the app's ``retry_after_s`` (when a
running request ends cannot be known). Only ``/v1/classify`` is metered.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from service.gateway.errors import ConcurrencyLimited, RateLimited
from service.gateway.keys import Client, Quota
from service.gateway.metrics import GatewayMetrics

__all__ = ["Quotas", "TokenBucket"]

#: float slack when a bucket refilled for exactly the advertised Retry-After
_EPS = 1e-9


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` per second; a request takes one.
    Time comes from the caller (``now``, seconds of a monotonic clock)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"bad bucket: rate={rate}, burst={burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken; else the seconds until one is there (none taken)."""
        self._refill(now)
        if self.tokens >= 1.0 - _EPS:
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def retry_after(self, now: float) -> int:
        """Whole seconds to wait for a token (at least 1): what ``Retry-After`` says."""
        self._refill(now)
        return max(1, math.ceil((1.0 - self.tokens) / self.rate - _EPS))


class Quotas:
    """The quota state of one gateway process (see the module docstring)."""

    def __init__(
        self,
        metrics: GatewayMetrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self._buckets: dict[str, tuple[Quota, TokenBucket]] = {}
        self.running: dict[str, int] = {}

    def bucket(self, name: str, quota: Quota) -> TokenBucket:
        """The bucket of ``name``; a new one (keeping the tokens left, up to the new
        burst) when its quota changed in a key-file reload."""
        now = self.clock()
        held = self._buckets.get(name)
        if held is not None and held[0] == quota:
            return held[1]
        bucket = TokenBucket(quota.rate, quota.burst, now)
        if held is not None:
            old = held[1]
            old._refill(now)
            bucket.tokens = min(float(quota.burst), old.tokens)
        self._buckets[name] = (quota, bucket)
        return bucket

    def _refuse(self, client: Client, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.quota_rejections.labels(client=client.name, reason=reason).inc()

    def check(self, client: Client) -> None:
        """Raise the 429 ``client`` gets now, or take one of its tokens."""
        quota = client.quota
        if quota is None:
            return
        running = self.running.get(client.name, 0)
        if running >= quota.concurrency:
            self._refuse(client, "concurrency")
            raise ConcurrencyLimited(
                f"key {client.name!r} has {running} requests in progress, its limit; "
                "retry when one has finished"
            )
        bucket = self.bucket(client.name, quota)
        now = self.clock()
        if bucket.take(now) > 0:
            self._refuse(client, "rate")
            wait = bucket.retry_after(now)
            raise RateLimited(
                f"key {client.name!r} is over its rate of {quota.rate:g} requests/s (burst "
                f"{quota.burst}); retry after {wait} s",
                retry_after=wait,
            )

    @asynccontextmanager
    async def admit(self, client: Client) -> AsyncIterator[None]:
        """Hold one of ``client``'s places for the request, or raise its 429."""
        self.check(client)  # no await between the check and the count: one event loop
        self.running[client.name] = self.running.get(client.name, 0) + 1
        try:
            yield
        finally:
            self.running[client.name] -= 1
