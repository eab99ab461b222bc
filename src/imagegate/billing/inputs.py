"""Checks on what operators type (admin API and CLI alike): account names, expiries, amounts."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Any

from imagegate.billing.money import MoneyError, parse_amount
from imagegate.errors import InvalidRequest, InvalidType

_YEAR_10000 = 253402300800  # unix seconds
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def check_name(name: Any, param: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidRequest(
            f"Invalid '{param}': {name!r}; use 1-64 letters, digits and . _ @ - (starting with a letter or digit).",
            param=param,
        )
    return name


def money(value: Any, param: str, *, allow_zero: bool = False) -> int:
    """USD in, micro-USD out; negative, absurd (over 1,000,000 USD at once) or sub-micro amounts are refused."""
    try:
        return parse_amount(value, param, allow_zero=allow_zero)
    except MoneyError as exc:
        raise InvalidRequest(f"Invalid '{param}': {str(exc).split(': ', 1)[1]}.", param=param) from None


def parse_expiry(value: Any, param: str = "expires_at") -> float | None:
    """An expiry in the future: unix seconds, an ISO 8601 time with a zone, or '<N>d' (N days from now); None:
    never. A moment already past is refused: a key made expired is a mistake (a date's year, its zone), not a wish."""
    at = _expiry(value, param)
    if at is not None and at <= time.time():
        raise InvalidRequest(
            f"Invalid '{param}': {datetime.fromtimestamp(at, timezone.utc).isoformat(timespec='seconds')} is not in "
            "the future. Give a later time, or '<N>d' with N of at least 1; leave it out for a key that never "
            "expires.", param=param)
    return at


def _expiry(value: Any, param: str) -> float | None:
    if value is None:
        return None
    what = f"Invalid '{param}': expected unix seconds, an ISO 8601 time with a zone, or '<N>d' (days from now)."
    if isinstance(value, bool):
        raise InvalidType(what, param=param)
    if isinstance(value, (int, float)):
        # NaN would make a key that never expires (no comparison with it is true), and is refused here with
        # infinities and numbers past the year 9999 (too large for a date, or for a float).
        if not 0 <= value < _YEAR_10000:
            raise InvalidRequest(what, param=param)
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        match = re.fullmatch(r"(\d{1,5})d", text)
        if match:
            return time.time() + int(match.group(1)) * 86400
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(what, param=param) from None
        if moment.tzinfo is None:
            raise InvalidRequest(what, param=param)
        return moment.timestamp()
    raise InvalidType(what, param=param)
