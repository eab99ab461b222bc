"""Money: integer micro-USD inside, USD or credits at the edges."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

MICRO = 1_000_000
# A single top-up or starting balance above this is a typing mistake, not a payment.
MAX_AMOUNT_USD = Decimal(1_000_000)


class MoneyError(ValueError):
    """An amount that cannot be money; the message names the field."""


def to_decimal(value: Any, where: str) -> Decimal:
    """A USD figure from JSON/TOML/CLI text: numbers or numeric strings, finite, not negative."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise MoneyError(f"{where}: expected an amount in USD, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MoneyError(f"{where}: expected a finite amount in USD, got {value!r}")
        value = repr(value)  # 0.011 stays 0.011, not 0.01099999...
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise MoneyError(f"{where}: expected an amount in USD, got {value!r}") from None
    if not amount.is_finite():
        raise MoneyError(f"{where}: expected a finite amount in USD, got {value!r}")
    if amount < 0:
        raise MoneyError(f"{where}: must not be negative, got {value!r}")
    return amount


def parse_amount(value: Any, where: str, *, allow_zero: bool = False) -> int:
    """A top-up, balance or limit in USD to micro-USD: positive (or zero if allowed), at most MAX_AMOUNT_USD,
    and exact to the micro-dollar (no silent rounding of money someone typed)."""
    amount = to_decimal(value, where)
    if amount == 0 and not allow_zero:
        raise MoneyError(f"{where}: must be more than 0, got {value!r}")
    if amount > MAX_AMOUNT_USD:
        raise MoneyError(f"{where}: {value!r} USD is more than the {MAX_AMOUNT_USD:,} USD allowed at once")
    micro = amount * MICRO
    if micro != micro.to_integral_value():
        raise MoneyError(f"{where}: {value!r} has more than 6 decimal places (the ledger counts micro-USD)")
    return int(micro)


def round_micro(usd: Fraction) -> int:
    """USD (exact) to micro-USD, half up: the one place a price is rounded."""
    scaled = usd * MICRO
    return (2 * scaled.numerator + scaled.denominator) // (2 * scaled.denominator)


def usd(micro: int) -> str:
    """'0.011050': six decimals, so the figure is exact."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d}"


def credits(micro: int, credits_per_usd: Decimal) -> float:
    value = (Decimal(micro) * credits_per_usd / MICRO).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return float(value)


def amount_dict(micro: int, credits_per_usd: Decimal) -> dict[str, Any]:
    return {"usd": usd(micro), "micro_usd": micro, "credits": credits(micro, credits_per_usd)}
