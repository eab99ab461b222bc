"""Image sizes: parsing, the free-form rule, and ``size=auto`` from an aspect ratio stated in the prompt."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple


class Size(NamedTuple):
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def ratio(self) -> float:
        return self.width / self.height


_SIZE_RE = re.compile(r"(\d{1,5})x(\d{1,5})")  # exactly as OpenAI takes it: '1024X1024' is a 400 there


def parse_size(text: str) -> Size | None:
    match = _SIZE_RE.fullmatch(text)
    if not match:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    if width <= 0 or height <= 0:
        return None
    return Size(width, height)


@dataclass(frozen=True)
class FreeSizeRule:
    multiple_of: int = 16
    max_edge: int = 3840
    max_ratio: float = 3.0
    min_pixels: int = 655_360
    max_pixels: int = 8_294_400

    def violation(self, size: Size) -> str | None:
        """Why ``size`` breaks the rule, phrased as what is allowed; None when it is fine."""
        if size.width % self.multiple_of or size.height % self.multiple_of:
            return f"both edges must be multiples of {self.multiple_of}"
        if max(size) > self.max_edge:
            return f"the longest edge must be at most {self.max_edge} px"
        if max(size) / min(size) > self.max_ratio:
            return f"the long:short edge ratio must be at most {self.max_ratio:g}:1"
        if not self.min_pixels <= size.pixels <= self.max_pixels:
            return (
                f"the total pixel count must be between {self.min_pixels:,} and {self.max_pixels:,} "
                f"(got {size.pixels:,})"
            )
        return None

    def fit(self, ratio: float, target_pixels: int) -> Size:
        """The allowed size closest to ``ratio`` with about ``target_pixels`` pixels."""
        ratio = min(max(ratio, 1 / self.max_ratio), self.max_ratio)
        m = self.multiple_of
        width = max(m, round(math.sqrt(target_pixels * ratio) / m) * m)
        height = max(m, round(width / ratio / m) * m)
        # Nudge up or down in whole steps until the pixel bounds hold; ratio stays as close as the grid allows.
        while width * height < self.min_pixels:
            width, height = width + m, max(m, round((width + m) / ratio / m) * m)
        while width * height > self.max_pixels or max(width, height) > self.max_edge:
            width, height = width - m, max(m, round((width - m) / ratio / m) * m)
        # At the ratio limit the grid can round the short edge down past it (2176x720 is 3.02:1): the long edge
        # gives a step, or, where that leaves too few pixels, the short edge takes one.
        if max(width, height) / min(width, height) > self.max_ratio:
            long_down = Size(width - m, height) if width > height else Size(width, height - m)
            short_up = Size(width, height + m) if width > height else Size(width + m, height)
            return long_down if self.violation(long_down) is None else short_up
        return Size(width, height)


# Ratio words the seeds' users write in prompts, in the languages they write them in.
_RATIO_WORDS: dict[str, float] = {
    "portrait": 2 / 3,
    "vertical": 2 / 3,
    "landscape": 3 / 2,
    "horizontal": 3 / 2,
    "widescreen": 16 / 9,
    "square": 1.0,
    "竖版": 2 / 3,
    "竖屏": 9 / 16,
    "竖图": 2 / 3,
    "横版": 3 / 2,
    "横屏": 16 / 9,
    "横图": 3 / 2,
    "方形": 1.0,
    "方图": 1.0,
    "正方形": 1.0,
}
_COMMON_RATIOS = {
    (1, 1), (2, 3), (3, 2), (3, 4), (4, 3), (4, 5), (5, 4), (9, 16), (16, 9), (1, 2), (2, 1), (1, 3), (3, 1),
    (5, 7), (7, 5), (9, 21), (21, 9), (10, 16), (16, 10), (5, 8), (8, 5), (4, 7), (7, 4), (9, 19), (19, 9),
}
_RATIO_RE = re.compile(r"(?<![\d.])(\d{1,2})\s*[:：]\s*(\d{1,2})(?![\d.])")
_WORD_RE = re.compile(
    "|".join(
        (re.escape(w) if not w.isascii() else rf"\b{re.escape(w)}\b")
        for w in sorted(_RATIO_WORDS, key=len, reverse=True)
    ),
    re.IGNORECASE,
)


def ratio_from_prompt(prompt: str) -> float | None:
    """The aspect ratio a prompt asks for: an explicit "2:3" wins over words like "portrait"."""
    for match in _RATIO_RE.finditer(prompt):
        a, b = int(match.group(1)), int(match.group(2))
        # Only ratios people ask images in: "10:30" in a prompt is a time of day, not a shape.
        if (a, b) in _COMMON_RATIOS:
            return a / b
    word = _WORD_RE.search(prompt)
    if word:
        return _RATIO_WORDS[word.group(0).lower()]
    return None


def ratio_label(size: Size) -> str:
    """"2:3" for 1024x1536: the reduced ratio, or the nearest common one for free-form sizes."""
    common = ["1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "4:5", "5:4", "21:9", "9:21", "1:3", "3:1"]
    best = min(common, key=lambda r: abs(math.log(size.ratio) - math.log(_ratio_value(r))))
    return best


def _ratio_value(label: str) -> float:
    a, b = label.split(":")
    return int(a) / int(b)
