import pytest

from imagegate.catalog import Size, load_catalog, parse_size
from imagegate.catalog.sizes import FreeSizeRule, ratio_from_prompt
from imagegate.catalog.tokens import input_image_tokens, output_tokens

GPT_IMAGE_1_TABLE = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
GPT_IMAGE_2_TABLE = {
    "1024x1024": (196, 1756, 7024),
    "1536x1024": (158, 1372, 5488),
    "1024x1536": (158, 1372, 5488),
    "2048x2048": (397, 3568, 14272),
    "2048x1152": (157, 1413, 5650),
    "3840x2160": (371, 3336, 13342),
}


@pytest.mark.parametrize("quality", ["low", "medium", "high"])
@pytest.mark.parametrize("size", ["1024x1024", "1024x1536", "1536x1024"])
def test_gpt_image_1_table(quality, size):
    assert output_tokens("gpt-image-1", quality, parse_size(size)) == GPT_IMAGE_1_TABLE[quality][size]


@pytest.mark.parametrize("size", list(GPT_IMAGE_2_TABLE))
def test_gpt_image_2_table(size):
    got = tuple(output_tokens("gpt-image-2", q, parse_size(size)) for q in ("low", "medium", "high"))
    assert got == GPT_IMAGE_2_TABLE[size]


def test_gpt_image_2_5_ladder():
    got = [output_tokens("gpt-image-2.5", q, Size(1024, 1024)) for q in ("low", "medium", "high", "xhigh", "max")]
    assert got == [196, 439, 1756, 3122, 7024]


def test_input_image_tokens():
    assert input_image_tokens("gpt-image-1", Size(1024, 1024)) == 194
    assert input_image_tokens("gpt-image-1", Size(1024, 1024), "high") == 194 + 4096
    assert input_image_tokens("gpt-image-1", Size(1024, 1536), "high") == 65 + 129 * 2 + 6144
    assert input_image_tokens("none", Size(1024, 1024)) == 0


@pytest.mark.parametrize(
    "size, problem",
    [
        ("1000x1000", "multiples of 16"),
        ("4000x1024", "at most 3840"),
        ("3840x1024", "ratio"),
        ("512x512", "between 655,360 and 8,294,400"),
        ("1024x1024", None),
        ("3840x2160", None),
        ("2880x2880", None),
    ],
)
def test_free_rule(size, problem):
    result = FreeSizeRule().violation(parse_size(size))
    assert (result is None) if problem is None else (problem in result)


@pytest.mark.parametrize("ratio", [1.0, 2 / 3, 3 / 2, 16 / 9, 9 / 16, 21 / 9, 3.0, 1 / 3])
def test_fit_always_obeys_the_rule(ratio):
    rule = FreeSizeRule()
    size = rule.fit(ratio, 1024 * 1024)
    assert rule.violation(size) is None
    assert abs(size.ratio / ratio - 1) < 0.05


@pytest.mark.parametrize(
    "prompt, ratio",
    [("poster, 2:3 portrait", 2 / 3), ("16:9 banner", 16 / 9), ("a portrait photo", 2 / 3), ("横版海报", 1.5),
     ("方形头像", 1.0), ("at 10:30 pm", None), ("a cat", None), ("1:1", 1.0), ("a 3：4 poster", 0.75)],
)
def test_ratio_from_prompt(prompt, ratio):
    got = ratio_from_prompt(prompt)
    assert got == (pytest.approx(ratio) if ratio is not None else None)


def test_catalog_loads_every_model_from_data():
    catalog = load_catalog()
    assert len(catalog) == 16
    assert catalog.get("gpt-image-2").free_sizes
    assert catalog.get("dall-e-3").n_max == 1
    assert catalog.get("gpt-image-1-mini").input_fidelity == ("low",)


@pytest.mark.parametrize("target", [655_360, 1024 * 1024, 1536 * 1024, 2048 * 1152, 2560 * 1440, 3840 * 2160])
def test_a_fitted_size_always_keeps_the_rule_it_was_fitted_to(target):
    """At the ratio limit the grid used to round past it (1536x1024's pixels at 3.5:1 gave 2176x720, 3.02:1), and
    an operator's larger default_size sent upstream sizes OpenAI refuses."""
    rule = FreeSizeRule()
    for ratio in [step / 100 for step in range(20, 400)]:
        size = rule.fit(ratio, target)
        assert rule.violation(size) is None, (ratio, size)
