"""The circuit breaker's half-open probe: one request at a time tests a channel that failed, whoever asks."""

from __future__ import annotations

from imagegate.config import ChannelConfig
from imagegate.routing import Channel


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
