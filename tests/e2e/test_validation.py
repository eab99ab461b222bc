"""Refusals through the official openai SDK: every bad parameter is a 400 that names it and says what is allowed.

Each case runs against the live server and checks the whole error: the SDK exception class and status, the inner
``{"message", "type", "param", "code"}`` object, that the wire body validates as OpenAI's ``ErrorResponse``, and
that the response carries ``x-request-id`` (which the SDK surfaces as ``request_id``) and ``x-should-retry: false``.
"""

from __future__ import annotations

import base64
import functools
import io
import os
from typing import Any, Callable

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image, ImageChops, ImageStat

from tests import openapi
from tests.imaging_helpers import decode_b64, mask_bytes, png_bytes
from tests.servers import TEST_KEY

GEN = "generate"
EDIT = "edit"
PROMPT = "a small red fox in the snow"


def _png(width: int = 64, height: int = 64, **kwargs) -> tuple[str, bytes, str]:
    return ("input.png", png_bytes(width, height, **kwargs), "image/png")


def _encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


@functools.lru_cache(maxsize=1)
def _noisy_png() -> bytes:
    # Random pixels do not compress, so half the file cuts deep into the image data.
    return _encoded(Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)), "PNG")


@functools.lru_cache(maxsize=1)
def _bomb_png() -> bytes:
    # 400 million pixels in a few dozen KB: a 1-bit blank image compresses to almost nothing.
    return _encoded(Image.new("1", (20000, 20000)), "PNG")


def image_call(client: OpenAI, op: str, **kwargs: Any) -> Any:
    """One generation or edit; ``prompt=None`` leaves the prompt out of the request altogether."""
    prompt = kwargs.pop("prompt", PROMPT)
    kwargs["prompt"] = openai.omit if prompt is None else prompt
    if op == GEN:
        return client.images.generate(**kwargs)
    kwargs.setdefault("image", _png())
    return client.images.edit(**kwargs)


def check_error(err: openai.APIStatusError, status: int, *, type: str, param: str | None, code: str | None,
                contains: tuple[str, ...] = ()) -> dict[str, Any]:
    """The whole refusal, wire body and headers included; returns the inner error object."""
    assert err.status_code == status
    body = err.body
    assert isinstance(body, dict), body
    assert body["type"] == type, body
    assert body["param"] == param, body
    assert body["code"] == code, body
    message = body["message"]
    assert isinstance(message, str) and message.strip(), body
    for fragment in contains:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"
    wire = err.response.json()
    assert set(wire) == {"error"}, wire
    assert wire["error"] == body
    openapi.validate(wire, "ErrorResponse")
    request_id = err.response.headers.get("x-request-id")
    assert request_id and request_id.startswith("req_"), dict(err.response.headers)
    assert err.request_id == request_id
    assert err.response.headers.get("x-should-retry") == "false"
    return body


def expect_400(call: Callable[[], Any], *, param: str | None, code: str | None,
               contains: tuple[str, ...] = ()) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    return check_error(info.value, 400, type="invalid_request_error", param=param, code=code, contains=contains)


# --- the parameter table: (operation, request, param, code, what the message must say) -----------------------------

_SUPPORTED_GPT_SIZES = ("'1024x1024'", "'1536x1024'", "'1024x1536'", "'auto'")
_GPT_QUALITIES = ("'low'", "'medium'", "'high'", "'auto'")


def _both(case_id: str, request: dict[str, Any], param: str, code: str, contains: tuple[str, ...] = ()) -> list:
    """The same refusal for generations and for edits."""
    return [
        pytest.param(op, request, param, code, contains, id=f"{op}-{case_id}")
        for op in (GEN, EDIT)
    ]


def _one(op: str, case_id: str, request: dict[str, Any], param: str, code: str,
         contains: tuple[str, ...] = ()) -> list:
    return [pytest.param(op, request, param, code, contains, id=f"{op}-{case_id}")]


