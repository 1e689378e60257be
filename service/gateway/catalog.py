"""Model metadata, the default model and readiness, cached with short TTLs.

The gateway never needs a restart when the backend comes and goes: metadata is
fetched lazily on first use and refreshed in the background when its TTL runs
out, a failed first fetch is not cached, and readiness is re-probed at most
every ``readiness_ttl_s``. Concurrent requests for the same missing entry share one
fetch (single flight), so a burst after a backend restart sends one describe
call, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.gateway.backend import Backend
from service.gateway.errors import BackendProtocolError, ModelNotFound
from service.modelserver.meta import ModelMeta

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["ModelCatalog", "TTLCache"]


@dataclass
class _Entry(Generic[T]):
    value: T
    expires: float


class TTLCache(Generic[T]):
    """A tiny async cache: ``await get(key, fetch)`` with expiry and single flight.

    With ``serve_stale=True`` an expired entry is still answered at once while one
    background fetch refreshes it (stale-while-revalidate): model metadata rarely
    changes, and TorchServe answers a customized describe through the model's job
    queue, so a synchronous refresh would park a request behind inference jobs. A
    failed refresh keeps the stale entry, except ``ModelNotFound``, which drops it.
    """

    def __init__(
        self,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        serve_stale: bool = False,
    ) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.serve_stale = serve_stale
        self._entries: dict[str, _Entry[T]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    def peek(self, key: str) -> T | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires > self.clock():
            return entry.value
        return None

    def invalidate(self, key: str | None = None) -> None:
        if key is None:
            self._entries.clear()
        else:
            self._entries.pop(key, None)

    async def get(self, key: str, fetch: Callable[[], Awaitable[T]]) -> T:
        cached = self.peek(key)
        if cached is not None:
            return cached
        stale = self._entries.get(key)
        if self.serve_stale and stale is not None:
            if key not in self._refreshing:
                task = asyncio.create_task(self._refresh(key, fetch))
                self._refreshing[key] = task
                task.add_done_callback(lambda _t: self._refreshing.pop(key, None))
            return stale.value
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self.peek(key)  # another request may have filled it meanwhile
            if cached is not None:
                return cached
            value = await fetch()  # errors propagate and are not cached
            self._entries[key] = _Entry(value, self.clock() + self.ttl_s)
            if len(self._locks) > 1024:  # names come from requests: keep this bounded
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            return value

    async def _refresh(self, key: str, fetch: Callable[[], Awaitable[T]]) -> None:
        try:
            value = await fetch()
        except ModelNotFound:
            self._entries.pop(key, None)
        except Exception as exc:  # keep serving the stale entry
            logger.debug("refreshing %s failed: %s", key, exc)
        else:
            self._entries[key] = _Entry(value, self.clock() + self.ttl_s)


class ModelCatalog:
    """The backend's models as the gateway sees them."""

    def __init__(
        self,
        backend: Backend,
        *,
        default_model: str,
        ttl_s: float = 30.0,
        readiness_ttl_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.configured_default = default_model
        self._meta: TTLCache[ModelMeta] = TTLCache(ttl_s, clock, serve_stale=True)
        self._names: TTLCache[tuple[str, ...]] = TTLCache(ttl_s, clock, serve_stale=True)
        self._ready: TTLCache[bool] = TTLCache(readiness_ttl_s, clock)
        self._missing: TTLCache[bool] = TTLCache(min(ttl_s, 5.0), clock)

    async def model_names(self) -> tuple[str, ...]:
        async def fetch() -> tuple[str, ...]:
            return tuple(await self.backend.list_models())

        return await self._names.get("names", fetch)

    async def default_name(self) -> str:
        """The configured default when served, else the first model the backend lists."""
        names = await self.model_names()
        if self.configured_default in names or not names:
            return self.configured_default
        return names[0]

    def cached_default_name(self) -> str:
        """Best guess without I/O (for metric labels on early errors)."""
        names = self._names.peek("names")
        if names and self.configured_default not in names:
            return names[0]
        return self.configured_default

    def is_known(self, name: str) -> bool:
        """True when ``name`` is a model this gateway has seen served (no I/O)."""
        names = self._names.peek("names") or ()
        return name in names or self._meta.peek(name) is not None

    async def resolve(self, name: str | None) -> ModelMeta:
        """Metadata of ``name`` (the default model when None); ModelNotFound when unknown."""
        model = name or await self.default_name()
        if self._missing.peek(model):
            raise ModelNotFound(f"model {model!r} is not served; GET /v1/models lists the models")

        async def fetch() -> ModelMeta:
            return await self.backend.describe(model)

        try:
            return await self._meta.get(model, fetch)
        except ModelNotFound:
            # Remember briefly, so a flood of bad names costs the backend nothing.
            await self._missing.get(model, _true)
            raise

    async def all_models(self) -> list[ModelMeta]:
        """Metadata of every served model that carries a usable ``meta.json``."""
        metas = []
        for name in await self.model_names():
            try:
                metas.append(await self.resolve(name))
            except (ModelNotFound, BackendProtocolError) as exc:
                logger.warning("model %s is not listed: %s", name, exc)
        return metas

    async def ready(self) -> bool:
        """Backend reachable and the default model has a READY worker (never raises)."""

        async def probe() -> bool:
            try:
                model = await self.default_name()
            except Exception:  # backend down: the listing failed
                return False
            ok = await self.backend.ready(model)
            if not ok:
                # A backend that went away may come back with other models or versions.
                self._names.invalidate()
            return ok

        return await self._ready.get("ready", probe)

    def invalidate(self, name: str | None = None) -> None:
        """Forget cached metadata (e.g. after the backend said a model is gone)."""
        self._meta.invalidate(name)
        self._names.invalidate()


async def _true() -> bool:
    return True
