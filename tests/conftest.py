from __future__ import annotations

import pytest
from openai import OpenAI

from tests.fault_upstream import FaultUpstream
from tests.servers import TEST_KEY, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("data"))
    yield live
    live.stop()


@pytest.fixture(scope="session")
def client(server) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0, timeout=60)


@pytest.fixture
def faults():
    """A fault-injecting upstream on loopback, scripted by the test."""
    upstream = FaultUpstream()
    yield upstream
    upstream.close()
