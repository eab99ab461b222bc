"""Checks that a request's run, and the megabytes of image it holds, is freed by reference counting alone."""

from __future__ import annotations

import contextlib
import gc
import time
from typing import Iterator


@contextlib.contextmanager
def runs_freed_without_the_cyclic_collector() -> Iterator[None]:
    """The block runs with the cyclic collector off; after it, every run must be gone. A reference cycle through a
    run kept it, images included, until the collector came by: the relay's peak memory doubled under load."""
    from imagegate.gateway import Run

    gc.collect()
    gc.disable()
    try:
        yield
        deadline = time.monotonic() + 5
        while [o for o in gc.get_objects() if isinstance(o, Run)]:  # the last run's task ends just after its answer
            assert time.monotonic() < deadline, "runs are kept alive by a reference cycle"
            time.sleep(0.05)
    finally:
        gc.enable()