REFUSALS = [
    # model
    *_both("unknown-model", {"model": "gpt-image-9"}, "model", "model_not_found",
           ("'gpt-image-9'", "'gpt-image-1'", "/v1/models")),
    *_one(EDIT, "dall-e-3-cannot-edit", {"model": "dall-e-3"}, "model", "invalid_value",
          ("dall-e-3", "does not support image edits", "'gpt-image-1'")),
    # n
    *_both("n-0", {"model": "gpt-image-1", "n": 0}, "n", "invalid_value", ("below minimum", ">= 1")),
    *_both("n-11", {"model": "gpt-image-1", "n": 11}, "n", "invalid_value", ("above maximum", "<= 10", "11")),
    *_one(GEN, "n-2-dall-e-3", {"model": "dall-e-3", "n": 2}, "n", "invalid_value", ("above maximum", "<= 1")),
    *_one(GEN, "n-5-gpt-4o-image", {"model": "gpt-4o-image", "n": 5}, "n", "invalid_value", ("above maximum", "<= 4")),
    # prompt
    *_both("prompt-missing", {"model": "gpt-image-1", "prompt": None}, "prompt", "missing_required_parameter",
           ("'prompt'",)),
    *_both("prompt-empty", {"model": "gpt-image-1", "prompt": ""}, "prompt", "invalid_value", ("empty",)),
    *_both("prompt-whitespace", {"model": "gpt-image-1", "prompt": " \t\n  "}, "prompt", "invalid_value", ("empty",)),
    *_both("prompt-32001-gpt", {"model": "gpt-image-1", "prompt": "a" * 32001}, "prompt", "string_above_max_length",
           ("32000", "32001")),
    *_both("prompt-32001-gpt-image-2", {"model": "gpt-image-2", "prompt": "a" * 32001}, "prompt",
           "string_above_max_length", ("32000",)),
    *_one(GEN, "prompt-4001-dall-e-3", {"model": "dall-e-3", "prompt": "a" * 4001}, "prompt",
          "string_above_max_length", ("4000", "4001")),
    *_both("prompt-1001-dall-e-2", {"model": "dall-e-2", "prompt": "a" * 1001}, "prompt", "string_above_max_length",
           ("1000", "1001")),
    # size
    *_both("size-not-multiple-of-16", {"model": "gpt-image-2", "size": "1000x1000"}, "size", "invalid_value",
           ("1000x1000", "multiples of 16")),
    *_both("size-fixed-list", {"model": "gpt-image-1", "size": "512x512"}, "size", "invalid_value",
           ("512x512", *_SUPPORTED_GPT_SIZES)),
    *_one(GEN, "size-dall-e-3-list", {"model": "dall-e-3", "size": "1536x1024"}, "size", "invalid_value",
          ("'1024x1024'", "'1792x1024'", "'1024x1792'")),
    *_one(GEN, "size-auto-dall-e-3", {"model": "dall-e-3", "size": "auto"}, "size", "invalid_value",
          ("Invalid size 'auto'", "'1024x1024'", "'1792x1024'", "'1024x1792'.")),  # as upstream: no 'auto'
    *_both("size-auto-dall-e-2", {"model": "dall-e-2", "size": "auto"}, "size", "invalid_value",
           ("Invalid size 'auto'", "'256x256'", "'512x512'", "'1024x1024'.")),
    *_both("size-edge-over-3840", {"model": "gpt-image-2", "size": "4000x1024"}, "size", "invalid_value",
           ("longest edge", "3840")),
    *_both("size-ratio-over-3", {"model": "gpt-image-2", "size": "3840x1024"}, "size", "invalid_value",
           ("ratio", "3:1")),
    *_both("size-too-few-pixels", {"model": "gpt-image-2", "size": "512x512"}, "size", "invalid_value",
           ("pixel", "655,360", "262,144")),
    *_both("size-too-many-pixels", {"model": "gpt-image-2", "size": "3840x2176"}, "size", "invalid_value",
           ("pixel", "8,294,400")),
    *_both("size-aspect-ratio-text", {"model": "gpt-image-2", "size": "9:16"}, "size", "invalid_value",
           ("'9:16'", "WIDTHxHEIGHT")),
    # As OpenAI: a lower-case x and nothing around the numbers (a client that works here works there).
    *_both("size-capital-x", {"model": "gpt-image-1", "size": "1024X1024"}, "size", "invalid_value",
           ("'1024X1024'", *_SUPPORTED_GPT_SIZES)),
    *_both("size-spaces", {"model": "gpt-image-2", "size": "2048 x 1152"}, "size", "invalid_value",
           ("'2048 x 1152'", "WIDTHxHEIGHT")),
    *_both("size-times-sign", {"model": "gpt-image-2", "size": "2048×1152"}, "size", "invalid_value",
           ("'2048×1152'", "WIDTHxHEIGHT")),
    # quality
    *_both("quality-hd-gpt-image-1", {"model": "gpt-image-1", "quality": "hd"}, "quality", "invalid_value",
           ("'hd'", *_GPT_QUALITIES)),
    *_one(GEN, "quality-high-dall-e-3", {"model": "dall-e-3", "quality": "high"}, "quality", "invalid_value",
          ("'high'", "'standard'", "'hd'")),
    *_both("quality-xhigh-gpt-image-2", {"model": "gpt-image-2", "quality": "xhigh"}, "quality", "invalid_value",
           ("'xhigh'", *_GPT_QUALITIES)),
    # background and output format
    *_both("transparent-jpeg", {"model": "gpt-image-1", "background": "transparent", "output_format": "jpeg"},
           "background", "invalid_value", ("'png'", "'webp'", "'jpeg'")),
    *_one(GEN, "transparent-dall-e-3", {"model": "dall-e-3", "background": "transparent"}, "background",
          "unknown_parameter", ("'background'", "dall-e-3")),
    *_both("output-format-gif", {"model": "gpt-image-1", "output_format": "gif"}, "output_format", "invalid_value",
           ("'gif'", "'png'", "'jpeg'", "'webp'")),
    # output_compression
    *_both("compression-minus-1", {"model": "gpt-image-1", "output_format": "jpeg", "output_compression": -1},
           "output_compression", "invalid_value", ("below minimum", ">= 0")),
    *_both("compression-101", {"model": "gpt-image-1", "output_format": "jpeg", "output_compression": 101},
           "output_compression", "invalid_value", ("above maximum", "<= 100")),
    # parameters the model does not take
    *_one(GEN, "style-on-gpt-image-1", {"model": "gpt-image-1", "style": "vivid"}, "style", "unknown_parameter",
          ("'style'", "gpt-image-1")),
    *_one(EDIT, "style-on-gpt-image-1", {"model": "gpt-image-1", "extra_body": {"style": "vivid"}}, "style",
          "unknown_parameter", ("'style'", "gpt-image-1")),
    *_one(EDIT, "input-fidelity-on-gpt-image-2", {"model": "gpt-image-2", "input_fidelity": "high"},
          "input_fidelity", "unknown_parameter", ("input_fidelity",)),
    *_one(EDIT, "input-fidelity-high-on-mini", {"model": "gpt-image-1-mini", "input_fidelity": "high"},
          "input_fidelity", "invalid_value", ("'high'", "'low'")),
    *_one(GEN, "input-fidelity-on-generations", {"model": "gpt-image-1", "extra_body": {"input_fidelity": "high"}},
          "input_fidelity", "unknown_parameter", ("'input_fidelity'",)),
    *_both("quality-on-gpt-4o-image", {"model": "gpt-4o-image", "quality": "high"}, "quality", "unknown_parameter",
           ("'quality'", "gpt-4o-image")),
    *_both("complexity-on-gpt-image-2", {"model": "gpt-image-2", "extra_body": {"complexity": "low"}}, "complexity",
           "unknown_parameter", ("'complexity'",)),
    *_one(EDIT, "json-images-field-in-a-form", {"model": "gpt-image-1", "extra_body": {"images": "foo"}}, "images",
          "unknown_parameter", ("'images'", "'image[]'")),  # it was taken, and silently ignored
    *_both("unknown-field", {"model": "gpt-image-1", "extra_body": {"definitely_not_a_param": 1}},
           "definitely_not_a_param", "unknown_parameter", ("'definitely_not_a_param'",)),
    # wrong types the SDK lets through extra_body
    *_both("n-as-word", {"model": "gpt-image-1", "extra_body": {"n": "two"}}, "n", "invalid_type",
           ("'n'", "integer", "string")),
    *_one(EDIT, "compression-as-word", {"model": "gpt-image-1", "extra_body": {"output_compression": "high"}},
          "output_compression", "invalid_type", ("integer",)),
    # edit inputs
    *_one(EDIT, "mask-size-mismatch", {"model": "gpt-image-1", "mask": ("mask.png", mask_bytes(32, 32, (0, 0, 8, 8)),
                                                                        "image/png")},
          "mask", "invalid_image", ("32x32", "64x64", "same dimensions")),
    *_one(EDIT, "mask-without-alpha", {"model": "gpt-image-1", "mask": ("mask.png", png_bytes(64, 64, mode="RGB"),
                                                                        "image/png")},
          "mask", "invalid_image", ("alpha",)),
    *_one(EDIT, "image-is-text", {"model": "gpt-image-1", "image": ("notes.png", b"just some text\n" * 20,
                                                                    "image/png")},
          "image", "invalid_image", ("PNG, JPEG or WebP",)),
    *_one(EDIT, "image-empty-file", {"model": "gpt-image-1", "image": ("empty.png", b"", "image/png")},
          "image", "invalid_image", ("empty",)),
    *_one(EDIT, "image-gif", {"model": "gpt-image-1",
                              "image": ("a.gif", _encoded(Image.new("P", (64, 64)), "GIF"), "image/gif")},
          "image", "invalid_image", ("GIF", "png, jpeg and webp")),
    *_one(EDIT, "too-many-images", {"model": "gpt-image-1", "image": [_png() for _ in range(17)]},
          "image[]", "invalid_value", ("at most 16", "17")),
    *_one(EDIT, "dall-e-2-two-images", {"model": "dall-e-2", "image": [_png(), _png()]},
          "image[]", "invalid_value", ("at most 1 input image", "2")),
    *_one(EDIT, "dall-e-2-non-square", {"model": "dall-e-2", "size": "256x256", "image": _png(64, 32)},
          "image", "invalid_value", ("square", "64x32")),
    *_one(EDIT, "dall-e-2-jpeg", {"model": "dall-e-2", "size": "256x256",
                                  "image": ("a.jpg", _encoded(Image.new("RGB", (64, 64)), "JPEG"), "image/jpeg")},
          "image", "invalid_value", ("square PNG", "jpeg")),
]


