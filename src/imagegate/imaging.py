"""Decoding what clients upload and encoding what engines produce.

Uploads are untrusted: the format is sniffed from the bytes (never the filename), the pixel count is checked
from the header before any pixel is decoded, and a truncated file is refused rather than half-read.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from imagegate.catalog.sizes import Size
from imagegate.errors import InvalidImage

# Pillow's own bomb guard only warns between 1x and 2x its limit; we enforce our own limit explicitly.
Image.MAX_IMAGE_PIXELS = None

INPUT_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class Upload:
    """An uploaded image, decoded and checked."""

    image: Image.Image
    format: str  # png | jpeg | webp
    nbytes: int

    @property
    def size(self) -> Size:
        return Size(*self.image.size)

    @property
    def has_alpha(self) -> bool:
        # A tRNS chunk gives any PNG mode (P, but also RGB, L, 1) a transparent colour or index.
        return self.image.mode in ("RGBA", "LA", "PA") or "transparency" in self.image.info


def decode_upload(data: bytes, *, param: str, max_pixels: int) -> Upload:
    if not data:
        raise InvalidImage(f"The file for '{param}' is empty. Upload a PNG, JPEG or WebP image.", param=param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = INPUT_FORMATS.get(image.format or "")
            if fmt is None:
                raise InvalidImage(
                    f"Invalid image file for '{param}': format {image.format or 'unknown'} is not supported. "
                    "Supported formats are png, jpeg and webp.",
                    param=param,
                )
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImage(
                    f"Image for '{param}' is {width}x{height} ({width * height:,} pixels); "
                    f"at most {max_pixels:,} pixels are accepted.",
                    param=param,
                )
            image.load()
    except InvalidImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImage(
            f"Invalid image file for '{param}': it is not a PNG, JPEG or WebP image.", param=param
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(
            f"Invalid image file for '{param}': the image data is corrupt or truncated ({exc}).", param=param
        ) from None
    if fmt == "jpeg":
        # Phones store rotation in EXIF; the pixels the user sees are the transposed ones.
        image = ImageOps.exif_transpose(image)
    return Upload(image=image, format=fmt, nbytes=len(data))


def check_mask(mask: Upload, base: Upload, *, param: str = "mask") -> None:
    if mask.format != "png":
        raise InvalidRequestMask(f"The mask must be a PNG with an alpha channel, not {mask.format}.", param=param)
    if mask.size != base.size:
        raise InvalidRequestMask(
            f"The mask is {mask.size} but the first image is {base.size}; they must have the same dimensions.",
            param=param,
        )
    if not mask.has_alpha:
        raise InvalidRequestMask(
            "The mask must be a PNG with an alpha channel: fully transparent pixels (alpha 0) mark the area to edit.",
            param=param,
        )


class InvalidRequestMask(InvalidImage):
    def __init__(self, message: str, *, param: str = "mask") -> None:
        super().__init__(message, param=param)


def encode(image: Image.Image, fmt: str, *, compression: int, transparent: bool) -> bytes:
    """Encode as png/jpeg/webp. ``compression`` is OpenAI's output_compression (0-100, 100 = best quality, the
    default); PNG is lossless, so it has no effect there."""
    if transparent:
        if image.mode != "RGBA":
            image = image.convert("RGBA")
    elif image.mode != "RGB":
        image = _flatten(image)
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, "PNG", compress_level=1)
    elif fmt == "jpeg":
        image.save(out, "JPEG", quality=max(1, min(compression, 100)), optimize=False)
    elif fmt == "webp":
        if compression >= 100:
            image.save(out, "WEBP", lossless=True, method=0)
        else:
            image.save(out, "WEBP", quality=max(1, compression), method=2)
    else:  # validated long before this point
        raise ValueError(f"unsupported output format {fmt!r}")
    return out.getvalue()


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def sniff_format(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def header_size(data: bytes) -> Size | None:
    """Width and height from the file header alone, without decoding pixels; None if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return Size(*image.size)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
