"""Every price in the seeds and the reference, reproduced by the shipped price book: per-image tables to the cent
(exactly, in micro-USD), token rates by category, per-call prices, and seed 003's credit figures."""

from __future__ import annotations

from fractions import Fraction

import pytest

from imagegate.billing import load_price_book
from imagegate.billing.money import credits, round_micro, usd
from imagegate.billing.pricing import actual, estimate_usage, quote
from imagegate.catalog import load_catalog
from imagegate.catalog.tokens import Usage, text_tokens
from imagegate.validate import RawRequest, validate
from tests.imaging_helpers import png_bytes

CATALOG = load_catalog()
BOOK = load_price_book()
ONE = Fraction(1)
SIZES = ("1024x1024", "1024x1536", "1536x1024")


def request(model: str, prompt: str = "a lighthouse at dawn", operation: str = "generate", images=(), **fields):
    raw = RawRequest(operation, {"model": model, "prompt": prompt, **fields},
                     images=[("image[]", data) for data in images])
    return validate(raw, CATALOG, max_input_pixels=40_000_000, max_image_bytes=50 * 1024 * 1024)


def line(cost, item):
    return next((entry for entry in cost.lines if entry.item == item), None)


# Seed 000 (= reference 7.2 row "GPT Image 1"): USD per image.
SEED_000 = {
    "low": (0.011, 0.016, 0.016),
    "medium": (0.042, 0.063, 0.063),
    "high": (0.167, 0.25, 0.25),
}
REFERENCE_7_2 = {
    "gpt-image-1": SEED_000,
    "gpt-image-1.5": {"low": (0.009, 0.013, 0.013), "medium": (0.034, 0.05, 0.05), "high": (0.133, 0.2, 0.2)},
    "gpt-image-1-mini": {"low": (0.005, 0.006, 0.006), "medium": (0.011, 0.015, 0.015),
                         "high": (0.036, 0.052, 0.052)},
}
GPT_IMAGE_2 = {"low": (0.006, 0.005, 0.005), "medium": (0.053, 0.041, 0.041), "high": (0.211, 0.165, 0.165)}


@pytest.mark.parametrize("model", sorted(REFERENCE_7_2))
@pytest.mark.parametrize("quality", ["low", "medium", "high"])
@pytest.mark.parametrize("column", range(3))
def test_per_image_tables_reproduced_exactly(model, quality, column):
    size = SIZES[column]
    want_micro = round(REFERENCE_7_2[model][quality][column] * 1_000_000)
    req = request(model, size=size, quality=quality)
    cost = quote(BOOK.price(model), req.job, ONE)
    images = line(cost, "images")
    assert round_micro(images.usd) == want_micro  # the table cell, to the micro-dollar
    # ...and the whole request adds the prompt's text tokens at the model's text rate, billed separately.
    text_rate = BOOK.price(model).tokens.text_in
    assert cost.micro == want_micro + round_micro(Fraction(text_rate) * text_tokens(req.job.prompt) / 1_000_000)


@pytest.mark.parametrize("quality", ["low", "medium", "high"])
@pytest.mark.parametrize("column", range(3))
def test_gpt_image_2_token_pricing_reproduces_its_per_image_table(quality, column):
    req = request("gpt-image-2", size=SIZES[column], quality=quality)
    cost = quote(BOOK.price("gpt-image-2"), req.job, ONE)
    assert cost.method == "tokens"
    out = line(cost, "image_out")
    # The published table has three decimals; the token price rounds to it (196 tok x $30/M = $0.00588 -> 0.006).
    assert round(float(out.usd), 3) == GPT_IMAGE_2[quality][column]


def test_seed_000_cells_to_the_cent():
    for quality, row in SEED_000.items():
        for size, dollars in zip(SIZES, row):
            req = request("gpt-image-1", prompt="x", size=size, quality=quality)
            cost = quote(BOOK.price("gpt-image-1"), req.job, ONE)
            assert round(cost.micro / 1e6, 2) == round(dollars, 2)
            assert usd(round_micro(line(cost, "images").usd)) == f"{dollars:.6f}"


