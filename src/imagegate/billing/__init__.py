"""Money: the price book (data), pricing (quote and actual cost), the ledger store, and the service the gateway
calls to hold before a request runs and settle after it. Integer micro-USD throughout."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagegate.billing.prices import PriceBook, PriceBookError, load_price_book
from imagegate.billing.service import Billing, BillingRuntime, Idempotency, Settlement, Ticket

if TYPE_CHECKING:
    from imagegate.config import Settings

__all__ = [
    "Billing", "BillingRuntime", "Idempotency", "PriceBook", "PriceBookError", "Settlement", "Ticket",
    "load_price_book", "metering_enabled",
]


def metering_enabled(settings: "Settings") -> bool:
    """Accounts and the ledger are on when asked for, or when there is a database to use: a database URL, an
    admin token, or the data dir's own database (``imagegate accounts create`` makes one)."""
    if settings.metering != "auto":
        return settings.metering == "on"
    from imagegate.db import DB_FILE

    return bool(settings.database_url or settings.admin_token) or (settings.data_dir / DB_FILE).exists()
