"""Stated ages under 18 ("a 15-year-old", "de quince años", "十五岁", "14歳").

A number is not a word list entry, so ages are found with a few patterns instead.  They run on the folded text
(lower case, accents stripped, 歳/歲 folded to 岁), so "AÑOS" arrives here as "anos".
"""

from __future__ import annotations

import re

__all__ = ["find_minor_ages", "ADULT_AGE"]

ADULT_AGE = 18

_EN_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17,
}
_ES_WORDS = {
    "un": 1, "uno": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6, "siete": 7, "ocho": 8, "nueve": 9,
    "diez": 10, "once": 11, "doce": 12, "trece": 13, "catorce": 14, "quince": 15, "dieciseis": 16, "diecisiete": 17,
}
_CN_DIGITS = {"一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}

_EN_NUM = r"\d{1,2}|" + "|".join(sorted(_EN_WORDS, key=len, reverse=True))
_ES_NUM = r"\d{1,2}|" + "|".join(sorted(_ES_WORDS, key=len, reverse=True))

# (cheap substring that must be present, pattern): the substring check skips the regex scan for most prompts.
_PATTERNS = (
    # "15yo", "15 y/o"
    ("y", re.compile(r"(?<![\w.,])(\d{1,2})\s*(?:yo|y/o|y\.o\.)(?![a-z])")),
    # "de 15 años", "tiene quince años" (the preposition/verb keeps "hace 10 años" = "10 years ago" out)
    ("anos", re.compile(rf"\b(?:de|tiene|tienen|tenia|con|edad de)\s+({_ES_NUM})\s+anos\b")),
    # "15岁", "十五岁", "14歳" (folded to 岁), "7才"
    ("岁", re.compile(r"(?<![\d一二两三四五六七八九十])(\d{1,2}|[一二两三四五六七八九十]{1,3})\s*岁")),
    ("才", re.compile(r"(?<![\d一二两三四五六七八九十])(\d{1,2}|[一二两三四五六七八九十]{1,3})\s*才")),
)
_HAS_DIGIT_Y = re.compile(r"\d\s*y")
# "15 years old", "15-year-old", "fifteen year old", "15 yrs old": find the rare "year(s) old" first, then look
# back for the number (a pattern that starts with the number alternatives would be tried at every position).
_YEARS_OLD = re.compile(r"\b(?:years?|yrs?)[\s-]*old\b")
_NUMBER_BEFORE = re.compile(rf"(?<![\w.,])({_EN_NUM})[\s-]*$")


def _cn_number(text: str) -> int | None:
    if "十" not in text:
        return _CN_DIGITS.get(text) if len(text) == 1 else None
    tens, _, ones = text.partition("十")
    if len(tens) > 1 or len(ones) > 1:
        return None
    value = (_CN_DIGITS.get(tens, 0) if tens else 1) * 10
    return value + (_CN_DIGITS.get(ones, 0) if ones else 0)


def _value(token: str) -> int | None:
    if token.isdigit():
        return int(token)
    if token in _EN_WORDS:
        return _EN_WORDS[token]
    if token in _ES_WORDS:
        return _ES_WORDS[token]
    return _cn_number(token)


def find_minor_ages(folded_text: str) -> list[tuple[int, int]]:
    """Spans (in the folded text) of stated ages below 18."""
    spans = []
    if "old" in folded_text:
        for m in _YEARS_OLD.finditer(folded_text):
            head = max(0, m.start() - 24)
            number = _NUMBER_BEFORE.search(folded_text, head, m.start())
            value = _value(number.group(1)) if number else None
            if value is not None and value < ADULT_AGE:
                spans.append((number.start(), m.end()))  # type: ignore[union-attr]
    for needle, pattern in _PATTERNS:
        if needle not in folded_text or (needle == "y" and _HAS_DIGIT_Y.search(folded_text) is None):
            continue
        for m in pattern.finditer(folded_text):
            value = _value(m.group(1))
            if value is not None and value < ADULT_AGE:
                spans.append((m.start(), m.end()))
    return spans
