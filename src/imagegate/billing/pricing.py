"""What a job costs: the most it can cost (the quote, held before any engine runs) and what it did cost (from
the usage the engine reported and the images actually delivered). Pure functions over the price book.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from imagegate.billing.money import round_micro, usd
from imagegate.billing.prices import ModelPrice
from imagegate.catalog import Size
from imagegate.catalog.tokens import PARTIAL_IMAGE_TOKENS, Usage, input_image_tokens, output_tokens, text_tokens
from imagegate.engines.base import Job


@dataclass(frozen=True)
class Line:
    """One priced item: ``quantity`` images or tokens at ``unit`` USD each."""

    item: str  # images | text_in | image_in | image_out | partial_images
    quantity: int
    unit: Fraction

    @property
    def usd(self) -> Fraction:
        return self.unit * self.quantity

    def to_dict(self) -> dict[str, Any]:
        per = "per_image" if self.item == "images" else "per_million_tokens"
        unit = self.unit if self.item == "images" else self.unit * 1_000_000
        return {"item": self.item, "quantity": self.quantity, f"usd_{per}": _plain(unit),
                "usd": usd(round_micro(self.usd))}


@dataclass(frozen=True)
class Cost:
    micro: int
    method: str
    lines: tuple[Line, ...]
    multiplier: Fraction
    usage: Usage  # the tokens priced (estimated for quotes)


def estimate_usage(job: Job, images: int) -> Usage:
    """The tokens a job of ``images`` images bills by the published tables (what a quote assumes)."""
    table = job.model.token_table
    if table == "none":
        return Usage(text_tokens=text_tokens(job.prompt), estimated=True)
    image_in = sum(input_image_tokens(table, Size(*img.size), job.input_fidelity) for img in job.images)
    per_image = output_tokens(table, job.quality, job.size) + PARTIAL_IMAGE_TOKENS * job.partial_images
    return Usage(text_tokens(job.prompt), image_in, per_image * images, estimated=True)


def quote(price: ModelPrice, job: Job, multiplier: Fraction) -> Cost:
    """The most ``job`` can cost: all n images delivered, every partial image streamed."""
    return _cost(price, job, multiplier, job.n, estimate_usage(job, job.n), job.n * job.partial_images)


def actual(price: ModelPrice, job: Job, multiplier: Fraction, *, delivered: int, usage: Usage, partials: int) -> Cost:
    """The cost of what was delivered. Usage the engine did not report is taken from the tables; output tokens
    beyond what the delivered images can account for are not billed."""
    if usage.total_tokens == 0:
        usage = estimate_usage(job, delivered)
    if job.model.token_table != "none":
        per_image = output_tokens(job.model.token_table, job.quality, job.size)
        per_image += PARTIAL_IMAGE_TOKENS * job.partial_images
        usage = Usage(usage.text_tokens, usage.image_tokens, min(usage.output_tokens, per_image * delivered),
                      usage.estimated)
    return _cost(price, job, multiplier, delivered, usage, min(partials, delivered * job.partial_images))


def _cost(price: ModelPrice, job: Job, multiplier: Fraction, images: int, usage: Usage, partials: int) -> Cost:
    lines: list[Line] = []
    if images == 0:
        return Cost(0, price.method, (), multiplier, Usage())
    if price.method == "per_call":
        assert price.per_call is not None
        lines.append(Line("images", images, Fraction(price.per_call)))
    elif price.method == "per_image":
        cell = price.image_price(job.quality, job.size)
        if cell is None:  # the start-up coverage check makes this unreachable for catalog sizes
            raise LookupError(f"no per-image price for {job.model.id} {job.quality} {job.size}")
        lines.append(Line("images", images, Fraction(cell)))
        if price.tokens is not None:
            lines.append(Line("text_in", usage.text_tokens, price.tokens.per_token("text_in")))
            lines.append(Line("image_in", usage.image_tokens, price.tokens.per_token("image_in")))
            lines.append(Line("partial_images", partials * PARTIAL_IMAGE_TOKENS, price.tokens.per_token("image_out")))
    else:
        assert price.tokens is not None
        lines.append(Line("text_in", usage.text_tokens, price.tokens.per_token("text_in")))
        lines.append(Line("image_in", usage.image_tokens, price.tokens.per_token("image_in")))
        lines.append(Line("image_out", usage.output_tokens, price.tokens.per_token("image_out")))
    lines = [line for line in lines if line.quantity]
    total = sum((line.usd for line in lines), Fraction(0))
    return Cost(round_micro(total * multiplier), price.method, tuple(lines), multiplier, usage)


def _plain(value: Fraction) -> str:
    """An exact decimal for display ('0.011', '5'), or a fraction if it has no finite decimal form."""
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.12f}".rstrip("0").rstrip(".")
    return text if Fraction(text) == value else str(value)
