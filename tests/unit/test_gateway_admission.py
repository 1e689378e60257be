"""Overload control and the metadata cache: admission, run slots, TTL, single flight."""

from __future__ import annotations

import asyncio

import pytest

from service.gateway.admission import Admission
from service.gateway.catalog import TTLCache
from service.gateway.errors import ModelNotFound, Overloaded


def test_admission_refuses_past_inflight_plus_queue() -> None:
    async def main() -> None:
        gate = Admission(1, 1, retry_after_s=3)
        async with gate.admit(), gate.admit():
            assert gate.admitted == 2
            with pytest.raises(Overloaded) as info:
                async with gate.admit():
                    pass
            assert info.value.status_code == 429 and info.value.retry_after == 3
        assert gate.admitted == 0
        async with gate.admit():  # capacity is back
            pass

    asyncio.run(main())


def test_run_slots_queue_in_order_and_time_out() -> None:
    async def main() -> list[str]:
        gate = Admission(1, 5, queue_timeout_s=0.3)
        order: list[str] = []

        async def job(name: str, hold: float) -> None:
            async with gate.run_slot():
                order.append(name)
                await asyncio.sleep(hold)

        first = asyncio.create_task(job("first", 0.1))
        await asyncio.sleep(0)
        second = asyncio.create_task(job("second", 0.0))
        await asyncio.gather(first, second)
        assert gate.running == 0

        blocker = asyncio.create_task(job("blocker", 1.0))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="waited"):
            await job("starved", 0.0)
        await blocker
        return order

    assert asyncio.run(main()) == ["first", "second", "blocker"]


def test_admission_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        Admission(0, 1)


def test_ttl_cache_expires_and_does_not_cache_errors() -> None:
    now = [0.0]
    cache: TTLCache[int] = TTLCache(10.0, clock=lambda: now[0])
    calls = [0]

    async def fetch() -> int:
        calls[0] += 1
        return calls[0]

    async def fail() -> int:
        raise RuntimeError("backend down")

    async def main() -> None:
        assert await cache.get("k", fetch) == 1
        assert await cache.get("k", fetch) == 1
        now[0] = 11.0
        assert await cache.get("k", fetch) == 2
        with pytest.raises(RuntimeError):
            await cache.get("other", fail)
        assert await cache.get("other", fetch) == 3  # the failure was not remembered
        cache.invalidate("k")
        assert await cache.get("k", fetch) == 4

    asyncio.run(main())


def test_ttl_cache_single_flight() -> None:
    cache: TTLCache[str] = TTLCache(10.0)
    calls = [0]

    async def slow() -> str:
        calls[0] += 1
        await asyncio.sleep(0.05)
        return "meta"

    async def main() -> list[str]:
        return await asyncio.gather(*(cache.get("m", slow) for _ in range(20)))

    assert asyncio.run(main()) == ["meta"] * 20
    assert calls[0] == 1


def test_stale_entry_is_served_while_one_refresh_runs() -> None:
    now = [0.0]
    cache: TTLCache[int] = TTLCache(10.0, clock=lambda: now[0], serve_stale=True)
    calls = [0]
    release = asyncio.Event()

    async def slow_fetch() -> int:
        calls[0] += 1
        if calls[0] > 1:
            await release.wait()
        return calls[0]

    async def main() -> None:
        assert await cache.get("m", slow_fetch) == 1  # first fetch: waited for
        now[0] = 11.0  # expired
        assert await asyncio.wait_for(cache.get("m", slow_fetch), 0.5) == 1  # stale, at once
        assert await cache.get("m", slow_fetch) == 1
        release.set()
        await asyncio.sleep(0.01)
        assert await cache.get("m", slow_fetch) == 2  # refreshed in the background
        assert calls[0] == 2  # one refresh for all the requests that saw it stale

    asyncio.run(main())


def test_refresh_that_finds_the_model_gone_drops_the_entry() -> None:
    now = [0.0]
    cache: TTLCache[int] = TTLCache(10.0, clock=lambda: now[0], serve_stale=True)
    answers: list[int | None] = [1, None, 3]

    async def fetch() -> int:
        value = answers.pop(0)
        if value is None:
            raise ModelNotFound("gone")
        return value

    async def main() -> None:
        assert await cache.get("m", fetch) == 1
        now[0] = 11.0
        assert await cache.get("m", fetch) == 1  # stale; the refresh says "gone"
        await asyncio.sleep(0.01)
        assert cache.peek("m") is None
        assert await cache.get("m", fetch) == 3  # fetched afresh, synchronously

    asyncio.run(main())
