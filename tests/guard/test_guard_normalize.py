"""The fold keeps a mapping back to the original text, which is what makes exact spans and rewrites possible."""

import pytest

from imagegate.guard.normalize import fold


@pytest.mark.parametrize(
    "text, folded",
    [
        ("HAYAO Miyazaki", "hayao miyazaki"),
        ("ＭＩＹＡＺＡＫＩ", "miyazaki"),
        ("Almodóvar", "almodovar"),
        ("Almodo\u0301var", "almodovar"),
        ("Straße", "strasse"),
        ("ミヤザキ", "みやざき"),
        ("ﾐﾔｻﾞｷ", "みやざき"),
        ("宮崎駿", "宫崎骏"),
        ("봉준호", "봉준호"),
        ("Илья", "илья"),
    ],
)
def test_fold(text: str, folded: str) -> None:
    assert fold(text).text == folded


@pytest.mark.parametrize("text", ["abc", "Ａｂｃ", "ab\u0301c", "aßc", "ｱﾞｶﾞｷ", "x宮崎駿y", "e\u0301\u0301z"])
def test_every_folded_span_maps_inside_the_original(text: str) -> None:
    result = fold(text)
    assert result.original_length == len(text)
    for i in range(len(result.text)):
        start, end = result.span(i, i + 1)
        assert 0 <= start < end <= len(text)
    start, end = result.span(0, len(result.text))
    assert (start, end) == (0, len(text))