@pytest.mark.parametrize("model, per_call", [("gpt-4o-image", 5000), ("gpt-4o-image-vip", 9000)])
def test_per_call_prices(model, per_call):
    for n in (1, 3):
        req = request(model, n=n, size="1024x1536")
        cost = quote(BOOK.price(model), req.job, ONE)
        assert cost.micro == per_call * n
        assert [entry.item for entry in cost.lines] == ["images"]  # no token charges on the reverse interfaces


def test_dall_e_prices_have_no_token_charges():
    assert quote(BOOK.price("dall-e-2"), request("dall-e-2", size="256x256").job, ONE).micro == 16_000
    assert quote(BOOK.price("dall-e-2"), request("dall-e-2", size="1024x1024", n=3).job, ONE).micro == 60_000
    assert quote(BOOK.price("dall-e-3"), request("dall-e-3", size="1792x1024", quality="hd").job, ONE).micro == 120_000


def _as_tokens(model: str):
    """gpt-image-1 priced per token, as seed 003's relay bills it."""
    from dataclasses import replace

    return replace(BOOK.price(model), method="tokens")


def test_seed_000_usage_example_priced_per_token():
    # Usage(input_tokens=150 (text), output_tokens=6240) for a high 1024x1536 image, from seed 000.
    req = request("gpt-image-1", size="1024x1536", quality="high")
    cost = actual(_as_tokens("gpt-image-1"), req.job, ONE, delivered=1, usage=Usage(150, 0, 6240), partials=0)
    assert cost.micro == 150 * 5 + 6240 * 40 == 250_350
    # Seed 003's formula: (text*5 + image_in*10 + image_out*40) * 7.1 * 10000 / 1e6 credits.
    assert credits(cost.micro, BOOK.credits_per_usd) == round((150 * 5 + 6240 * 40) * 7.1 * 10000 / 1e6, 2)


def test_seed_003_credit_figures():
    rate = BOOK.credits_per_usd
    assert rate == 71_000  # 7.1 * 10000 credits per USD
    low = quote(_as_tokens("gpt-image-1"), request("gpt-image-1", size="1024x1024", quality="low").job, ONE)
    medium = quote(_as_tokens("gpt-image-1"), request("gpt-image-1", size="1024x1024", quality="medium").job, ONE)
    # "1024*1024 low uses about 800 credits, medium about 3000" - output tokens 272 and 1056 at $40/M.
    assert credits(round_micro(line(low, "image_out").usd), rate) == 772.48
    assert credits(round_micro(line(medium, "image_out").usd), rate) == 2999.04
    assert 750 <= credits(low.micro, rate) <= 850
    assert 2900 <= credits(medium.micro, rate) <= 3100
    # The per-image price comes out the same way: $0.011 -> 781 credits, $0.042 -> 2982 credits.
    assert credits(11_000, rate) == 781.0 and credits(42_000, rate) == 2982.0


def test_image_tokens_are_not_priced_as_text():
    req = request("gpt-image-2", operation="edit", images=[png_bytes(1024, 1024)], size="1024x1024", quality="low")
    cost = quote(BOOK.price("gpt-image-2"), req.job, ONE)
    image_in = line(cost, "image_in")
    assert image_in.quantity == estimate_usage(req.job, 1).image_tokens > 4000
    assert image_in.unit == Fraction(8, 1_000_000)  # $8/M image input, not $5/M text
    assert line(cost, "image_out").unit == Fraction(30, 1_000_000)
    assert line(cost, "text_in").unit == Fraction(5, 1_000_000)
    # gpt-image-1 edits: the table price plus the input image at $10/M (194 tokens for a 1024^2 input).
    edit1 = request("gpt-image-1", operation="edit", images=[png_bytes(1024, 1024)], size="1024x1024", quality="low")
    cost1 = quote(BOOK.price("gpt-image-1"), edit1.job, ONE)
    assert line(cost1, "image_in").quantity == 194 and line(cost1, "image_in").unit == Fraction(10, 1_000_000)


