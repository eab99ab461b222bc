"""The price book as data: the shipped one covers the catalog; an operator's file overrides it; a malformed file
or a model without a price is refused with one line naming the entry."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from imagegate.billing import PriceBookError, load_price_book
from imagegate.billing.money import MoneyError, parse_amount, round_micro, usd
from imagegate.catalog import Catalog, load_catalog
from imagegate.config import Settings

EXE = Path(sys.executable).parent / "imagegate"


def test_shipped_book_prices_every_catalog_model():
    book = load_price_book()
    catalog = load_catalog()
    assert book.coverage_problems(catalog) == []
    assert {m.id for m in catalog} <= set(book.models)
    assert book.price("chatgpt-image-latest").entry == "gpt-image-1.5"
    assert book.price("gpt-image-2-2026-04-21").method == "tokens"
    assert book.policy("sandbox") == "refund"


def test_operator_file_overrides_entries_and_groups(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(
        '[display]\nunit = "credits"\n'
        '[groups]\nvip = 0.8\n'
        '[failure_policy]\nsandbox = "charge"\n'
        '[models."gpt-image-1"]\nmethod = "tokens"\ntokens = { text_in = 5, image_in = 10, image_out = 40 }\n'
    )
    book = load_price_book(path)
    assert book.display_unit == "credits" and book.credits_per_usd == 71000
    assert book.groups == {"default": 1, "vip": Decimal("0.8")}
    assert book.policy("sandbox") == "charge" and book.policy("relay") == "refund"
    assert book.price("gpt-image-1").method == "tokens" and book.price("gpt-image-1").per_image == {}
    assert book.price("gpt-image-1.5").method == "per_image"  # untouched entries stay


@pytest.mark.parametrize(
    "text, names",
    [
        ('[models."gpt-image-1"]\nmethod = "per_image"\nper_image.low = { "1024x1024" = -0.011 }\n',
         'models."gpt-image-1".per_image.low."1024x1024": must not be negative'),
        ('[models."gpt-image-1"]\nmethod = "per_image"\nper_image.low = { "1024x1024" = "cheap" }\n',
         'models."gpt-image-1".per_image.low."1024x1024": expected an amount in USD'),
        ('[models."gpt-image-1"]\nmethod = "per_image"\nper_image.low = { "big" = 0.01 }\n',
         'models."gpt-image-1".per_image.low."big": not a size'),
        ('[models."gpt-image-1"]\nmethod = "per_pixel"\n', 'models."gpt-image-1".method: expected one of'),
        ('[models."gpt-image-1"]\nmethod = "tokens"\ntokens = { text_in = 5, image_out = 40 }\n',
         "missing rate 'image_in'"),
        ('[models."gpt-image-1"]\nmethod = "tokens"\ntokens = { text_in = 5, image_in = 1, image_out = 1, x = 1 }\n',
         'models."gpt-image-1".tokens.x: unknown rate'),
        ('[models."gpt-image-1"]\nmethod = "per_call"\n', "method per_call needs per_call"),
        ('[models."gpt-image-1"]\nmethod = "per_call"\nper_call = 0.01\ncolour = "red"\n', "unknown key 'colour'"),
        ('[models."x"]\nsame_as = "nope"\n', 'models."x".same_as: no model entry'),
        ('[models."a"]\nsame_as = "b"\n[models."b"]\nsame_as = "a"\n', "goes round in a circle"),
        ('[failure_policy]\nsandbox = "maybe"\n', "failure_policy.sandbox: expected 'refund' or 'charge'"),
        ('[groups]\nvip = 0\n', "groups.vip: a multiplier must be more than 0"),
        ('[display]\nunit = "euro"\n', "display.unit"),
        ('[display]\ncredits_per_usd = "nan"\n', "display.credits_per_usd"),
        ('[discounts]\nx = 1\n', "unknown section 'discounts'"),
    ],
)
def test_malformed_price_file_names_the_bad_entry(tmp_path, text, names):
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(PriceBookError) as exc:
        load_price_book(path)
    message = str(exc.value)
    assert names in message and "\n" not in message
    assert str(path) in message


def test_coverage_problems_name_the_gap(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text('[models."gpt-image-1"]\nmethod = "per_image"\nper_image.low = { "1024x1024" = 0.011 }\n'
                    '[models."gpt-image-2"]\nmethod = "per_image"\nper_image.low = { "1024x1024" = 0.006 }\n'
                    '[models."dall-e-2"]\nmethod = "tokens"\ntokens = { text_in = 1, image_in = 1, image_out = 1 }\n')
    problems = load_price_book(path).coverage_problems(load_catalog())
    assert 'models."gpt-image-1".per_image.low: no price for size \'1024x1536\'' in problems
    assert 'models."gpt-image-1".per_image.medium: no price for size \'1024x1024\'' in problems
    assert any(p.startswith('models."gpt-image-2": per_image needs fixed sizes') for p in problems)
    assert any(p.startswith('models."dall-e-2": method "tokens" on a model without a token table') for p in problems)


def test_a_model_without_a_price_stops_a_metered_server(tmp_path):
    from dataclasses import replace

    from imagegate.app import create_app

    catalog = load_catalog()
    base = catalog.get("gpt-image-1")
    extended = Catalog({**catalog.models, "flux-9": replace(base, id="flux-9")})
    settings = Settings(data_dir=tmp_path, api_keys=("k",), metering="on", guard_policy="off")
    with pytest.raises(PriceBookError) as exc:
        create_app(settings, catalog=extended)
    assert str(exc.value).startswith('prices: models."flux-9": no price for this model')
    # Unmetered, it serves (nothing is billed), but its quote is refused rather than $0.
    create_app(Settings(data_dir=tmp_path / "u", api_keys=("k",), guard_policy="off"), catalog=extended)


def test_serve_refuses_a_malformed_price_file_with_one_line(tmp_path):
    bad = tmp_path / "prices.toml"
    bad.write_text('[models."gpt-4o-image"]\nmethod = "per_call"\nper_call = -1\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "IMAGEGATE_"))}
    env.update(IMAGEGATE_PRICE_FILE=str(bad), IMAGEGATE_GUARD_POLICY="off")
    done = subprocess.run([str(EXE), "serve", "--port", "0", "--data-dir", str(tmp_path / "d")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"imagegate: prices ({bad}): models.\"gpt-4o-image\".per_call: must not be negative, got -1"
    ]


@pytest.mark.parametrize(
    "value, micro",
    [("1", 1_000_000), (0.25, 250_000), ("0.000001", 1), (12, 12_000_000), ("1000000", 1_000_000_000_000)],
)
def test_amounts_parse_exactly(value, micro):
    assert parse_amount(value, "amount") == micro


@pytest.mark.parametrize(
    "value, why",
    [(-1, "negative"), ("-0.5", "negative"), (0, "more than 0"), ("1000000.01", "allowed at once"),
     ("0.0000001", "6 decimal places"), (float("nan"), "finite"), (float("inf"), "finite"), ("Infinity", "finite"),
     (True, "expected an amount"), ("ten", "expected an amount"), (None, "expected an amount"), ([1], "expected")],
)
def test_bad_amounts_are_refused(value, why):
    with pytest.raises(MoneyError, match=why):
        parse_amount(value, "amount")


def test_rounding_and_display():
    from fractions import Fraction

    assert round_micro(Fraction(5, 10_000_000)) == 1  # half a micro-dollar rounds up
    assert round_micro(Fraction(4, 10_000_000)) == 0
    assert usd(11_050) == "0.011050" and usd(1_500_000) == "1.500000" and usd(0) == "0.000000"
