"""Channels: the circuit breaker's half-open probe (one request at a time tests a channel that failed), and which
channel a request goes to when the preferred one is busy."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from imagegate.config import ChannelConfig
from imagegate.routing import Channel, Router


def _channel(**extra) -> Channel:
    config = ChannelConfig(name="c", base_url="http://127.0.0.1:1/v1", api_key="k", models=["gpt-image-1"],
                           circuit_failures=1, circuit_cooldown_s=10, **extra)
    return Channel(config, engine=object())  # type: ignore[arg-type]


def test_a_closed_circuit_admits_everyone_as_ordinary_traffic():
    channel = _channel()
    assert channel.begin(0) is False and channel.begin(0) is False


def test_an_open_circuit_admits_one_probe_after_its_cool_down():
    channel = _channel()
    channel.failed(0, probe=False)
    assert channel.begin(5) is None  # cooling down
    assert channel.begin(11) is True  # the probe
    assert channel.begin(11) is None  # the others wait for its verdict
    channel.succeeded()
    assert channel.begin(11) is False


def test_only_the_probe_ends_the_probe():
    channel = _channel()
    channel.failed(0, probe=False)
    assert channel.begin(11) is True
    # A request that was under way before the circuit opened fails now: the probe is still out.
    channel.failed(12, probe=False)
    channel.settled_without_verdict(probe=False)
    assert channel.begin(30) is None
    channel.failed(31, probe=True)  # the probe's own failure reopens it for another cool-down
    assert channel.begin(35) is None and channel.begin(42) is True


def test_a_probe_without_a_verdict_lets_the_next_one_through():
    channel = _channel()
    channel.failed(0, probe=False)
    assert channel.begin(11) is True
    channel.settled_without_verdict(probe=True)  # the client's own 400: nothing learnt about the channel
    assert channel.begin(11) is True


def test_a_channel_at_its_cap_leaves_the_next_request_to_one_with_room():
    """The preferred channel (higher priority) is busy: the request goes to the next able one at once instead of
    queueing behind it; only when every able channel is full does it wait, for its first choice."""

    class Held:
        def __init__(self, name: str) -> None:
            self.name, self.running, self.gate = name, 0, asyncio.Event()

        async def run(self, job):
            self.running += 1
            await self.gate.wait()
            yield ("done", self.name)

    def config(name: str, priority: int, concurrency: int) -> ChannelConfig:
        return ChannelConfig(name=name, base_url="http://127.0.0.1:1/v1", api_key="k", models=["gpt-image-1"],
                             priority=priority, concurrency=concurrency)

    job = SimpleNamespace(model=SimpleNamespace(id="gpt-image-1"), operation="generate", n=1, mask_file=None,
                          transparent=False, size="1024x1024")

    async def main():
        preferred, spare = Held("preferred"), Held("spare")
        router = Router([Channel(config("preferred", 1, 1), preferred), Channel(config("spare", 0, 2), spare)])

        async def one():
            return [event async for event in router.run(job)]

        tasks = [asyncio.create_task(one()) for _ in range(4)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert (preferred.running, spare.running) == (1, 2)  # the fourth waits: everyone is full
        preferred.gate.set()
        spare.gate.set()
        done = await asyncio.gather(*tasks)
        assert sorted(d[0][1] for d in done) == ["preferred", "preferred", "spare", "spare"]

    asyncio.run(main())
