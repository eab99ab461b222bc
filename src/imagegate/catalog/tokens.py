"""Token accounting from the published tables (reference §7.3–7.4).

These are the numbers OpenAI bills on; the sandbox reports them as usage so that usage, and later prices, are
what the real models would produce for the same request.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from imagegate.catalog.sizes import Size

# gpt-image-1 family: tokens = (H/p) * (W/p + 1), reproducing all nine cells of the published table.
_PATCH = {"low": 64, "medium": 32, "high": 16}
# gpt-image-2 family: per-quality factor of the community formula that reproduces every official figure.
_Q_FACTOR = {
    "gpt-image-2": {"low": 16, "medium": 48, "high": 96},
    "gpt-image-2.5": {"low": 16, "medium": 24, "high": 48, "xhigh": 64, "max": 96},
}
PARTIAL_IMAGE_TOKENS = 100


@dataclass(frozen=True)
class Usage:
    text_tokens: int = 0
    image_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False

    @property
    def input_tokens(self) -> int:
        return self.text_tokens + self.image_tokens

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            self.text_tokens + other.text_tokens,
            self.image_tokens + other.image_tokens,
            self.output_tokens + other.output_tokens,
            self.estimated or other.estimated,
        )


def output_tokens(table: str, quality: str, size: Size) -> int:
    """Image output tokens for one image; 0 for models without a token table."""
    if table == "gpt-image-1":
        patch = _PATCH.get(quality, _PATCH["high"])
        return math.ceil(size.height / patch) * (math.ceil(size.width / patch) + 1)
    if table in _Q_FACTOR:
        factors = _Q_FACTOR[table]
        q = factors.get(quality, factors["high"])
        long_edge, short_edge = max(size), min(size)
        s = (2 * q * short_edge + long_edge) // (2 * long_edge)
        return math.ceil(q * s * (2_000_000 + size.pixels) / 4_000_000)
    return 0


def input_image_tokens(table: str, size: Size, fidelity: str = "low") -> int:
    """Tokens for one input image: 65 + 129 per 512-px tile after scaling the short side to 512.

    Documented for gpt-image-1; applied to the newer models as an estimate because OpenAI has not published
    theirs. gpt-image-2 and later always read inputs at high fidelity.
    """
    if table == "none":
        return 0
    width, height = float(size.width), float(size.height)
    if max(width, height) > 2048:  # first fit inside 2048x2048
        scale = 2048 / max(width, height)
        width, height = width * scale, height * scale
    scale = 512 / min(width, height)  # then the short side becomes 512
    width, height = width * scale, height * scale
    tiles = math.ceil(width / 512) * math.ceil(height / 512)
    tokens = 65 + 129 * tiles
    if fidelity == "high" or table != "gpt-image-1":
        tokens += 4096 if size.width == size.height else 6144
    return tokens


_TOKEN_RE = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]")


def text_tokens(prompt: str) -> int:
    """An offline estimate of o200k tokens: ~1 per short word, long words split every 6 letters, 1 per other
    character (CJK, punctuation). Exact counts need the tokenizer files, which we do not download at run time."""
    count = 0
    for piece in _TOKEN_RE.findall(prompt):
        count += math.ceil(len(piece) / 6) if piece.isalpha() and piece.isascii() else 1
    return max(count, 1)
