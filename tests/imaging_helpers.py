"""Build test images in memory; tests never download anything."""

from __future__ import annotations

import base64
import io

from PIL import Image


def png_bytes(width: int, height: int, color=(40, 120, 200, 255), mode: str = "RGBA") -> bytes:
    image = Image.new(mode, (width, height), color if mode != "RGB" else color[:3])
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def mask_bytes(width: int, height: int, hole: tuple[int, int, int, int]) -> bytes:
    """Opaque everywhere except a fully transparent rectangle: the area to repaint."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), hole)
    out = io.BytesIO()
    mask.save(out, "PNG")
    return out.getvalue()


def decode_b64(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
