import pytest

from imagegate.guard import PromptGuard


@pytest.fixture(scope="session")
def guard() -> PromptGuard:
    # Built once, like the gateway does at start-up.
    return PromptGuard.load()
