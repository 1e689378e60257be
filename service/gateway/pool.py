"""Several model servers behind one :class:`~service.gateway.backend.Backend`.

:class:`BackendPool` is itself a ``Backend``: the gateway's pipeline and catalog
do not know whether one server or ten answer them.

* **Spreading**: each call goes to the healthy member with the fewest calls in
  flight (ties: round robin), so a slow or busy server gets less work.
* **Failover**: a member that could not be reached, or whose connection broke
  mid-request (:class:`BackendUnavailable`), is marked unhealthy and the same
  call is sent to the next member; a member that answered "busy"
  (:class:`BackendOverloaded`) is skipped for this call only. Inference is a pure
  function of the request, so running it twice is safe. Timeouts are not failed
  over (a second full wait would double the client's latency), nor are answers
  (4xx from the model, bad logits), which another replica would repeat.
* **Probing back**: a background task re-probes unhealthy members every
  ``probe_interval_s`` with the member's own :meth:`Backend.ready` on the last
  model the pool served; a member found ready rejoins at once.
* **No false 503**: when every member is marked unhealthy the call still tries
  them all (the marks may be stale) before giving up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.gateway.backend import Backend
from service.gateway.errors import BackendOverloaded, BackendUnavailable
from service.modelserver.meta import ModelMeta

logger = logging.getLogger(__name__)

__all__ = ["BackendPool", "Member", "PoolCollector"]

T = TypeVar("T")


@dataclass
class Member:
    """One model server of a pool and what the pool knows about it."""

    name: str
    backend: Backend
    healthy: bool = True
    inflight: int = 0
    failures: int = 0
    requests: int = 0
    down_since: float | None = field(default=None, repr=False)


class BackendPool:
    """A :class:`Backend` over several members with the same models (see the module doc)."""

    def __init__(
        self,
        backends: Sequence[Backend],
        names: Sequence[str] | None = None,
        *,
        probe_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not backends:
            raise ValueError("a backend pool needs at least one backend")
        names = list(names) if names is not None else [f"backend{i}" for i in range(len(backends))]
        if len(names) != len(backends):
            raise ValueError("one name per backend")
        self.members = [Member(n, b) for n, b in zip(names, backends, strict=True)]
        self.probe_interval_s = probe_interval_s
        self.clock = clock
        self._turn = itertools.count()
        self._probe_model: str | None = None
        self._prober: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------ selection
    def _order(self) -> list[Member]:
        """Healthy members by in-flight calls (ties rotate), then the unhealthy ones."""
        start = next(self._turn)
        n = len(self.members)
        rotated = [self.members[(start + i) % n] for i in range(n)]
        healthy = sorted((m for m in rotated if m.healthy), key=lambda m: m.inflight)
        unhealthy = sorted((m for m in rotated if not m.healthy), key=lambda m: m.down_since or 0.0)
        return healthy + unhealthy

    def _mark_down(self, member: Member, exc: Exception) -> None:
        if member.healthy:
            member.healthy = False
            member.down_since = self.clock()
            logger.warning("backend %s is down (%s); failing over", member.name, exc)
        self._ensure_prober()

    def _mark_up(self, member: Member) -> None:
        if not member.healthy:
            down = self.clock() - (member.down_since or self.clock())
            logger.info("backend %s is back after %.1f s", member.name, down)
        member.healthy = True
        member.down_since = None

    async def _call(self, model: str | None, call: Callable[[Backend], Awaitable[T]]) -> T:
        last: Exception | None = None
        for member in self._order():
            member.inflight += 1
            member.requests += 1
            try:
                result = await call(member.backend)
            except BackendUnavailable as exc:
                member.failures += 1
                self._mark_down(member, exc)
                last = exc
                continue
            except BackendOverloaded as exc:
                last = exc  # busy, not broken: try another, keep it in the rotation
                continue
            finally:
                member.inflight -= 1
            self._mark_up(member)
            if model is not None:  # a model that exists: what the probe asks about
                self._probe_model = model
            return result
        assert last is not None
        raise last

    # ------------------------------------------------------------- probing
    def _ensure_prober(self) -> None:
        if self._closed or (self._prober is not None and not self._prober.done()):
            return
        with contextlib.suppress(RuntimeError):  # no running loop: probe on the next call
            self._prober = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while not self._closed and any(not m.healthy for m in self.members):
            await asyncio.sleep(self.probe_interval_s)
            model = self._probe_model
            await asyncio.gather(*(self._probe(m, model) for m in self.members if not m.healthy))

    async def _probe(self, member: Member, model: str | None) -> bool:
        try:
            if model is not None:
                ok = await member.backend.ready(model)
            else:
                await member.backend.list_models()
                ok = True
        except Exception as exc:  # a probe never raises; it only decides health
            logger.debug("probing %s failed: %s", member.name, exc)
            ok = False
        if ok:
            self._mark_up(member)
        elif member.healthy:
            self._mark_down(member, BackendUnavailable("not ready"))
        return ok

    # ------------------------------------------------------------- protocol
    async def infer(
        self, model: str, clips: np.ndarray, *, headers: Mapping[str, str] | None = None
    ) -> np.ndarray:
        return await self._call(model, lambda b: b.infer(model, clips, headers=headers))

    async def infer_indexed(
        self,
        model: str,
        clip: np.ndarray,
        indices: np.ndarray,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> np.ndarray:
        return await self._call(
            model, lambda b: b.infer_indexed(model, clip, indices, headers=headers)
        )

    async def list_models(self) -> list[str]:
        return await self._call(None, lambda b: b.list_models())

    async def describe(self, model: str) -> ModelMeta:
        return await self._call(model, lambda b: b.describe(model))

    async def ready(self, model: str) -> bool:
        """True when any member is ready (probes them all; updates their health)."""
        results = await asyncio.gather(*(self._probe(m, model) for m in self.members))
        if any(results):
            self._probe_model = model
        return any(results)

    async def aclose(self) -> None:
        self._closed = True
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        for member in self.members:
            await member.backend.aclose()


class PoolCollector(Collector):
    """Per model server of a pool (label ``backend``: its URL): ``shuffleguard_backend_up``,
    ``_inflight``, ``_calls_total`` and ``_failovers_total``."""

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "shuffleguard_backend_up",
            "1 when the pool counts this model server healthy, 0 while it is failed over.",
            labels=["backend"],
        )
        inflight = GaugeMetricFamily(
            "shuffleguard_backend_inflight",
            "Calls to this model server in flight.",
            labels=["backend"],
        )
        calls = CounterMetricFamily(
            "shuffleguard_backend_calls",
            "Calls sent to this model server (inference, metadata), failed-over ones included.",
            labels=["backend"],
        )
        failures = CounterMetricFamily(
            "shuffleguard_backend_failovers",
            "Calls to this model server that failed (unreachable, connection dropped) and "
            "went to another one.",
            labels=["backend"],
        )
        for m in self.pool.members:
            failures.add_metric([m.name], float(m.failures))
            up.add_metric([m.name], 1.0 if m.healthy else 0.0)
            inflight.add_metric([m.name], float(m.inflight))
            calls.add_metric([m.name], float(m.requests))
        yield up
        yield inflight
        yield calls
        yield failures