@pytest.mark.parametrize("op, request_kwargs, param, code, contains", REFUSALS)
def test_bad_parameter_is_a_400_naming_it(client, op, request_kwargs, param, code, contains):
    expect_400(lambda: image_call(client, op, **request_kwargs), param=param, code=code, contains=contains)


# --- uploads that are not usable images ---------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    pytest.param(lambda: _noisy_png()[: len(_noisy_png()) // 2], id="noisy-png-cut-in-half"),
    pytest.param(lambda: png_bytes(64, 64)[: len(png_bytes(64, 64)) // 2], id="small-png-cut-in-half"),
])
def test_truncated_png_is_refused(client, data):
    expect_400(
        lambda: client.images.edit(model="gpt-image-1", prompt=PROMPT, image=("cut.png", data(), "image/png")),
        param="image", code="invalid_image", contains=("truncated",),
    )


def test_decompression_bomb_is_refused_from_its_header(client):
    bomb = _bomb_png()
    assert len(bomb) < 200_000  # the point of a bomb: tiny on the wire
    body = expect_400(
        lambda: client.images.edit(model="gpt-image-1", prompt=PROMPT, image=("bomb.png", bomb, "image/png")),
        param="image", code="invalid_image", contains=("20000x20000", "pixels", "40,000,000"),
    )
    assert "400,000,000" in body["message"]


