"""Reading an upstream's images answer while it arrives.

An images answer is a few hundred bytes of JSON around megabytes of base64 (``data[i].b64_json``). The scanner
takes the body chunk by chunk: the small skeleton is kept, to be parsed once the body has ended (usage, urls,
revised prompts); each ``b64_json`` string goes into a :class:`Base64Stream` as it comes, so a relay can forward
an image before its last byte has arrived, and never holds a second copy of it.

The base64 is checked as it passes, with the same rule as the buffered path: it must be a valid JSON string's
content on its own (ASCII without control characters, quotes or backslashes), because it is spliced into our
answer unparsed. Escaped base64 characters (``\\/``: PHP's default; ``\\u002B``: .NET's) are unescaped; a
data-URL prefix is dropped.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import orjson

from imagegate.engines.base import Base64Stream

_WS = b" \t\r\n"
_KEY = b"b64_json"
_MAX_SKELETON = 1 << 20  # everything but the base64: a larger remainder is not an images answer
_MAX_DATA_URL_PREFIX = 512
HEAD_CHARS = 8192  # base64 characters decoded to read an image header (a multiple of 4)
# Placeholders carry this process's random tag: a value in an upstream's body cannot pass for one.
_TAG = secrets.token_hex(8)

# Where the skeleton's tokenizer is.
_OUT, _STRING, _ESCAPE, _AFTER_KEY, _AFTER_COLON, _BASE64 = range(6)


class ArrivingImage:
    """One ``b64_json`` string: its stream, and the first characters kept apart for reading the image header."""

    def __init__(self, head_chars: int) -> None:
        self.stream = Base64Stream()
        self.head = bytearray()
        self.head_chars = head_chars
        self._lead: bytearray | None = bytearray()  # the first bytes, until a data-URL prefix is ruled out

    @property
    def head_ready(self) -> bool:
        """Enough of the image has arrived to read its header (or all of it has)."""
        return self.stream.complete or len(self.head) >= self.head_chars

    def feed(self, piece: bytes | memoryview) -> None:
        if self._lead is not None:
            held = len(self._lead)
            probe = bytes(self._lead) + bytes(piece[:_MAX_DATA_URL_PREFIX])  # never the whole piece: it may be MBs
            if probe.startswith(b"data:") or (len(probe) < 5 and b"data:".startswith(probe)):
                comma = probe.find(b",")
                if comma < 0:
                    if len(probe) > _MAX_DATA_URL_PREFIX:
                        raise ValueError("b64_json starts like a data URL that never ends")
                    self._lead += piece
                    return
                piece = memoryview(piece)[comma + 1 - held:]  # the held bytes hold no comma: it is in this piece
            elif held:
                piece = bytes(self._lead) + bytes(piece)  # a first piece of under five bytes: rare, and small
            self._lead = None
        if len(self.head) < self.head_chars:
            self.head += piece[: self.head_chars - len(self.head)]
        self.stream.append(piece)

    def close(self) -> None:
        if self._lead is not None:  # shorter than a data-URL prefix: it is what it is
            lead, self._lead = bytes(self._lead), None
            if lead.startswith(b"data:"):
                raise ValueError("b64_json is a data URL without data")
            self.head += lead
            self.stream.append(lead)
        self.stream.close()


class AnswerScanner:
    """Feed it the body's chunks in order, then call :meth:`finish`; :meth:`abort` if the body cannot end well."""

    def __init__(self, *, max_bytes: int, head_chars: int = HEAD_CHARS) -> None:
        self.max_bytes = max_bytes
        self.head_chars = head_chars
        self.images: list[ArrivingImage] = []
        self.total = 0
        self._skeleton: list[bytes] = []
        self._skeleton_size = 0
        self._state = _OUT
        self._key = bytearray()  # the string being read, while it may still be the key "b64_json"
        self._key_possible = False
        self._escape: bytearray | None = None  # what followed a backslash, while the escape is not whole yet

    # -- feeding -----------------------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.total > self.max_bytes:
            raise ValueError(f"the upstream's answer is larger than {self.max_bytes:,} bytes")
        pos, end = 0, len(chunk)
        while pos < end:
            if self._state == _BASE64:
                pos = self._base64(chunk, pos)
            else:
                pos = self._structure(chunk, pos)

    def _keep(self, piece: bytes) -> None:
        self._skeleton_size += len(piece)
        if self._skeleton_size > _MAX_SKELETON:
            raise ValueError("the answer's JSON outside its images is too large")
        self._skeleton.append(piece)

    def _structure(self, chunk: bytes, pos: int) -> int:
        """Walk the skeleton until a ``b64_json`` string opens or the chunk ends; returns where it stopped."""
        start = pos
        end = len(chunk)
        while pos < end:
            state = self._state
            if state == _OUT or (state == _STRING and not self._key_possible):
                # Skip to the next byte that matters (a quote; in a string also a backslash) at C speed: the
                # skeleton may hold long strings (prompts), and it is walked byte by byte only near keys.
                quote = chunk.find(b'"', pos)
                if state == _STRING:
                    backslash = chunk.find(b"\\", pos, quote if quote >= 0 else end)
                    if backslash >= 0:
                        quote = backslash
                if quote < 0:
                    break
                pos = quote
            byte = chunk[pos]
            if state == _STRING:
                if byte == 0x5C:  # backslash: whatever follows is part of the string, and no plain key
                    self._state = _ESCAPE
                    self._key_possible = False
                elif byte == 0x22:
                    self._state = _AFTER_KEY if self._key_possible and self._key == _KEY else _OUT
                elif self._key_possible:
                    self._key.append(byte)
                    if len(self._key) > len(_KEY):
                        self._key_possible = False
            elif state == _ESCAPE:
                self._state = _STRING
            elif state == _AFTER_KEY:
                if byte == 0x3A:
                    self._state = _AFTER_COLON
                elif byte not in _WS:
                    self._state = _OUT
                    continue  # the same byte, read again outside
            elif state == _AFTER_COLON:
                if byte == 0x22:  # the image's string opens: the skeleton gets a placeholder instead
                    self._keep(chunk[start:pos])
                    self._keep(b'"\\u0000%s%d"' % (_TAG.encode(), len(self.images)))
                    self.images.append(ArrivingImage(self.head_chars))
                    self._state = _BASE64
                    return pos + 1
                if byte not in _WS:
                    self._state = _OUT
                    continue
            elif byte == 0x22:  # _OUT: a string opens
                self._state = _STRING
                self._key.clear()
                self._key_possible = True
            pos += 1
        self._keep(chunk[start:end])
        return end

    def _base64(self, chunk: bytes, pos: int) -> int:
        """Take base64 until the string's closing quote or the chunk's end; returns where it stopped. What a chunk
        adds goes to the image as one piece: escaped base64 (PHP escapes every '/') would otherwise come out as
        tens of thousands of pieces, each written to the client on its own."""
        image = self.images[-1]
        end = len(chunk)
        text = bytearray()  # this chunk's base64 with its escapes undone, where it has any
        if self._escape is not None:  # an escape cut by the chunk's edge
            pos = self._take_escape(text, chunk, pos)
            if self._escape is not None:
                return end
        if pos < end and chunk.find(b"\\", pos) < 0:
            rest = chunk if pos == 0 else memoryview(chunk)[pos:]
            if _lowest(rest) >= 0x2B:
                # The common case, a piece from inside the string: no quote, no escape, nothing to refuse.
                self._feed(image, text)
                image.feed(rest)
                return end
        quote = chunk.find(b'"', pos)
        stop = quote if quote >= 0 else end
        if chunk.find(b"\\", pos, stop) >= 0:
            # The escapes relays use (PHP's \/, .NET's \u002B), undone in C. A backslash left after that is another
            # escape, or one cut by the chunk's edge: the loop below reads those one by one.
            plain = chunk[pos:stop].replace(b"\\/", b"/").replace(b"\\u002B", b"+")
            if plain.find(b"\\") < 0:
                text += plain
                pos = stop
        while pos < stop:
            backslash = chunk.find(b"\\", pos, stop)
            if backslash < 0:
                piece = memoryview(chunk)[pos:stop]
                if text:
                    text += piece
                else:  # no escape in this chunk: no copy either
                    _check(piece)
                    image.feed(piece)
                pos = stop
                break
            text += memoryview(chunk)[pos:backslash]
            self._escape = bytearray()
            pos = self._take_escape(text, chunk, backslash + 1)
            if self._escape is not None:  # cut by the chunk's edge: the rest comes with the next chunk
                self._feed(image, text)
                return end
        self._feed(image, text)
        if quote < 0:
            return end
        image.close()
        self._state = _OUT
        return quote + 1

    @staticmethod
    def _feed(image: ArrivingImage, text: bytearray) -> None:
        """The unescaped base64 gathered so far, checked, to the image."""
        if text:
            _check(text)
            image.feed(bytes(text))
            text.clear()

    def _take_escape(self, text: bytearray, chunk: bytes, pos: int) -> int:
        escape = self._escape
        assert escape is not None
        while pos < len(chunk) and not _whole(escape):
            escape.append(chunk[pos])
            pos += 1
        if _whole(escape):
            self._escape = None
            text += _unescaped(escape)
        return pos

    # -- ending ------------------------------------------------------------------------------------------------

    def finish(self, handed_over: int = 0, wanted: int | None = None) -> dict[str, Any]:
        """The answer parsed, each ``data[i].b64_json`` restored as its base64 (bytes), except the first
        ``handed_over`` images (already forwarded as streams) and those from ``wanted`` on (not asked for): None.
        Raises ValueError when the body is no images answer, or when its images are not the strings that were
        streamed, in order."""
        if self._state == _BASE64 or self._escape is not None:
            raise ValueError("the answer ends inside an image")
        try:
            doc = orjson.loads(b"".join(self._skeleton))
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"the answer is not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ValueError("the answer is not a JSON object")
        items = doc.get("data")
        restored = 0
        for index, item in enumerate(items if isinstance(items, list) else ()):
            value = item.get("b64_json") if isinstance(item, dict) else None
            if isinstance(value, str) and value.startswith("\x00" + _TAG):
                if value != f"\x00{_TAG}{restored}" or index != restored:
                    raise ValueError("the answer's images are not where its b64_json strings were")
                keep = handed_over <= index and (wanted is None or index < wanted)
                item["b64_json"] = self.images[restored].stream.text() if keep else None
                restored += 1
        if restored != len(self.images):
            raise ValueError("the answer has b64_json strings outside 'data'")
        return doc

    def abort(self, error: BaseException) -> None:
        """The body will not end well: whoever reads an image still arriving hears ``error``."""
        for image in self.images:
            image.stream.fail(error)