def test_every_gpt_image_2_family_model_bills_output_tokens():
    for model in ("gpt-image-2", "gpt-image-2-2026-04-21", "gpt-image-2.5-sunburst", "gpt-image-2.5-flare",
                  "gpt-image-2.5-sunburst-2026-09-08", "gpt-image-2.5-flare-2026-09-08", "gpt-image-2.6-sunburst",
                  "gpt-image-2.6-flare"):
        cost = quote(BOOK.price(model), request(model, size="2048x1152", quality="high").job, ONE)
        assert line(cost, "image_out").quantity > 0 and cost.micro > 0, model


def test_partial_images_cost_100_output_tokens_each():
    req = request("gpt-image-1", size="1024x1024", quality="low", stream=True, partial_images=2, n=2)
    cost = quote(BOOK.price("gpt-image-1"), req.job, ONE)
    partial = line(cost, "partial_images")
    assert partial.quantity == 2 * 2 * 100 and partial.unit == Fraction(40, 1_000_000)
    # Without stream there are no partial images, so none are quoted.
    assert line(quote(BOOK.price("gpt-image-1"), request("gpt-image-1", partial_images=2).job, ONE),
                "partial_images") is None


def test_actual_cost_counts_only_delivered_images():
    req = request("gpt-image-1", size="1024x1024", quality="medium", n=4)
    price = BOOK.price("gpt-image-1")
    full = quote(price, req.job, ONE)
    three = actual(price, req.job, ONE, delivered=3, usage=estimate_usage(req.job, 4), partials=0)
    assert line(three, "images").quantity == 3
    assert three.micro == full.micro - 42_000
    # Token-priced: output tokens beyond what 3 images can account for are not billed.
    req2 = request("gpt-image-2", size="1024x1024", quality="low", n=4)
    cost2 = actual(BOOK.price("gpt-image-2"), req2.job, ONE, delivered=3, usage=estimate_usage(req2.job, 4), partials=0)
    assert line(cost2, "image_out").quantity == 3 * 196
    assert actual(price, req.job, ONE, delivered=0, usage=Usage(), partials=0).micro == 0


def test_usage_an_engine_did_not_report_is_taken_from_the_tables():
    req = request("gpt-image-2", size="1024x1024", quality="low")
    cost = actual(BOOK.price("gpt-image-2"), req.job, ONE, delivered=1, usage=Usage(), partials=0)
    assert cost.micro == quote(BOOK.price("gpt-image-2"), req.job, ONE).micro > 0  # never $0 for lack of usage


def test_group_multiplier_rounds_half_up_once():
    req = request("gpt-image-1", prompt="x", size="1024x1024", quality="low")
    base = quote(BOOK.price("gpt-image-1"), req.job, ONE).micro
    assert base == 11_005
    assert quote(BOOK.price("gpt-image-1"), req.job, Fraction(1, 2)).micro == 5503  # 5502.5 -> 5503
    assert quote(BOOK.price("gpt-image-1"), req.job, Fraction(8, 10)).micro == 8804


def test_quote_equals_actual_when_everything_is_delivered():
    for model, fields in [("gpt-image-1", {"quality": "high", "n": 3}), ("gpt-image-2", {"size": "3840x2160"}),
                          ("gpt-4o-image", {"n": 2}), ("gpt-image-1.5", {"stream": True, "partial_images": 3})]:
        req = request(model, **fields)
        price = BOOK.price(model)
        q = quote(price, req.job, ONE)
        a = actual(price, req.job, ONE, delivered=req.job.n, usage=estimate_usage(req.job, req.job.n),
                   partials=req.job.n * req.job.partial_images)
        assert q.micro == a.micro, model
