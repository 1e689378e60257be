"""Overload control: at most ``max_inflight`` classify requests run at once.

Two gates, so that memory stays bounded and a slow client blocks nobody:

1. :meth:`Admission.admit` -- on arrival, before the upload is read. At most
   ``max_inflight + max_queue`` requests are admitted at once; the next one
   gets 429 at once. This bounds the uploads held in memory.
2. :meth:`Admission.run_slot` -- after the upload has arrived, before decoding.
   At most ``max_inflight`` requests hold a slot (decode, shuffle, backend,
   vote); the others wait, first come first served, up to ``queue_timeout_s``,
   then get 429. Uploading does not hold a slot, so a stalled upload never
   keeps a ready request from running.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.gateway.errors import Overloaded

__all__ = ["Admission"]


class Admission:
    def __init__(
        self,
        max_inflight: int,
        max_queue: int,
        *,
        queue_timeout_s: float = 10.0,
        retry_after_s: int = 1,
    ) -> None:
        if max_inflight < 1 or max_queue < 0:
            raise ValueError(f"bad limits: {max_inflight}, {max_queue}")
        self.max_inflight = max_inflight
        self.max_admitted = max_inflight + max_queue
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self.admitted = 0
        self.running = 0
        self._slots = asyncio.Semaphore(max_inflight)

    def _overloaded(self, why: str) -> Overloaded:
        return Overloaded(
            f"the gateway is at capacity ({why}); retry after {self.retry_after_s} s",
            retry_after=self.retry_after_s,
        )

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold one of the ``max_inflight + max_queue`` places, or raise Overloaded."""
        if self.admitted >= self.max_admitted:
            raise self._overloaded(f"{self.admitted} requests in progress")
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @asynccontextmanager
    async def run_slot(self) -> AsyncIterator[None]:
        """Hold one of the ``max_inflight`` run slots (waiting in FIFO order)."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self.queue_timeout_s)
        except TimeoutError:
            raise self._overloaded(
                f"waited {self.queue_timeout_s:g} s for one of {self.max_inflight} slots"
            ) from None
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
