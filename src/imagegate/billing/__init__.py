"""Money: the price book (data), pricing (quote and actual cost), the ledger store, and the service the gateway
calls to hold before a request runs and settle after it. Integer micro-USD throughout."""

from __future__ import annotations

from imagegate.billing.prices import PriceBook, PriceBookError, load_price_book
from imagegate.billing.service import Billing, BillingRuntime, Idempotency, Settlement, Ticket

__all__ = [
    "Billing", "BillingRuntime", "Idempotency", "PriceBook", "PriceBookError", "Settlement", "Ticket",
    "load_price_book",
]
