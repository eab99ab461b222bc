"""Ledger benchmark: one request's hold and settlement on SQLite, in-process, one at a time.

What the relay benchmark's billing costs, without the HTTP around it: wall time of a hold (placed before the
upstream call) and of a settlement (before the answer ends), medians over --pairs, and the process's CPU time per
pair (the writer thread's included). Run by hand, never in the test suite:  python bench/ledger/run.py [--pairs 500]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from imagegate.billing.store import BillingStore, UsageMeta
from imagegate.catalog.tokens import Usage
from imagegate.db import Database


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(pairs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite+aiosqlite:///{Path(tmp) / 'ledger.db'}")
        store = BillingStore(db)
        try:
            await db.upgrade()
            await store.register()
            account = await store.create_account("bench", balance_micro=10**12)

            async def pair() -> tuple[float, float]:
                meta = UsageMeta(uuid.uuid4().hex, "images", "gpt-image-1", "relay", "generate", "1024x1024",
                                 "high", False, 1, "sk-bench", account.id, True, 167_000)
                started = time.perf_counter()
                hold, usage_id, _ = await store.place_hold(meta, key_id=None)
                held = time.perf_counter()
                await store.settle(hold_id=hold, usage_id=usage_id, cost_micro=167_000, delivered=1,
                                   usage=Usage(9, 0, 4160), latency_ms=5, status="ok", error_code=None)
                return held - started, time.perf_counter() - held

            for _ in range(50):  # warm-up: connections, compiled statements
                await pair()
            cpu = _cpu()
            times = [await pair() for _ in range(pairs)]
            cpu = _cpu() - cpu
        finally:
            await db.dispose()
    print(f"hold p50 {statistics.median(h for h, _ in times) * 1e3:.2f} ms, "
          f"settlement p50 {statistics.median(s for _, s in times) * 1e3:.2f} ms, "
          f"CPU {cpu / pairs * 1e3:.2f} ms a pair ({pairs} pairs, SQLite in a temporary directory)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=500)
    asyncio.run(main(parser.parse_args().pairs))