def test_decompression_bomb_as_mask_is_refused(client):
    expect_400(
        lambda: client.images.edit(model="gpt-image-1", prompt=PROMPT, image=_png(),
                                   mask=("bomb.png", _bomb_png(), "image/png")),
        param="mask", code="invalid_image", contains=("pixels",),
    )


def test_mask_must_be_a_png(client):
    webp_mask = _encoded(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "WEBP")
    expect_400(
        lambda: client.images.edit(model="gpt-image-1", prompt=PROMPT, size="1024x1024", quality="low",
                                   image=_png(), mask=("mask.webp", webp_mask, "image/webp")),
        param="mask", code="invalid_image", contains=("PNG",),
    )


# --- wrong JSON types and bodies the SDK would never build (raw requests) ------------------------------------------


@pytest.mark.parametrize("field, value, expected", [
    ("n", "two", "an integer"),
    ("n", 1.5, "an integer"),
    ("n", True, "an integer"),
    ("size", 5, "a string"),
    ("size", ["1024x1024"], "a string"),
    ("prompt", 123, "a string"),
    ("model", 7, "a string"),
    ("quality", {"level": "low"}, "a string"),
    ("stream", "yes", "a boolean"),
    ("output_compression", "90", "an integer"),
])
def test_wrong_json_type_is_invalid_type(client, field, value, expected):
    body = {"model": "gpt-image-1", "prompt": PROMPT, field: value}
    expect_400(
        lambda: client.post("/images/generations", body=body, cast_to=httpx.Response),
        param=field, code="invalid_type", contains=(f"'{field}'", expected),
    )


