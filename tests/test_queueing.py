"""The FIFO limiter: positions, order, and a limit that grows or shrinks at run time (channels added or removed)."""

from __future__ import annotations

import asyncio

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