_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def _whole(escape: bytearray) -> bool:
    return bool(escape) and (escape[0] != 0x75 or len(escape) == 5)  # one character, or u and four hex digits


def _unescaped(escape: bytearray) -> bytes:
    """An escape inside base64: ``\\/`` (PHP's default) and ``\\u002B`` (.NET's, for '+') stand for base64
    characters; escaped line breaks (MIME-style base64) go; anything else is no base64."""
    if escape[0] == 0x2F:
        return b"/"
    if escape[0] in (0x6E, 0x72):  # n, r
        return b""
    digits = bytes(escape[1:])
    if escape[0] == 0x75 and len(digits) == 4 and all(d in _HEX_DIGITS for d in digits):  # int() takes " 2b", "0x2b"
        char = chr(int(digits, 16))
        if char in _BASE64_CHARS:
            return char.encode("ascii")
    raise ValueError("b64_json holds an escape that base64 never needs")


def _check(piece: bytes | bytearray | memoryview) -> None:
    if _lowest(piece) < 0x20:  # control characters JSON forbids in a string, and non-ASCII
        raise ValueError("b64_json holds characters that base64 never has")


def _lowest(piece: bytes | bytearray | memoryview) -> int:
    # One pass: read as signed, bytes from 0x80 up are negative, so the minimum tells non-ASCII and control
    # characters (under 0x20) at once; from 0x2B ('+', the lowest base64 character) up, a piece holds no quote
    # either. (DEL passes: it is no base64, but valid JSON.)
    return int(np.frombuffer(piece, np.int8).min())