def test_raw_httpx_wrong_types_carry_request_id(server):
    """The same refusals without the SDK in between: status, envelope and header straight off the wire."""
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
        for field, value in (("n", "two"), ("size", 5)):
            response = http.post("/images/generations", json={"model": "gpt-image-1", "prompt": PROMPT, field: value})
            assert response.status_code == 400
            assert response.headers["x-request-id"].startswith("req_")
            body = response.json()
            openapi.validate(body, "ErrorResponse")
            assert body["error"]["type"] == "invalid_request_error"
            assert body["error"]["param"] == field
            assert body["error"]["code"] == "invalid_type"


def test_edit_without_image_is_missing_parameter(server):
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    fields = [("prompt", (None, PROMPT)), ("model", (None, "gpt-image-1"))]
    response = httpx.post(f"{server.base_url}/images/edits", headers=headers, files=fields, timeout=30)
    assert response.status_code == 400
    assert response.headers["x-request-id"].startswith("req_")
    body = response.json()
    openapi.validate(body, "ErrorResponse")
    assert body["error"]["param"] == "image"
    assert body["error"]["code"] == "missing_required_parameter"


def test_an_unknown_file_part_is_an_unknown_parameter(server):
    # What the SDK sends for gpt-image-2.6's `markup`, which this catalog does not take.
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    fields = [("prompt", (None, PROMPT)), ("model", (None, "gpt-image-1")),
              ("image", ("a.png", png_bytes(256, 256), "image/png")),
              ("markup", ("m.png", png_bytes(256, 256), "image/png"))]
    response = httpx.post(f"{server.base_url}/images/edits", headers=headers, files=fields, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("unknown_parameter", "markup", "invalid_request_error")
    assert error["message"].startswith("Unknown parameter: 'markup'.")


def test_json_edit_with_empty_images_names_images(client):
    expect_400(
        lambda: client.post("/images/edits", body={"model": "gpt-image-1", "prompt": PROMPT, "images": []},
                            cast_to=httpx.Response),
        param="images", code="missing_required_parameter", contains=("'images'",),
    )


# --- JSON edits: each refusal names the item at fault ---------------------------------------------------------------


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _json_edit(client: OpenAI, **body: Any) -> httpx.Response:
    body = {"model": "gpt-image-1", "prompt": PROMPT, "size": "1024x1024", "quality": "low",
            "images": [{"image_url": _data_url(png_bytes(64, 64))}], **body}
    return client.post("/images/edits", body=body, cast_to=httpx.Response)


@pytest.mark.parametrize("model, named", [(["gpt-image-1"], "an array"), ({"id": "gpt-image-1"}, "an object")])
def test_json_edit_model_of_the_wrong_type_is_invalid_type(client, model, named):
    # It was a 500: the catalog was asked for an unhashable model before anything checked its type.
    expect_400(lambda: _json_edit(client, model=model), param="model", code="invalid_type",
               contains=("'model'", "expected a string", named))


def test_json_edit_null_file_id_is_unset(client):
    # Generated clients send every unset field as null: only a file_id with a value is the unsupported reference.
    response = _json_edit(client, images=[{"image_url": _data_url(png_bytes(64, 64)), "file_id": None}],
                          mask={"image_url": _data_url(mask_bytes(64, 64, (0, 0, 32, 32))), "file_id": None})
    assert response.status_code == 200
    assert decode_b64(response.json()["data"][0]["b64_json"]).size == (1024, 1024)
    expect_400(lambda: _json_edit(client, images=[{"image_url": _data_url(png_bytes(64, 64)), "file_id": "file-1"}]),
               param="images[0]", code="invalid_value", contains=("file_id",))


_GOOD = {"image_url": _data_url(png_bytes(64, 64))}


@pytest.mark.parametrize("body, param, code, contains", [
    pytest.param({"images": [_GOOD, {"image_url": _data_url(b"just some text")}]}, "images[1].image_url",
                 "invalid_image", ("'images[1].image_url'", "PNG, JPEG or WebP"), id="second-image-not-an-image"),
    pytest.param({"images": [_GOOD, {"image_url": _data_url(_noisy_png()[:4000])}]}, "images[1].image_url",
                 "invalid_image", ("truncated",), id="second-image-truncated"),
    pytest.param({"images": [{"image_url": "data:image/png;base64,!!!!"}]}, "images[0].image_url",
                 "invalid_value", ("'images[0].image_url'", "base64 is invalid"), id="bad-base64"),
    pytest.param({"images": [_GOOD, {"image_url": "data:image/png;base64,iVBORw0KGgo-_"}]}, "images[1].image_url",
                 "invalid_value", ("base64 is invalid",), id="url-safe-base64-in-second"),
    pytest.param({"mask": {"image_url": "data:image/png;base64,!!!!"}}, "mask.image_url", "invalid_value",
                 ("'mask.image_url'", "base64 is invalid"), id="mask-bad-base64"),
    pytest.param({"mask": {"image_url": _data_url(b"just some text")}}, "mask.image_url", "invalid_image",
                 ("PNG, JPEG or WebP",), id="mask-not-an-image"),
    pytest.param({"mask": {"image_url": _data_url(mask_bytes(32, 32, (0, 0, 8, 8)))}}, "mask.image_url",
                 "invalid_image", ("same dimensions",), id="mask-size-mismatch"),
    pytest.param({"mask": {"image_url": _data_url(png_bytes(64, 64, mode="RGB"))}}, "mask.image_url",
                 "invalid_image", ("alpha",), id="mask-without-alpha"),
])
def test_json_edit_refusal_names_the_image_at_fault(client, body, param, code, contains):
    expect_400(lambda: _json_edit(client, **body), param=param, code=code, contains=contains)


def test_json_edit_images_together_are_named_images(client):
    big = _data_url(_encoded(Image.new("L", (6000, 6000)), "PNG"))
    expect_400(lambda: _json_edit(client, images=[{"image_url": big}] * 3), param="images", code="image_too_large",
               contains=("pixels together",))


def test_json_edit_base64_wrapped_in_lines_is_accepted(client):
    encoded = base64.encodebytes(png_bytes(64, 64)).decode()  # MIME style: a newline every 76 characters
    assert "\n" in encoded.strip()
    response = _json_edit(client, images=[{"image_url": "data:image/png;base64," + encoded}])
    assert response.status_code == 200


# --- values at the edge of what is allowed are accepted ----------------------------------------------------------


def test_free_form_size_is_honoured_exactly(client):
    raw = client.images.with_raw_response.generate(model="gpt-image-2", prompt=PROMPT, size="2048x1152",
                                                   quality="low")
    assert raw.headers["x-request-id"].startswith("req_")
    result = raw.parse()
    assert result.size == "2048x1152"
    assert decode_b64(result.data[0].b64_json).size == (2048, 1152)


def test_free_form_size_on_edits(client):
    result = client.images.edit(model="gpt-image-2", prompt=PROMPT, image=_png(), size="2048x1152", quality="low")
    assert result.size == "2048x1152"
    assert decode_b64(result.data[0].b64_json).size == (2048, 1152)


def test_xhigh_quality_on_a_model_that_takes_it(client):
    result = client.images.generate(model="gpt-image-2.5-sunburst", prompt=PROMPT, size="1024x1024", quality="xhigh")
    assert result.quality == "xhigh"
    assert decode_b64(result.data[0].b64_json).size == (1024, 1024)


def test_output_compression_100_with_png_is_accepted(client):
    raw = client.images.with_raw_response.generate(model="gpt-image-1", prompt=PROMPT, size="1024x1024",
                                                   quality="low", output_format="png", output_compression=100)
    assert raw.status_code == 200
    result = raw.parse()
    assert result.output_format == "png"
    assert decode_b64(result.data[0].b64_json).format == "PNG"


def test_prompt_at_the_limit_is_accepted(client):
    result = client.images.generate(model="dall-e-2", prompt="a" * 1000, size="256x256", response_format="b64_json")
    assert decode_b64(result.data[0].b64_json).size == (256, 256)


def test_transparent_png_is_accepted(client):
    result = client.images.generate(model="gpt-image-1", prompt=PROMPT, size="1024x1024", quality="low",
                                    background="transparent", output_format="png")
    assert result.background == "transparent"
    assert decode_b64(result.data[0].b64_json).mode == "RGBA"


def test_sixteen_images_and_a_matching_mask_are_accepted(client):
    result = client.images.edit(model="gpt-image-1", prompt=PROMPT, size="1024x1024", quality="low",
                                image=[_png() for _ in range(16)], mask=("mask.png", mask_bytes(64, 64, (0, 0, 32, 32)),
                                                                         "image/png"))
    assert decode_b64(result.data[0].b64_json).size == (1024, 1024)


@pytest.mark.parametrize("mode, opaque, transparent", [("RGB", (255, 255, 255), (0, 0, 0)), ("L", 255, 0)])
def test_mask_with_trns_transparency_repaints_its_transparent_area(client, mode, opaque, transparent):
    """A PNG without an alpha channel whose tRNS chunk names a transparent colour is a mask (it was refused as
    having no alpha), and its pixels of that colour are the area repainted."""
    mask = Image.new(mode, (1024, 1024), opaque)
    mask.paste(transparent, (0, 0, 512, 1024))  # left half transparent: repaint it
    base = png_bytes(1024, 1024, (30, 160, 60, 255))
    result = client.images.edit(
        model="gpt-image-1.5", prompt="a purple sky with stars", image=("base.png", base, "image/png"),
        mask=("mask.png", _encoded_png(mask, transparency=transparent), "image/png"), size="1024x1024",
        quality="low",
    )
    image = decode_b64(result.data[0].b64_json).convert("RGB")
    diff = ImageChops.difference(image, Image.new("RGB", (1024, 1024), (30, 160, 60)))
    assert max(ImageStat.Stat(diff.crop((700, 100, 1000, 400))).mean) < 8  # kept
    assert sum(ImageStat.Stat(diff.crop((40, 40, 470, 980))).mean) / 3 > 30  # repainted


def _encoded_png(image: Image.Image, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **options)
    return out.getvalue()


def test_many_large_inputs_are_refused_before_decoding(client):
    """Sixteen blank 6000x6000 PNGs are a few MB on the wire and gigabytes decoded: the total is bounded first."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buf, "PNG", optimize=True)
    blank = buf.getvalue()
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.edit(model="gpt-image-1", prompt="x", image=[(f"{i}.png", blank, "image/png") for i in range(16)])
    assert exc.value.body["code"] == "image_too_large"
    assert "pixels together" in exc.value.body["message"]
