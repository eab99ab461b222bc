"""Pixel side of the offline "sandbox" engine.

The sandbox engine produces deterministic pictures from the prompt without any model, for development, demos
and tests.  Everything here is a pure function on PIL images: no I/O, no encoding, no global RNG, no clock.

* :func:`render_generation` - a seeded composition (palette gradient, shapes, caption with the prompt words).
* :func:`render_edit` - uses its inputs visibly: base image (cover-fitted), mask-driven repaint, extra images as
  framed inset thumbnails, or a light tint + caption band when there is no mask.
* :func:`render_partial` - progressively refined previews of a final image for streaming partial images.

Determinism: every random number comes from ``random.Random`` / ``numpy.random.default_rng`` seeded with a
stable hash of ``(seed, prompt)``, so the same arguments always give identical pixels on the same Pillow build.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import math
import operator
import random
import re
import threading
import unicodedata
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont, ImageOps

__all__ = [
    "MAX_PIXELS",
    "MAX_SIDE",
    "render_edit",
    "render_generation",
    "render_partial",
]

MAX_SIDE = 3840
MAX_PIXELS = 8_294_400  # 3840 x 2160

RGB = tuple[int, int, int]

_CAPTION_MAX_CHARS = 200  # longer prompts are cut at a word boundary and end with an ellipsis
_CAPTION_SCAN_CHARS = 1000  # never look further than this into a (possibly huge) prompt
_BG_MAX_SIDE = 256  # the smooth background is computed at most this large, then upscaled
_SHADOW_MAX_SIDE = 640  # soft shadows are drawn/blurred at most this large, then upscaled


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


def render_generation(prompt: str, width: int, height: int, *, seed: int, transparent: bool) -> Image.Image:
    """Render a deterministic composition for ``(prompt, seed)`` at exactly ``width`` x ``height``.

    Returns an RGBA image when ``transparent`` (background alpha 0, subject shapes and caption alpha 255, soft
    semi-transparent drop shadows), otherwise RGB.
    """
    width, height = _check_size(width, height)
    rgb, alpha = _compose(prompt, width, height, seed=seed, transparent=transparent, caption=True)
    if transparent:
        assert alpha is not None
        rgb.putalpha(alpha)
    return rgb


def render_edit(
    prompt: str,
    width: int,
    height: int,
    *,
    seed: int,
    images: list[Image.Image],
    mask: Image.Image | None,
    transparent: bool,
) -> Image.Image:
    """Render a deterministic "edit" of ``images`` at exactly ``width`` x ``height``.

    * ``images[0]`` is the base, cover-fitted (scaled to fill, centre-cropped) to the output size.
    * With a ``mask`` (alpha 0 = repaint; a mask without any alpha channel is read by luminance, black = repaint)
      the repaint area gets new seeded content from the prompt and the rest keeps the base pixels.
    * Without a mask the base gets a light palette tint and a caption band with the prompt words.
    * ``images[1:]`` are composited as framed inset thumbnails along the bottom-right.
    * ``transparent`` -> RGBA keeping the base's alpha (repainted areas take the generation's alpha); without a
      mask, a base with no fully transparent pixel gets its backdrop cut out (see :func:`_cut_out`), so the
      output always has a transparent background.  Otherwise RGB, where any transparency of the base is filled
      with prompt-derived content.
    """
    width, height = _check_size(width, height)
    if not images:
        raise ValueError("render_edit needs at least one input image")

    base = _cover(_to_rgba(images[0]), width, height)
    base_rgb = base.convert("RGB")
    base_alpha = base.getchannel("A")
    lowest_alpha = base_alpha.getextrema()[0]

    if mask is not None:
        keep = _cover(_mask_keep_channel(mask), width, height, Image.Resampling.BILINEAR)
        scene_rgb, scene_alpha = _compose(prompt, width, height, seed=seed, transparent=transparent, caption=False)
        if transparent:
            assert scene_alpha is not None
            rgb = Image.composite(base_rgb, scene_rgb, keep)
            alpha: Image.Image | None = Image.composite(base_alpha, scene_alpha, keep)
        else:
            if lowest_alpha < 255:  # not opaque throughout
                keep = ImageChops.multiply(keep, base_alpha)
            rgb = Image.composite(base_rgb, scene_rgb, keep)
            alpha = None
    else:
        rng = random.Random(_mix_seed("edit", seed, prompt))
        palette = _make_palette(prompt, rng)
        tint = _background(width, height, palette, np.random.default_rng(_mix_seed("edit-bg", seed, prompt)))
        rgb = Image.blend(base_rgb, tint, 0.24)
        if transparent:
            if lowest_alpha == 0:
                alpha = base_alpha.copy()  # the input is already a cut-out: keep it
            else:
                # An opaque (or only partly translucent) input: cut the subject out of its backdrop, as a real
                # model's transparent edit does, instead of returning a picture with no transparency at all.
                rgb, cutout = _cut_out(rgb, base_rgb, prompt, seed)
                alpha = ImageChops.darker(base_alpha, cutout)
        else:
            if lowest_alpha < 255:
                rgb = Image.composite(rgb, tint, base_alpha)
            alpha = None
        _draw_caption(rgb, alpha, prompt, palette, position="top")

    extras = images[1:]
    if extras:
        _place_thumbnails(rgb, alpha, extras)

    if transparent:
        assert alpha is not None
        rgb.putalpha(alpha)
    return rgb


def render_partial(final: Image.Image, index: int, total: int) -> Image.Image:
    """Preview ``index`` (0-based) of ``total`` progressively refined previews of ``final``.

    Earlier previews are coarser (lower effective resolution, more "fog" towards the mean colour); every preview
    has ``final``'s size and mode, and the last one is the closest to ``final`` (but not identical to it).
    """
    if isinstance(total, bool) or isinstance(index, bool) or total < 1 or not 0 <= index < total:
        raise ValueError(f"partial index must satisfy 0 <= index < total, got index={index}, total={total}")
    progress = (index + 1) / (total + 1)  # in (0, 1), strictly increasing with index
    width, height = final.size
    mode = final.mode
    work_mode = mode if mode in ("RGB", "RGBA", "L", "LA") else ("RGBA" if _has_alpha(final) else "RGB")
    img = final if mode == work_mode else final.convert(work_mode)

    # Effective resolution grows geometrically: 1/64 of the size -> ~1/2.
    factor = 2.0 ** (-6.0 * (1.0 - progress))
    small = (max(1, round(width * factor)), max(1, round(height * factor)))
    coarse = img.resize(small, Image.Resampling.BOX).resize((width, height), Image.Resampling.BICUBIC)

    # Fog towards the mean colour fades out as the preview progresses (alpha is left alone).
    fog = 0.55 * (1.0 - progress) ** 2
    colour_bands = "RGB" if work_mode in ("RGB", "RGBA") else "L"
    colour = coarse.convert(colour_bands) if coarse.mode != colour_bands else coarse
    mean = tuple(int(round(v)) for v in _band_means(colour))
    flat = Image.new(colour_bands, colour.size, mean if colour_bands == "RGB" else mean[0])
    colour = Image.blend(colour, flat, fog)
    if work_mode in ("RGBA", "LA"):
        colour = colour.convert(work_mode)
        colour.putalpha(coarse.getchannel("A"))
    out = colour
    if out.mode != mode:
        out = out.convert(mode)
    return out


# --------------------------------------------------------------------------------------------------------------
# Validation, seeding, image helpers
# --------------------------------------------------------------------------------------------------------------


def _check_size(width: int, height: int) -> tuple[int, int]:
    """Validate the output size; returns it as plain ints (NumPy integers are accepted)."""
    sizes = []
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got bool")
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
        if not 1 <= value <= MAX_SIDE:
            raise ValueError(f"{name} must be between 1 and {MAX_SIDE}, got {value}")
        sizes.append(value)
    width, height = sizes
    if width * height > MAX_PIXELS:
        raise ValueError(f"{width}x{height} exceeds the {MAX_PIXELS} pixel limit")
    return width, height


def _mix_seed(salt: str, seed: int, prompt: str) -> int:
    """A stable 64-bit seed from (salt, seed, prompt); unlike ``hash()`` it does not vary between processes."""
    data = f"{salt}\x00{seed}\x00{prompt}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _has_alpha(im: Image.Image) -> bool:
    """Alpha channel, palette alpha, or a colour-key ``transparency`` entry."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        return True
    return im.mode == "P" and im.palette is not None and im.palette.mode == "RGBA"


