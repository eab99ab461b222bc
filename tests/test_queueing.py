"""The FIFO limiter: positions, order, and a limit that grows or shrinks at run time (channels added or removed)."""

from __future__ import annotations

import asyncio

import pytest

from imagegate.errors import EngineOverloaded
from imagegate.queueing import FifoLimiter


async def _take(limiter: FifoLimiter, positions: list[int], name: str, order: list[str]) -> None:
    async for position in limiter.acquire():
        positions.append(position)
    order.append(name)


def test_a_larger_limit_admits_waiters_at_once_in_order_and_a_smaller_one_as_jobs_end():
    async def main():
        limiter = FifoLimiter(1)
        order: list[str] = []
        await _take(limiter, [], "first", order)
        positions = {name: [] for name in "abc"}
        waiters = [asyncio.create_task(_take(limiter, positions[name], name, order)) for name in "abc"]
        await asyncio.sleep(0)
        assert limiter.waiting == 3 and [positions[n] for n in "abc"] == [[1], [2], [3]]
        limiter.resize(3)  # two more slots: a and b go now, c waits for a release
        await asyncio.sleep(0)
        assert order == ["first", "a", "b"] and limiter.waiting == 1 and limiter.active == 3
        limiter.resize(1)
        limiter.release()  # 2 active, limit 1: c still waits
        await asyncio.sleep(0)
        assert limiter.waiting == 1
        limiter.release()
        limiter.release()  # 0 active: c goes
        await asyncio.gather(*waiters)
        assert order == ["first", "a", "b", "c"] and limiter.active == 1 and positions["c"][-1] == 1

    asyncio.run(main())


def test_a_waiter_that_leaves_moves_those_behind_it_up_and_a_long_queue_drains_in_order():
    async def main():
        limiter = FifoLimiter(1)
        await _take(limiter, [], "running", [])
        positions = {i: [] for i in range(200)}
        order: list[str] = []
        waiters = [asyncio.create_task(_take(limiter, positions[i], str(i), order)) for i in range(200)]
        await asyncio.sleep(0)
        assert [positions[i][-1] for i in (0, 1, 49, 199)] == [1, 2, 50, 200]
        waiters[0].cancel()  # the first in line gives up: everyone behind moves up one place
        for _ in range(3):  # its cancellation runs, then those it woke
            await asyncio.sleep(0)
        assert positions[1][-1] == 1 and positions[49][-1] == 49 and limiter.waiting == 199
        # Far back, a waiter hears its place every 25th move (it is told every move near the front).
        assert positions[199][-1] == 200 and positions[174][-1] == 175
        for _ in range(200):
            limiter.release()
            for _ in range(3):
                await asyncio.sleep(0)
        await asyncio.gather(*waiters[1:])
        assert order == [str(i) for i in range(1, 200)]
        assert positions[199][-3:] == [3, 2, 1]  # every move heard once near the front
        assert all(b < a for i in range(1, 200) for a, b in zip(positions[i], positions[i][1:]))

    asyncio.run(main())


def test_a_waiter_cancelled_after_its_grant_gives_its_slot_back():
    async def main():
        limiter = FifoLimiter(1)
        await _take(limiter, [], "running", [])
        waiter = asyncio.create_task(_take(limiter, [], "next", []))
        await asyncio.sleep(0)
        limiter.release()  # granted, but cancelled before it runs on
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert limiter.active == 0 and limiter.waiting == 0

    asyncio.run(main())


def test_a_full_line_refuses_newcomers_at_once_and_takes_them_again_once_it_moves():
    async def main():
        limiter = FifoLimiter(1, max_waiting=2)
        await _take(limiter, [], "running", [])
        order: list[str] = []
        waiters = [asyncio.create_task(_take(limiter, [], name, order)) for name in "ab"]
        await asyncio.sleep(0)
        assert limiter.waiting == 2
        with pytest.raises(EngineOverloaded) as refused:
            limiter.check_room()
        assert refused.value.status == 503 and refused.value.code == "engine_overloaded"
        assert refused.value.headers == {"retry-after": "2"}
        with pytest.raises(EngineOverloaded):
            await _take(limiter, [], "c", order)  # refused on joining too, holding nothing
        assert limiter.waiting == 2 and limiter.active == 1
        limiter.release()  # a goes; the line has room for one again
        await asyncio.sleep(0)
        limiter.check_room()
        late = asyncio.create_task(_take(limiter, [], "d", order))
        for _ in range(2):
            limiter.release()
            await asyncio.sleep(0)
        await asyncio.gather(*waiters, late)
        assert order == ["a", "b", "d"]

    asyncio.run(main())


def test_no_line_at_all_refuses_only_those_who_would_wait():
    async def main():
        limiter = FifoLimiter(2, max_waiting=0)
        limiter.check_room()
        await _take(limiter, [], "one", [])
        limiter.check_room()  # a slot is free: nobody would wait
        await _take(limiter, [], "two", [])
        with pytest.raises(EngineOverloaded):
            limiter.check_room()
        limiter.release()
        limiter.check_room()

    asyncio.run(main())
