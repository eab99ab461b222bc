"""The price book: ``prices.toml`` (shipped) merged with the operator's file, checked, as immutable objects.

A malformed file stops the server with one line naming the bad entry; so does a catalog model that has no price
while metering is on (never $0 by omission).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from imagegate.billing.money import MoneyError, to_decimal
from imagegate.catalog.sizes import Size, parse_size
from imagegate.config import ConfigError
from imagegate.tomlfile import read_toml

if TYPE_CHECKING:
    from imagegate.catalog import Catalog

METHODS = ("per_image", "tokens", "per_call")
POLICIES = ("refund", "charge")
TOKEN_KINDS = ("text_in", "image_in", "image_out")
_MODEL_KEYS = {"method", "tokens", "per_image", "per_call", "same_as"}
_TOP_KEYS = {"display", "groups", "failure_policy", "models"}


class PriceBookError(ConfigError):
    """The price file cannot be used; the message names the entry."""


@dataclass(frozen=True)
class TokenRates:
    """USD per 1M tokens, as written."""

    text_in: Decimal
    image_in: Decimal
    image_out: Decimal

    def per_token(self, kind: str) -> Fraction:
        return Fraction(getattr(self, kind)) / 1_000_000


@dataclass(frozen=True)
class ModelPrice:
    model: str
    method: str
    tokens: TokenRates | None = None
    per_image: Mapping[str, Mapping[Size, Decimal]] = field(default_factory=dict)
    per_call: Decimal | None = None
    entry: str = ""  # the [models."..."] entry it came from (differs with same_as)

    def image_price(self, quality: str, size: Size) -> Decimal | None:
        return self.per_image.get(quality, {}).get(size)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "entry": self.entry}
        if self.tokens is not None:
            out["tokens_usd_per_million"] = {k: str(getattr(self.tokens, k)) for k in TOKEN_KINDS}
        if self.per_image:
            out["per_image_usd"] = {q: {str(s): str(p) for s, p in t.items()} for q, t in self.per_image.items()}
        if self.per_call is not None:
            out["per_call_usd"] = str(self.per_call)
        return out


@dataclass(frozen=True)
class PriceBook:
    models: Mapping[str, ModelPrice]
    groups: Mapping[str, Decimal]
    failure_policy: Mapping[str, str]
    display_unit: str = "usd"
    credits_per_usd: Decimal = Decimal(71000)
    sources: tuple[str, ...] = ()

    def price(self, model_id: str) -> ModelPrice | None:
        return self.models.get(model_id)

    def multiplier(self, group: str) -> Fraction | None:
        value = self.groups.get(group)
        return None if value is None else Fraction(value)

    def policy(self, engine: str) -> str:
        return self.failure_policy.get(engine, self.failure_policy.get("default", "refund"))

    def coverage_problems(self, catalog: "Catalog") -> list[str]:
        """What a metered server cannot serve: catalog models without a usable price."""
        problems = []
        for model in catalog:
            price = self.models.get(model.id)
            where = f'models."{model.id}"'
            if price is None:
                problems.append(f"{where}: no price for this model (models are never served free; add an entry)")
                continue
            qualities = [q for q in model.qualities if q != "auto"] or [model.auto_quality]
            if price.method == "per_image":
                if model.sizes is None:
                    problems.append(f"{where}: per_image needs fixed sizes, but this model takes free-form sizes; "
                                    "use method = \"tokens\"")
                    continue
                for quality in qualities:
                    for size in model.sizes:
                        if price.image_price(quality, size) is None:
                            problems.append(f"{where}.per_image.{quality}: no price for size '{size}'")
            elif price.method == "tokens" and model.token_table == "none":
                problems.append(f"{where}: method \"tokens\" on a model without a token table would bill nothing")
        return problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "display": {"unit": self.display_unit, "credits_per_usd": str(self.credits_per_usd)},
            "groups": {k: str(v) for k, v in self.groups.items()},
            "failure_policy": dict(self.failure_policy),
            "models": {k: v.to_dict() for k, v in self.models.items()},
            "sources": list(self.sources),
        }


def _read(path: Path | None) -> tuple[dict[str, Any], str]:
    if path is None:
        text = resources.files("imagegate.billing").joinpath("prices.toml").read_text("utf-8")
        return tomllib.loads(text), "shipped prices.toml"
    return read_toml(path, "price file", PriceBookError), str(path)


def price_file_stamp(path: Path | None) -> tuple[int, int] | None:
    """What says the price file changed (modification time and size); None: no file, or none configured."""
    if path is None:
        return None
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def load_price_book(path: Path | None = None) -> PriceBook:
    """The shipped prices, overridden by ``path`` if given."""
    shipped, shipped_name = _read(None)
    book = _merge({}, shipped, shipped_name)
    sources = [shipped_name]
    if path is not None:
        override, name = _read(Path(path))
        book = _merge(book, override, name)
        sources.append(name)
    return _build(book, " + ".join(sources), tuple(sources))


def _merge(base: dict[str, Any], over: dict[str, Any], name: str) -> dict[str, Any]:
    unknown = set(over) - _TOP_KEYS
    if unknown:
        raise PriceBookError(f"prices ({name}): unknown section {sorted(unknown)[0]!r}; "
                             f"expected {', '.join(sorted(_TOP_KEYS))}")
    merged = {key: dict(base.get(key, {})) for key in _TOP_KEYS}
    for key in _TOP_KEYS:
        section = over.get(key, {})
        if not isinstance(section, dict):
            raise PriceBookError(f"prices ({name}): [{key}] must be a table")
        for item, value in section.items():
            if key == "models" and isinstance(value, dict):
                value = {**value, "_source": name}
            merged[key][item] = value
    return merged


def _build(raw: dict[str, Any], name: str, sources: tuple[str, ...]) -> PriceBook:
    def fail(where: str, what: str) -> PriceBookError:
        return PriceBookError(f"prices ({name}): {where}: {what}")

    display = raw["display"]
    unit = display.get("unit", "usd")
    if unit not in ("usd", "credits"):
        raise fail("display.unit", f"expected 'usd' or 'credits', got {unit!r}")
    for key in display:
        if key not in ("unit", "credits_per_usd"):
            raise fail(f"display.{key}", "unknown key")
    credits_per_usd = _money(display.get("credits_per_usd", 71000), "display.credits_per_usd", fail)
    if credits_per_usd == 0:
        raise fail("display.credits_per_usd", "must be more than 0")

    groups = {}
    for group, value in raw["groups"].items():
        multiplier = _money(value, f"groups.{group}", fail)
        if multiplier == 0:
            raise fail(f"groups.{group}", "a multiplier must be more than 0")
        groups[group] = multiplier
    groups.setdefault("default", Decimal(1))

    policies = {}
    for engine, value in raw["failure_policy"].items():
        if value not in POLICIES:
            raise fail(f"failure_policy.{engine}", f"expected 'refund' or 'charge', got {value!r}")
        policies[engine] = value

    entries = raw["models"]
    models: dict[str, ModelPrice] = {}
    for model_id in entries:
        target, seen = model_id, [model_id]
        while isinstance(entries.get(target), dict) and "same_as" in entries[target]:
            entry = entries[target]
            if set(entry) - {"same_as", "_source"}:
                raise fail(f'models."{target}"', "same_as takes no other keys")
            target = entry["same_as"]
            if not isinstance(target, str) or target not in entries:
                raise fail(f'models."{seen[-1]}".same_as', f"no model entry {target!r}")
            if target in seen:
                raise fail(f'models."{model_id}".same_as', "goes round in a circle")
            seen.append(target)
        entry_name = entry_source = target
        entry = entries[target]
        if not isinstance(entry, dict):
            raise fail(f'models."{target}"', "must be a table")
        entry_source = entry.get("_source", name)
        models[model_id] = _model_price(model_id, entry_name, entry, lambda w, m: PriceBookError(
            f"prices ({entry_source}): {w}: {m}"))
    return PriceBook(models, groups, policies, unit, credits_per_usd, sources)


def _money(value: Any, where: str, fail) -> Decimal:
    try:
        return to_decimal(value, "x")
    except MoneyError as exc:
        raise fail(where, str(exc).split(": ", 1)[1]) from None


def _model_price(model_id: str, entry_name: str, entry: dict[str, Any], fail) -> ModelPrice:
    where = f'models."{entry_name}"'
    unknown = set(entry) - _MODEL_KEYS - {"_source"}
    if unknown:
        raise fail(where, f"unknown key {sorted(unknown)[0]!r}; expected {', '.join(sorted(_MODEL_KEYS))}")
    method = entry.get("method")
    if method not in METHODS:
        raise fail(f"{where}.method", f"expected one of {', '.join(METHODS)}, got {method!r}")
    tokens = None
    if "tokens" in entry:
        table = entry["tokens"]
        if not isinstance(table, dict):
            raise fail(f"{where}.tokens", "must be a table of USD per 1M tokens")
        for kind in table:
            if kind not in TOKEN_KINDS:
                raise fail(f"{where}.tokens.{kind}", f"unknown rate; expected {', '.join(TOKEN_KINDS)}")
        for kind in TOKEN_KINDS:
            if kind not in table:
                raise fail(f"{where}.tokens", f"missing rate {kind!r}")
        tokens = TokenRates(*(_money(table[k], f"{where}.tokens.{k}", fail) for k in TOKEN_KINDS))
    per_image: dict[str, dict[Size, Decimal]] = {}
    if "per_image" in entry:
        if not isinstance(entry["per_image"], dict):
            raise fail(f"{where}.per_image", "must be a table of qualities")
        for quality, cells in entry["per_image"].items():
            if not isinstance(cells, dict):
                raise fail(f"{where}.per_image.{quality}", 'must be a table of "WxH" = USD')
            row: dict[Size, Decimal] = {}
            for size_text, price in cells.items():
                size = parse_size(size_text)
                if size is None:
                    raise fail(f'{where}.per_image.{quality}."{size_text}"', "not a size; expected \"WxH\"")
                row[size] = _money(price, f'{where}.per_image.{quality}."{size_text}"', fail)
            per_image[quality] = row
    per_call = None
    if "per_call" in entry:
        per_call = _money(entry["per_call"], f"{where}.per_call", fail)
    if method == "per_image" and not per_image:
        raise fail(where, "method per_image needs a per_image table")
    if method == "tokens" and tokens is None:
        raise fail(where, "method tokens needs tokens = { text_in, image_in, image_out }")
    if method == "per_call" and per_call is None:
        raise fail(where, "method per_call needs per_call = USD")
    return ModelPrice(model_id, method, tokens, per_image, per_call, entry_name)