def _to_rgba(im: Image.Image) -> Image.Image:
    """Convert any PIL mode (incl. 16/32-bit and float greyscale) to RGBA without mutating the input."""
    if im.mode == "RGBA":
        return im.copy()
    if im.mode in ("I", "F") or im.mode.startswith("I;"):
        arr = np.asarray(im, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        if hi > 255.0:
            arr = arr * (255.0 / hi)
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return im.convert("RGBA")


def _cover(
    im: Image.Image, width: int, height: int, resample: Image.Resampling = Image.Resampling.BICUBIC
) -> Image.Image:
    """Scale ``im`` to fill ``width`` x ``height`` keeping its aspect ratio, centre-cropping the overflow."""
    sw, sh = im.size
    if (sw, sh) == (width, height):
        return im.copy()
    scale = max(width / sw, height / sh)
    cw, ch = width / scale, height / scale
    left, top = (sw - cw) / 2.0, (sh - ch) / 2.0
    return im.resize((width, height), resample, box=(left, top, left + cw, top + ch))


def _mask_keep_channel(mask: Image.Image) -> Image.Image:
    """The mask as an L image where 255 = keep the base and 0 = repaint.

    Masks with an alpha channel (or palette/colour-key transparency) use their alpha, as in the OpenAI API.
    A mask with no alpha information at all is read by luminance (black = repaint, white = keep).
    """
    if _has_alpha(mask):
        return _to_rgba(mask).getchannel("A")
    if mask.mode == "L":
        return mask.copy()
    return _to_rgba(mask).convert("L")


def _band_means(im: Image.Image) -> list[float]:
    # Mean of each band from the histogram: exact, C-speed, no NumPy copy of the whole image.
    hist = im.histogram()
    means = []
    weights = np.arange(256, dtype=np.float64)
    for b in range(len(im.getbands())):
        h = np.asarray(hist[b * 256 : (b + 1) * 256], dtype=np.float64)
        total = h.sum()
        means.append(float((h * weights).sum() / total) if total else 0.0)
    return means


# --------------------------------------------------------------------------------------------------------------
# Palette
# --------------------------------------------------------------------------------------------------------------

_COLOURS: dict[str, RGB] = {
    "red": (220, 38, 38),
    "crimson": (190, 20, 60),
    "scarlet": (240, 45, 25),
    "maroon": (128, 22, 32),
    "orange": (245, 130, 20),
    "amber": (255, 185, 10),
    "yellow": (250, 215, 40),
    "gold": (212, 170, 50),
    "lime": (140, 220, 40),
    "green": (40, 170, 70),
    "emerald": (20, 160, 110),
    "olive": (120, 130, 40),
    "teal": (0, 128, 128),
    "cyan": (0, 200, 220),
    "turquoise": (40, 210, 190),
    "aqua": (0, 215, 230),
    "blue": (40, 90, 220),
    "azure": (40, 140, 250),
    "navy": (20, 32, 110),
    "indigo": (75, 20, 140),
    "purple": (130, 50, 180),
    "violet": (140, 80, 220),
    "lavender": (180, 160, 230),
    "magenta": (220, 30, 180),
    "pink": (245, 130, 180),
    "rose": (230, 80, 120),
    "brown": (120, 75, 40),
    "beige": (225, 205, 165),
    "tan": (210, 180, 140),
    "black": (18, 18, 22),
    "white": (245, 245, 240),
    "gray": (128, 128, 132),
    "silver": (192, 194, 202),
}
_COLOUR_ALIASES = {
    "golden": "gold",
    "grey": "gray",
    "reddish": "red",
    "bluish": "blue",
    "blueish": "blue",
    "greenish": "green",
    "yellowish": "yellow",
    "pinkish": "pink",
    "purplish": "purple",
    "orangey": "orange",
    "orangish": "orange",
    "greyish": "gray",
    "grayish": "gray",
    "brownish": "brown",
    "violets": "violet",
}
_CJK_COLOURS = {
    "红": "red",
    "紅": "red",
    "橙": "orange",
    "黄": "yellow",
    "黃": "yellow",
    "金": "gold",
    "绿": "green",
    "綠": "green",
    "青": "teal",
    "蓝": "blue",
    "藍": "blue",
    "紫": "purple",
    "粉": "pink",
    "棕": "brown",
    "褐": "brown",
    "黑": "black",
    "白": "white",
    "灰": "gray",
    "银": "silver",
    "銀": "silver",
}
_WORD_RE = re.compile(r"[a-z]+")


def _colour_words(prompt: str) -> list[str]:
    """Colour names mentioned in the prompt, in order of first appearance (English words and CJK characters)."""
    text = prompt[:_CAPTION_SCAN_CHARS * 4].lower()
    hits: list[tuple[int, str]] = []
    for m in _WORD_RE.finditer(text):
        word = m.group()
        name = _COLOUR_ALIASES.get(word, word)
        if name not in _COLOURS and word.endswith("s"):
            name = _COLOUR_ALIASES.get(word[:-1], word[:-1])
        if name in _COLOURS:
            hits.append((m.start(), name))
    for ch, name in _CJK_COLOURS.items():
        pos = text.find(ch)
        if pos >= 0:
            hits.append((pos, name))
    seen: list[str] = []
    for _, name in sorted(hits):
        if name not in seen:
            seen.append(name)
    return seen


def _hsv(rgb: RGB) -> tuple[float, float, float]:
    return colorsys.rgb_to_hsv(rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0)


def _rgb(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def _jitter(rgb: RGB, rng: random.Random, dh: float, ds: float, dv: float) -> RGB:
    h, s, v = _hsv(rgb)
    return _rgb(h + rng.uniform(-dh, dh), s * rng.uniform(1 - ds, 1 + ds), v * rng.uniform(1 - dv, 1 + dv))


def _shade(rgb: RGB, factor: float) -> RGB:
    return tuple(min(255, max(0, round(c * factor))) for c in rgb)  # type: ignore[return-value]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


@dataclass(frozen=True)
class _Palette:
    dark: RGB  # background stops, dark -> light
    mid: RGB
    light: RGB
    glow: RGB
    shapes: tuple[RGB, ...]
    accent: RGB
    plate: RGB  # caption plate
    shadow: RGB


def _make_palette(prompt: str, rng: random.Random) -> _Palette:
    names = _colour_words(prompt)[:3]
    if names:
        anchors = [_COLOURS[n] for n in names]
        if len(anchors) == 1:
            h, s, v = _hsv(anchors[0])
            anchors.append(_rgb(h + rng.uniform(-0.05, 0.05), s * 0.85, min(1.0, v * 1.15)))
    else:
        h0 = rng.random()
        scheme = rng.choice(((0.0, 0.08, -0.08), (0.0, 0.5, 0.08), (0.0, 1 / 3, 2 / 3), (0.0, 0.42, 0.58)))
        sat, val = rng.uniform(0.45, 0.85), rng.uniform(0.72, 0.95)
        anchors = [_rgb(h0 + off, sat * rng.uniform(0.85, 1.1), val * rng.uniform(0.9, 1.05)) for off in scheme]

    primary, secondary = anchors[0], anchors[1]
    dark = _shade(_jitter(primary, rng, 0.02, 0.1, 0.1), 0.38)
    mid = _mix(_jitter(primary, rng, 0.02, 0.1, 0.05), secondary, 0.2)
    light = _mix(secondary, (255, 255, 255), rng.uniform(0.15, 0.35))
    glow = _mix(light, (255, 250, 235), 0.5)
    shapes = tuple(_jitter(anchors[i % len(anchors)], rng, 0.035, 0.2, 0.25) for i in range(7))
    accent = _mix(_jitter(anchors[-1], rng, 0.05, 0.1, 0.1), (255, 255, 255), 0.45)
    plate = _shade(primary, 0.16)
    shadow = _shade(primary, 0.1)
    return _Palette(dark, mid, light, glow, shapes, accent, plate, shadow)


# --------------------------------------------------------------------------------------------------------------
# Scene composition
# --------------------------------------------------------------------------------------------------------------


def _smooth_noise(nrng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency value noise in [0, 1]: a random ``cells`` grid upscaled bicubically to ``size``."""
    grid = nrng.random((cells, cells), dtype=np.float32)
    img = Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _background(
    width: int, height: int, pal: _Palette, nrng: np.random.Generator, glow_at: tuple[float, float] | None = None
) -> Image.Image:
    """A smooth gradient (3 palette stops along a seeded angle, cloudy noise, a glow and a vignette).

    Computed with NumPy at <= 256 px and upscaled: fast, and smooth content loses nothing by it.
    """
    f = min(1.0, _BG_MAX_SIDE / max(width, height))
    gw, gh = max(2, round(width * f)), max(2, round(height * f))
    aspect = width / height
    ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float32)
    u = (xs + 0.5) / gw * aspect
    v = (ys + 0.5) / gh

    angle = nrng.uniform(0.0, 2.0 * math.pi)
    proj = u * math.cos(angle) + v * math.sin(angle)
    t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    clouds = 0.6 * _smooth_noise(nrng, (gw, gh), 3) + 0.4 * _smooth_noise(nrng, (gw, gh), 7)
    t = np.clip(t + 0.35 * (clouds - 0.5), 0.0, 1.0)[..., None]

    dark, mid, light = (np.asarray(c, dtype=np.float32) for c in (pal.dark, pal.mid, pal.light))
    lo = dark + (mid - dark) * np.clip(t * 2.0, 0.0, 1.0)
    col = np.where(t < 0.5, lo, mid + (light - mid) * np.clip(t * 2.0 - 1.0, 0.0, 1.0))

    gx, gy = glow_at if glow_at is not None else (nrng.uniform(0.15, 0.85), nrng.uniform(0.1, 0.5))
    d2 = (u - gx * aspect) ** 2 + (v - gy) ** 2
    glow = np.exp(-d2 / 0.09)[..., None] * 0.45
    col = col + (np.asarray(pal.glow, dtype=np.float32) - col) * glow

    cx = u / aspect - 0.5
    vignette = 1.0 - 0.45 * (cx * cx + (v - 0.5) ** 2)
    col = col * vignette[..., None]
    small = Image.fromarray(np.clip(col + 0.5, 0, 255).astype(np.uint8))  # HxWx3 uint8 -> RGB
    return small.resize((width, height), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class _Shape:
    kind: str
    cx: float
    cy: float
    r: float
    aspect: float
    rotation: float
    sides: int
    colour: RGB
    opacity: int
    outline: RGB | None
    corner: float


def _shape_points(s: _Shape, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> list[tuple[float, float]]:
    cx, cy, r = s.cx * scale + dx, s.cy * scale + dy, s.r * scale
    rot = math.radians(s.rotation)
    if s.kind == "star":
        n = s.sides * 2
        radii = [r if k % 2 == 0 else r * 0.45 for k in range(n)]
    else:
        n = s.sides
        radii = [r] * n
    return [
        (cx + radii[k] * math.cos(rot + 2 * math.pi * k / n), cy + radii[k] * math.sin(rot + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    s: _Shape,
    fill: int | tuple[int, ...],
    outline: int | tuple[int, ...] | None,
    width: int,
    scale: float = 1.0,
    dx: float = 0.0,
    dy: float = 0.0,
) -> None:
    cx, cy, r = s.cx * scale + dx, s.cy * scale + dy, max(s.r * scale, 0.5)
    rx, ry = r * s.aspect, r / s.aspect
    box = (cx - rx, cy - ry, cx + rx, cy + ry)
    if s.kind == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width if outline is not None else 0)
    elif s.kind == "ring":
        draw.ellipse(box, outline=fill, width=max(1, round(r * 0.28)))
    elif s.kind == "rect":
        draw.rounded_rectangle(
            box, radius=r * s.corner, fill=fill, outline=outline, width=width if outline is not None else 0
        )
    else:  # "poly" / "star"
        draw.polygon(_shape_points(s, scale, dx, dy), fill=fill, outline=outline, width=width)


_KINDS = ("circle", "circle", "ring", "rect", "poly", "star")


def _make_shapes(rng: random.Random, width: int, height: int, pal: _Palette, transparent: bool) -> list[_Shape]:
    u = min(width, height)
    count = rng.randint(5, 9)
    shapes = []
    for i in range(count):
        if i == 0:  # a larger focal shape near the centre
            kind = rng.choice(("circle", "rect", "poly", "star"))
            r = u * rng.uniform(0.17, 0.26)
            cx = width * rng.uniform(0.38, 0.62)
            cy = height * rng.uniform(0.35, 0.55)
        else:
            kind = rng.choice(_KINDS)
            r = u * rng.uniform(0.045, 0.16)
            cx = width * rng.uniform(0.05, 0.95)
            cy = height * rng.uniform(0.05, 0.8)
        aspect = rng.uniform(0.75, 1.33) if kind in ("circle", "rect", "ring") else 1.0
        if transparent:
            # Keep the subject (plus its shadow) well inside the frame so the background stays transparent.
            margin = 0.12 * u
            rx, ry = r * aspect, r / aspect
            cx = min(max(cx, margin + rx), width - margin - rx) if width - 2 * (margin + rx) > 0 else width / 2
            cy = min(max(cy, margin + ry), height - margin - ry) if height - 2 * (margin + ry) > 0 else height / 2
        colour = pal.shapes[(i + rng.randint(0, 6)) % len(pal.shapes)]
        if rng.random() < 0.18:
            colour = pal.accent
        shapes.append(
            _Shape(
                kind=kind,
                cx=cx,
                cy=cy,
                r=max(r, 1.0),
                aspect=aspect,
                rotation=rng.uniform(0.0, 360.0),
                sides=rng.randint(3, 8) if kind == "poly" else rng.randint(4, 7),
                colour=colour,
                opacity=255 if transparent or rng.random() < 0.6 else rng.randint(150, 230),
                outline=_shade(colour, 0.55) if rng.random() < 0.45 else None,
                corner=rng.uniform(0.0, 0.45),
            )
        )
    return shapes


def _compose(
    prompt: str, width: int, height: int, *, seed: int, transparent: bool, caption: bool
) -> tuple[Image.Image, Image.Image | None]:
    """The seeded scene as (RGB colour, L alpha or None)."""
    rng = random.Random(_mix_seed("scene", seed, prompt))
    nrng = np.random.default_rng(_mix_seed("scene-np", seed, prompt))
    pal = _make_palette(prompt, rng)
    u = min(width, height)
    shapes = _make_shapes(rng, width, height, pal, transparent)
    sun = (rng.uniform(0.15, 0.85), rng.uniform(0.12, 0.42))
    line_w = max(1, round(u / 160))

    alpha: Image.Image | None
    if transparent:
        # Only subject pixels are visible; a flat base keeps the invisible area cheap and compressible.
        canvas = Image.new("RGB", (width, height), pal.dark)
        alpha = Image.new("L", (width, height), 0)
    else:
        canvas = _background(width, height, pal, nrng, glow_at=sun)
        alpha = None
        _draw_landscape(canvas, rng, pal, sun, width, height)

    _apply_shadows(canvas, alpha, shapes, pal, width, height)

    blend = ImageDraw.Draw(canvas, "RGBA")
    adraw = ImageDraw.Draw(alpha) if alpha is not None else None
    for s in shapes:
        outline = (*s.outline, s.opacity) if s.outline is not None else None
        _draw_shape(blend, s, (*s.colour, s.opacity), outline, line_w)
        if adraw is not None:
            _draw_shape(adraw, s, 255, 255 if s.outline is not None else None, line_w)
        if s.kind == "circle" and s.r * min(s.aspect, 1 / s.aspect) > 6:
            # A soft-looking highlight, inside the shape so the alpha is unaffected.
            hr = s.r * 0.38 * min(s.aspect, 1 / s.aspect)
            hx, hy = s.cx - s.r * 0.3 * s.aspect, s.cy - s.r * 0.3 / s.aspect
            blend.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=(255, 255, 255, 55))

    if not transparent:
        for _ in range(rng.randint(8, 24)):  # sparkles
            r = u * rng.uniform(0.003, 0.011)
            x, y = width * rng.random(), height * rng.random()
            blend.ellipse((x - r, y - r, x + r, y + r), fill=(*pal.accent, rng.randint(120, 220)))

    if caption:
        _draw_caption(canvas, alpha, prompt, pal, position="bottom")
    return canvas, alpha


def _draw_landscape(
    canvas: Image.Image, rng: random.Random, pal: _Palette, sun: tuple[float, float], width: int, height: int
) -> None:
    u = min(width, height)
    draw = ImageDraw.Draw(canvas, "RGBA")
    if rng.random() < 0.75:
        r = u * rng.uniform(0.07, 0.14)
        x, y = sun[0] * width, sun[1] * height
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(*pal.glow, 235))
    layers = rng.randint(0, 2)
    for layer in range(layers):
        base = height * (0.72 + 0.1 * layer + rng.uniform(-0.04, 0.04))
        waves = [(rng.uniform(0.5, 3.5), rng.uniform(0, 2 * math.pi), rng.uniform(0.02, 0.07)) for _ in range(3)]
        pts = []
        steps = 48
        for k in range(steps + 1):
            x = width * k / steps
            y = base + sum(a * height * math.sin(f * 2 * math.pi * k / steps + p) for f, p, a in waves)
            pts.append((x, y))
        pts += [(width, height), (0, height)]
        colour = _shade(_mix(pal.dark, pal.shapes[layer], 0.35), 0.9 - 0.2 * layer)
        draw.polygon(pts, fill=(*colour, 235))


def _apply_shadows(
    canvas: Image.Image, alpha: Image.Image | None, shapes: list[_Shape], pal: _Palette, width: int, height: int
) -> None:
    """Soft drop shadows: drawn and blurred at reduced size, upscaled, then composited in one pass."""
    u = min(width, height)
    f = min(1.0, _SHADOW_MAX_SIDE / max(width, height))
    small = Image.new("L", (max(1, round(width * f)), max(1, round(height * f))), 0)
    draw = ImageDraw.Draw(small)
    dx, dy = 0.018 * u * f, 0.028 * u * f
    for s in shapes:
        _draw_shape(draw, s, 255, None, 1, scale=f, dx=dx, dy=dy)
    small = small.filter(ImageFilter.GaussianBlur(max(0.6, 0.022 * u * f)))
    strength = 0.55 if alpha is not None else 0.42
    small = small.point([round(v * strength) for v in range(256)])
    shade = small.resize((width, height), Image.Resampling.BILINEAR)
    if alpha is not None:
        # Transparent output: the shadow is a semi-transparent dark area (soft alpha edges), so paint its colour
        # fully wherever it has any coverage and let the alpha carry the softness.
        canvas.paste(pal.shadow, (0, 0), shade.point([0] + [255] * 255))
        alpha.paste(shade, (0, 0))
    else:
        canvas.paste(pal.shadow, (0, 0), shade)


# --------------------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------------------


_thread_fonts = threading.local()


def _scalable_font(px: int) -> ImageFont.FreeTypeFont | None:
    """Pillow's bundled scalable font at ``px``, or None without FreeType.

    Cached per thread: a FreeType face is not safe to use from several threads at once, and the gateway may
    render in a thread pool.
    """
    cache: dict[int, ImageFont.FreeTypeFont | None] | None = getattr(_thread_fonts, "cache", None)
    if cache is None:
        cache = _thread_fonts.cache = {}
    if px in cache:
        return cache[px]
    try:
        font = ImageFont.load_default(size=px)
    except Exception:  # no FreeType, or a Pillow without sized default fonts
        font = None
    if not isinstance(font, ImageFont.FreeTypeFont):
        font = None
    if len(cache) >= 64:
        cache.clear()
    cache[px] = font
    return font


@functools.lru_cache(maxsize=1)
def _bitmap_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    loader = getattr(ImageFont, "load_default_imagefont", None)
    return loader() if loader is not None else ImageFont.load_default()


_NOTDEF_PROBE = "\ue000"  # a private-use code point: no bundled font maps it, so it renders as .notdef
_GLYPHS: dict[tuple[str, bool], bool] = {}


def _glyph_signature(font: ImageFont.FreeTypeFont, ch: str) -> tuple[object, ...]:
    m, offset = font.getmask2(ch, mode="L")
    return (m.size, offset, bytes(m))


def _has_glyph(ch: str) -> bool:
    font = _scalable_font(24)
    key = (ch, font is not None)
    known = _GLYPHS.get(key)
    if known is not None:
        return known
    if font is None:
        ok = 32 < ord(ch) < 127
    else:
        try:
            ok = _glyph_signature(font, ch) != _glyph_signature(font, _NOTDEF_PROBE)
        except Exception:
            ok = False
    _GLYPHS[key] = ok
    return ok


_PUNCT_FALLBACK = {"—": "-", "–": "-", "‐": "-", "−": "-", "«": '"', "»": '"', "„": '"', "‚": "'", "·": "."}


def _renderable(ch: str) -> str:
    if _has_glyph(ch):
        return ch
    if ch in _PUNCT_FALLBACK and _has_glyph(_PUNCT_FALLBACK[ch]):
        return _PUNCT_FALLBACK[ch]
    # "café" -> "cafe": decompose and drop combining marks; keep only what the font can draw.
    decomposed = unicodedata.normalize("NFKD", ch)
    kept = "".join(c for c in decomposed if not unicodedata.combining(c) and _has_glyph(c))
    return kept if kept and kept != ch else ""


def _caption_words(prompt: str) -> str:
    """The prompt reduced to characters the font can draw (others become word breaks), capped in length."""
    out: list[str] = []
    gap = False
    for ch in prompt[:_CAPTION_SCAN_CHARS]:
        rep = "" if ch.isspace() or not ch.isprintable() else _renderable(ch)
        if not rep:
            gap = True
            continue
        if gap and out:
            out.append(" ")
        gap = False
        out.append(rep)
    text = "".join(out)
    truncated = bool(prompt[_CAPTION_SCAN_CHARS:].strip())
    if len(text) > _CAPTION_MAX_CHARS:
        cut = text.rfind(" ", 0, _CAPTION_MAX_CHARS)
        text = text[: cut if cut > _CAPTION_MAX_CHARS // 2 else _CAPTION_MAX_CHARS].rstrip()
        truncated = True
    if truncated:
        text += _ellipsis()
    return text


def _ellipsis() -> str:
    return "…" if _has_glyph("…") else "..."


class _TextStyle:
    """Measures and rasterises text at a target pixel size, with a bitmap-font fallback (scaled up, NEAREST)."""

    def __init__(self, px: int) -> None:
        self.font = _scalable_font(px)
        if self.font is not None:
            self.scale = 1
            ascent, descent = self.font.getmetrics()
            self.line_height = max(1, round((ascent + descent) * 1.08))
            self.draw_font: ImageFont.ImageFont | ImageFont.FreeTypeFont = self.font
        else:
            self.draw_font = _bitmap_font()
            native = max(1, self.draw_font.getbbox("Ag")[3])
            self.scale = max(1, round(px / native))
            self.line_height = (native + 2) * self.scale

    def measure(self, text: str) -> float:
        if self.font is not None:
            return self.font.getlength(text)
        return float(self.draw_font.getbbox(text)[2] * self.scale) if text else 0.0

    def render(self, lines: list[str], width: int) -> Image.Image:
        """Centred lines as an L mask of ``width`` x ``len(lines) * line_height``."""
        height = self.line_height * len(lines)
        s = self.scale
        layer = Image.new("L", (max(1, -(-width // s)), max(1, -(-height // s))), 0)
        draw = ImageDraw.Draw(layer)
        for i, line in enumerate(lines):
            x = (width - self.measure(line)) / 2 / s
            draw.text((x, i * self.line_height / s), line, font=self.draw_font, fill=255)
        if s > 1:
            layer = layer.resize((layer.width * s, layer.height * s), Image.Resampling.NEAREST)
        return layer.crop((0, 0, width, height))


def _wrap(text: str, measure: Callable[[str], float], max_width: float) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if measure(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        # A single word wider than the line is broken by characters.
        while measure(word) > max_width and len(word) > 1:
            lo, hi = 1, len(word)
            while lo < hi:  # longest prefix that fits (at least one character)
                mid = (lo + hi + 1) // 2
                if measure(word[:mid]) <= max_width:
                    lo = mid
                else:
                    hi = mid - 1
            lines.append(word[:lo])
            word = word[lo:]
        current = word
    if current:
        lines.append(current)
    return lines


def _fit_text(text: str, max_width: int, max_height: int, px: int, max_lines: int) -> tuple[_TextStyle, list[str]]:
    """Largest size (down to ~55% of ``px``) at which ``text`` wraps into the box; else truncate with an ellipsis."""
    min_px = max(8, round(px * 0.55))
    size = max(px, min_px)
    while True:
        style = _TextStyle(size)
        allowed = max(1, min(max_lines, max_height // style.line_height))
        lines = _wrap(text, style.measure, max_width)
        if len(lines) <= allowed:
            return style, lines
        if size <= min_px:
            break
        size = max(min_px, int(size * 0.88))
    lines = lines[:allowed]
    ell = _ellipsis()
    last = lines[-1]
    while last and style.measure(last + ell) > max_width:
        cut = last.rfind(" ")
        last = last[:cut] if cut > 0 else last[:-1]
    lines[-1] = (last.rstrip() + ell) if last else ell
    return style, lines


def _draw_caption(
    canvas: Image.Image, alpha: Image.Image | None, prompt: str, pal: _Palette, *, position: str
) -> None:
    """The prompt words on a translucent plate (generation: bottom, centred) or a full-width band (edit: top)."""
    text = _caption_words(prompt)
    if not text:
        return
    width, height = canvas.size
    u = min(width, height)
    margin = max(2, round(u * 0.04))
    if position == "bottom":
        px, max_lines, box_h = max(8, round(u * 0.056)), 4, int(height * 0.28)
    else:
        px, max_lines, box_h = max(8, round(u * 0.05)), 2, int(height * 0.2)
    max_w = max(1, width - 4 * margin)
    style, lines = _fit_text(text, max_w, max(1, box_h), px, max_lines)
    text_w = max(1, min(max_w, math.ceil(max(style.measure(line) for line in lines))))
    mask = style.render(lines, text_w)
    pad = max(2, style.line_height // 3)
    tw, th = mask.size

    if position == "bottom":
        x0 = (width - tw) // 2
        y0 = height - margin - pad - th
        plate = (x0 - pad * 2, y0 - pad, x0 + tw + pad * 2, y0 + th + pad)
        radius = pad * 1.5
        plate_alpha = 165
    else:
        x0 = (width - tw) // 2
        y0 = pad
        plate = (0, 0, width, y0 + th + pad)
        radius = 0
        plate_alpha = 150

    ImageDraw.Draw(canvas, "RGBA").rounded_rectangle(plate, radius=radius, fill=(*pal.plate, plate_alpha))
    off = max(1, style.line_height // 24)
    canvas.paste((0, 0, 0), (x0 + off, y0 + off), mask)  # a crisp drop shadow keeps text readable anywhere
    canvas.paste((250, 250, 246), (x0, y0), mask)
    if alpha is not None:
        plate_mask = Image.new("L", alpha.size, 0)
        ImageDraw.Draw(plate_mask).rounded_rectangle(plate, radius=radius, fill=255)
        plate_layer = alpha.point([max(v, 215) for v in range(256)])
        alpha.paste(plate_layer, (0, 0), plate_mask)
        alpha.paste(255, (x0 + off, y0 + off), mask)
        alpha.paste(255, (x0, y0), mask)


# --------------------------------------------------------------------------------------------------------------
# Edit helpers
# --------------------------------------------------------------------------------------------------------------


_CUTOUT_MAX_SIDE = 256  # the subject is found at most this large, then its mask is upscaled
_CUTOUT_DISTANCE = 40  # a pixel further than this (largest channel difference) from the backdrop is subject
_CUTOUT_SUBJECT_RANGE = (0.02, 0.9)  # outside this share of the picture there is no usable subject/backdrop split
_CUTOUT_PLAIN_BORDER = 0.85  # share of the border that must be close to its median colour to be a backdrop


def _cut_out(
    rgb: Image.Image, base_rgb: Image.Image, prompt: str, seed: int
) -> tuple[Image.Image, Image.Image]:
    """The (colour, alpha) of an unmasked transparent edit of an opaque base: subject 255, backdrop 0.

    The backdrop is the colour around the base's border (its per-channel median) when most of the border is
    close to it; pixels clearly different from it are the subject, with a slightly soft edge.  When that split
    finds no subject (a flat picture) or no plain backdrop (a busy photo), the edited picture is cut to the
    silhouette of the prompt's subject instead - the same shapes and soft shadows a transparent generation with
    this prompt and seed draws - so the base still shows inside the shapes.  Deterministic: no randomness beyond
    the seeded scene.
    """
    width, height = rgb.size
    f = min(1.0, _CUTOUT_MAX_SIDE / max(width, height))
    sw, sh = max(1, round(width * f)), max(1, round(height * f))
    small = np.asarray(base_rgb.resize((sw, sh), Image.Resampling.BOX), dtype=np.int16)
    border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    backdrop = np.median(border, axis=0)
    subject = np.abs(small - backdrop).max(axis=2) > _CUTOUT_DISTANCE
    plain_border = float((np.abs(border - backdrop).max(axis=1) <= _CUTOUT_DISTANCE // 2).mean())
    low, high = _CUTOUT_SUBJECT_RANGE
    if min(sw, sh) >= 8 and plain_border >= _CUTOUT_PLAIN_BORDER and low <= float(subject.mean()) <= high:
        mask = Image.fromarray(subject.astype(np.uint8) * 255).filter(ImageFilter.MedianFilter(3))
        mask = mask.resize((width, height), Image.Resampling.BILINEAR)
        # Steepen the upscaled ramp: crisp but anti-aliased edges, and exact 0 / 255 away from them.
        return rgb, mask.point([min(255, max(0, round((v - 64) * 2))) for v in range(256)])
    scene_rgb, scene_alpha = _compose(prompt, width, height, seed=seed, transparent=True, caption=False)
    assert scene_alpha is not None
    # The base inside the solid shapes, the scene's shadow colour where only the soft shadows reach.
    solid = scene_alpha.point([255 if v == 255 else 0 for v in range(256)])
    return Image.composite(rgb, scene_rgb, solid), scene_alpha


def _place_thumbnails(canvas: Image.Image, alpha: Image.Image | None, extras: list[Image.Image]) -> None:
    """Framed thumbnails of the extra input images in a grid anchored at the bottom-right corner."""
    width, height = canvas.size
    u = min(width, height)
    k = len(extras)
    gap = max(1, round(u * 0.02))
    best = (0, 1, k)
    for rows in range(1, k + 1):  # pick the grid shape that gives the largest thumbnails
        cols = -(-k // rows)
        size = min(
            round(u * 0.26),
            (width * 0.92 - (cols - 1) * gap) / cols,
            (height * 0.55 - (rows - 1) * gap) / rows,
        )
        if int(size) > best[0]:
            best = (int(size), rows, cols)
    size, rows, cols = best
    size = max(size, 2)
    border = max(1, min(round(u * 0.006), size // 8))
    draw = ImageDraw.Draw(canvas)
    adraw = ImageDraw.Draw(alpha) if alpha is not None else None
    for i, im in enumerate(extras):
        row, col = divmod(i, cols)
        x1 = width - gap - col * (size + gap)
        y1 = height - gap - row * (size + gap)
        x0, y0 = x1 - size, y1 - size
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(250, 250, 250))
        if adraw is not None:
            adraw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
        inner = max(1, size - 2 * border)
        thumb = ImageOps.contain(_to_rgba(im), (inner, inner), Image.Resampling.BICUBIC)
        tx = x0 + border + (inner - thumb.width) // 2
        ty = y0 + border + (inner - thumb.height) // 2
        canvas.paste(thumb.convert("RGB"), (tx, ty), thumb.getchannel("A"))
