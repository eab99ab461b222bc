"""The images API through the official openai SDK against a live server: what a user would check."""

from __future__ import annotations

import base64
import io
import time

import httpx
import pytest
from PIL import Image, ImageChops, ImageStat

from tests import openapi
from tests.cycles import runs_freed_without_the_cyclic_collector
from tests.image_host import image_host
from tests.imaging_helpers import decode, decode_b64, mask_bytes, png_bytes
from tests.servers import TEST_KEY, start_server


def _png(width: int, height: int, color=(40, 120, 200, 255)) -> tuple[str, bytes, str]:
    return ("input.png", png_bytes(width, height, color), "image/png")


# --- generations, one case per model family ------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, size, quality, expected_size, expected_quality, output_tokens",
    [
        ("gpt-image-1", "1024x1536", "high", (1024, 1536), "high", 6240),
        ("gpt-image-1", "1536x1024", "low", (1536, 1024), "low", 400),
        ("gpt-image-1-mini", "1024x1024", "medium", (1024, 1024), "medium", 1056),
        ("gpt-image-1.5", "1024x1024", "auto", (1024, 1024), "medium", 1056),
        ("chatgpt-image-latest", "1536x1024", "high", (1536, 1024), "high", 6208),
        ("gpt-image-2", "2048x1152", "low", (2048, 1152), "low", 157),
        ("gpt-image-2", "1024x1024", "high", (1024, 1024), "high", 7024),
        ("gpt-image-2-2026-04-21", "1536x1024", "medium", (1536, 1024), "medium", 1372),
        ("gpt-image-2.5-sunburst", "1024x1024", "xhigh", (1024, 1024), "xhigh", 3122),
        ("gpt-image-2.5-flare", "1024x1024", "medium", (1024, 1024), "medium", 439),
        ("gpt-image-2.6-sunburst", "1024x1024", "low", (1024, 1024), "low", 196),
        ("gpt-image-2.6-flare", "1024x1024", "low", (1024, 1024), "low", 196),
    ],
)
def test_gpt_models_generate_exact_size_and_usage(client, model, size, quality, expected_size, expected_quality, output_tokens):
    raw = client.images.with_raw_response.generate(model=model, prompt="a lighthouse at dawn", size=size, quality=quality)
    assert raw.headers["x-request-id"].startswith("req_")
    result = raw.parse()
    body = raw.http_response.json()
    relax = ("size", "quality") if expected_quality in ("xhigh", "max") else ("size",)
    openapi.validate(body, "ImagesResponse", relax=relax)
    assert set(body) == {"created", "data", "background", "output_format", "quality", "size", "usage"}
    image = decode_b64(result.data[0].b64_json)
    assert image.size == expected_size
    assert image.format == "PNG"
    assert result.size == f"{expected_size[0]}x{expected_size[1]}"
    assert result.quality == expected_quality
    assert result.background == "opaque" and result.output_format == "png"
    assert result.usage.output_tokens == output_tokens
    details = result.usage.output_tokens_details  # typed by the SDK since gpt-image-1.5
    assert (details.image_tokens, details.text_tokens) == (output_tokens, 0)
    assert result.usage.input_tokens_details.image_tokens == 0
    assert result.usage.input_tokens == result.usage.input_tokens_details.text_tokens > 0
    assert result.usage.total_tokens == result.usage.input_tokens + output_tokens
    assert not result.data[0].b64_json.startswith("data:")


def test_complexity_is_accepted_by_2_6_only(client):
    ok = client.images.generate(model="gpt-image-2.6-flare", prompt="a kite", size="1024x1024", quality="low",
                                extra_body={"complexity": "low"})
    assert decode_b64(ok.data[0].b64_json).size == (1024, 1024)


def test_chat_image_models_have_no_usage(client):
    raw = client.images.with_raw_response.generate(model="gpt-4o-image-vip", prompt="redesign poster, 2:3", n=1, size="1024x1536")
    body = raw.http_response.json()
    openapi.validate(body, "ImagesResponse")
    assert "usage" not in body and "quality" not in body
    assert decode_b64(body["data"][0]["b64_json"]).size == (1024, 1536)


@pytest.mark.parametrize("model, size", [("dall-e-2", "256x256"), ("dall-e-2", "512x512"), ("dall-e-3", "1792x1024")])
def test_dall_e_defaults_to_a_downloadable_url(client, model, size):
    raw = client.images.with_raw_response.generate(model=model, prompt="an owl", size=size)
    body = raw.http_response.json()
    openapi.validate(body, "ImagesResponse", relax=("size",))
    assert set(body) == {"created", "data"}
    item = body["data"][0]
    assert "b64_json" not in item
    if model == "dall-e-3":
        assert item["revised_prompt"] == "an owl"
    downloaded = httpx.get(item["url"])
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"] == "image/png"
    assert decode(downloaded.content).size == tuple(int(v) for v in size.split("x"))


def test_dall_e_b64_on_request(client):
    result = client.images.generate(model="dall-e-2", prompt="an owl", size="256x256", response_format="b64_json")
    assert decode_b64(result.data[0].b64_json).size == (256, 256)


def test_n_images_differ(client):
    result = client.images.generate(model="gpt-image-1", prompt="three different cats", n=3, size="1024x1024", quality="low")
    assert len(result.data) == 3
    images = [decode_b64(d.b64_json) for d in result.data]
    assert len({img.tobytes() for img in images}) == 3
    assert result.usage.output_tokens == 3 * 272


def test_same_prompt_is_deterministic(client):
    a = client.images.generate(model="gpt-image-1", prompt="a red boat", size="1024x1024", quality="low")
    b = client.images.generate(model="gpt-image-1", prompt="a red boat", size="1024x1024", quality="low")
    assert decode_b64(a.data[0].b64_json).tobytes() == decode_b64(b.data[0].b64_json).tobytes()


# --- formats, transparency, compression ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_transparent_background_has_real_alpha(client, fmt):
    result = client.images.generate(
        model="gpt-image-1.5", prompt="a sticker of a star", background="transparent", output_format=fmt,
        size="1024x1024", quality="low",
    )
    assert result.background == "transparent" and result.output_format == fmt
    image = decode_b64(result.data[0].b64_json)
    assert image.format == fmt.upper()
    assert image.mode == "RGBA"
    low, high = image.getchannel("A").getextrema()
    assert low == 0 and high == 255


def test_opaque_background_has_no_alpha(client):
    result = client.images.generate(model="gpt-image-1.5", prompt="a star", background="opaque", size="1024x1024", quality="low")
    assert decode_b64(result.data[0].b64_json).mode == "RGB"


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_output_compression_changes_lossy_formats(client, fmt):
    sizes = {}
    for compression in (10, 95):
        result = client.images.generate(
            model="gpt-image-1", prompt="a busy market street", output_format=fmt, output_compression=compression,
            size="1024x1024", quality="low",
        )
        data = base64.b64decode(result.data[0].b64_json)
        assert decode(data).format == fmt.upper()
        assert decode(data).size == (1024, 1024)
        sizes[compression] = len(data)
    assert sizes[10] < sizes[95]


def test_png_accepts_output_compression_without_effect(client):
    a = client.images.generate(model="gpt-image-1", prompt="a boat", output_format="png", output_compression=0,
                               size="1024x1024", quality="low")
    b = client.images.generate(model="gpt-image-1", prompt="a boat", output_format="png", output_compression=100,
                               size="1024x1024", quality="low")
    assert decode_b64(a.data[0].b64_json).tobytes() == decode_b64(b.data[0].b64_json).tobytes()


# --- size=auto -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, prompt, expected",
    [
        ("gpt-image-1", "redesign poster of the movie [Black Swan], 3D cartoon, smooth render, bright tone, 2:3 portrait.", "1024x1536"),
        ("gpt-image-1", "a wide landscape of mountains", "1536x1024"),
        ("gpt-image-1", "一只猫, 竖版", "1024x1536"),
        ("gpt-image-1", "一只猫, 横版", "1536x1024"),
        ("gpt-image-1", "a cat, square", "1024x1024"),
        ("gpt-image-1", "a cat", "1024x1024"),
        ("gpt-image-2", "a cinematic shot, 16:9", None),
        ("gpt-image-2", "a phone wallpaper 9:16", None),
    ],
)
def test_size_auto_follows_the_prompt_ratio(client, model, prompt, expected):
    result = client.images.generate(model=model, prompt=prompt, size="auto", response_format="b64_json")
    image = decode_b64(result.data[0].b64_json)
    produced = f"{image.width}x{image.height}"
    if model.startswith("gpt"):
        assert result.size == produced
    if expected:
        assert produced == expected
    else:
        ratio = 16 / 9 if "16:9" in prompt else 9 / 16
        assert abs(image.width / image.height - ratio) < 0.02
        assert image.width % 16 == 0 and image.height % 16 == 0
        assert 655_360 <= image.width * image.height <= 8_294_400


# --- url responses ---------------------------------------------------------------------------------------------


def test_url_response_for_gpt_models(client, server):
    result = client.images.generate(
        model="gpt-image-2", prompt="a glass of water", size="1536x1024", quality="low", output_format="webp",
        background="transparent", response_format="url",
    )
    url = result.data[0].url
    assert url.startswith(server.root + "/files/")
    assert result.data[0].b64_json is None
    response = httpx.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
    image = decode(response.content)
    assert image.size == (1536, 1024) and image.mode == "RGBA"
    assert image.getchannel("A").getextrema()[0] == 0


def test_dall_e_without_a_size_draws_its_default_whatever_the_prompt_says(client):
    """DALL·E has no size=auto upstream: a request without a size is 1024x1024 (and priced so), not a wide image
    read from 'wide' in the prompt."""
    result = client.images.generate(model="dall-e-3", prompt="a wide landscape photo of hills, 16:9",
                                    response_format="b64_json")
    assert decode_b64(result.data[0].b64_json).size == (1024, 1024)


def test_a_finished_request_leaves_no_run_for_the_cyclic_collector(client):
    """Refcounting alone frees a request's run and its megabytes of image once answered: a reference cycle (a
    cancelled task's traceback back to what refers to the task) kept runs until the cyclic collector came by,
    and doubled the relay's peak memory under load."""
    client.images.generate(model="gpt-image-1", prompt="warm up", size="1024x1024", quality="low")
    with runs_freed_without_the_cyclic_collector():
        for _ in range(3):
            client.images.generate(model="gpt-image-1", prompt="a red fox", size="1024x1024", quality="low")


def test_tampered_and_expired_urls_are_refused(client, server):
    result = client.images.generate(model="dall-e-2", prompt="a hill", size="256x256")
    url = httpx.URL(result.data[0].url)
    cache = httpx.get(url).headers["cache-control"]  # no longer than the link lives (an hour, here)
    assert cache.startswith("private, max-age=") and 3590 <= int(cache.rsplit("=", 1)[1]) <= 3600
    unsigned = str(url).split("&signature=")[0]
    for forged in ("0" * 43, "%C3%A9", "%FF"):  # not hex, not even ASCII: refused as any other forgery
        response = httpx.get(f"{unsigned}&signature={forged}")
        assert response.status_code == 403, forged
        assert response.json()["error"]["code"] == "invalid_signature"
    extended = url.copy_set_param("expires", str(int(url.params["expires"]) + 3600))
    assert httpx.get(extended).status_code == 403
    name = url.path.rsplit("/", 1)[-1]
    soon = int(time.time()) + 5
    signed = url.copy_set_param("expires", str(soon)).copy_set_param("signature",
                                                                      server.app.state.storage.signer.signature(name, soon))
    assert int(httpx.get(signed).headers["cache-control"].rsplit("=", 1)[1]) <= 5
    past = 1_000_000_000
    signature = server.app.state.storage.signer.signature(name, past)
    expired = url.copy_set_param("expires", str(past)).copy_set_param("signature", signature)
    response = httpx.get(expired)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "url_expired"


def test_janitor_removes_expired_images(tmp_path):
    from imagegate.storage import LocalStorage, UrlSigner

    storage = LocalStorage(tmp_path / "images", UrlSigner(b"k" * 32), ttl_seconds=60)
    import asyncio

    kept = asyncio.run(storage.put(b"fresh", "png"))
    gone = asyncio.run(storage.put(b"old", "png"))
    import os

    os.utime(storage.root / gone.name, (gone.expires_at - 3600, gone.expires_at - 3600))
    # Not ours, and old: a volume's lost+found, a link. Left alone, and the sweep goes past them.
    (storage.root / "lost+found").mkdir()
    os.utime(storage.root / "lost+found", (1, 1))
    (storage.root / "aaa.png").symlink_to(storage.root / kept.name)
    assert storage.sweep(now=gone.expires_at - 60) == 1
    assert (storage.root / kept.name).exists()
    assert not (storage.root / gone.name).exists()


# --- edits -----------------------------------------------------------------------------------------------------


def test_edit_single_image_keeps_it_recognisable(client):
    base = png_bytes(512, 512, (200, 30, 30, 255))
    result = client.images.edit(model="gpt-image-1", prompt="make it festive", image=("base.png", base, "image/png"),
                                size="1024x1024", quality="low")
    image = decode_b64(result.data[0].b64_json).convert("RGB")
    assert image.size == (1024, 1024)
    r, g, b = ImageStat.Stat(image.crop((100, 100, 400, 400))).mean
    assert r > g + 60 and r > b + 60  # the red base still shows
    assert result.usage.input_tokens_details.image_tokens == 194  # 65 + 129 for one 512-px tile


def test_edit_with_mask_repaints_only_the_transparent_area(client):
    base = png_bytes(1024, 1024, (30, 160, 60, 255))
    mask = mask_bytes(1024, 1024, (0, 0, 512, 1024))  # left half transparent: repaint it
    result = client.images.edit(
        model="gpt-image-1.5", prompt="a purple sky with stars", image=("base.png", base, "image/png"),
        mask=("mask.png", mask, "image/png"), size="1024x1024", quality="low",
    )
    image = decode_b64(result.data[0].b64_json).convert("RGB")
    original = Image.new("RGB", (1024, 1024), (30, 160, 60))
    diff = ImageChops.difference(image, original)
    kept = ImageStat.Stat(diff.crop((700, 100, 1000, 400))).mean
    repainted = ImageStat.Stat(diff.crop((40, 40, 470, 980))).mean
    assert max(kept) < 8
    assert sum(repainted) / 3 > 30


def test_edit_with_several_images_composites_them(client):
    images = [
        ("a.png", png_bytes(1024, 1024, (240, 240, 240, 255)), "image/png"),
        ("b.png", png_bytes(256, 256, (255, 0, 0, 255)), "image/png"),
        ("c.png", png_bytes(256, 256, (0, 0, 255, 255)), "image/png"),
    ]
    result = client.images.edit(model="gpt-image-2", prompt="a gift basket with all items", image=images,
                                size="1024x1024", quality="low")
    image = decode_b64(result.data[0].b64_json).convert("RGB")
    pixels = list(image.get_flattened_data()) if hasattr(image, "get_flattened_data") else list(image.getdata())
    reds = sum(1 for r, g, b in pixels if r > 200 and g < 60 and b < 60)
    blues = sum(1 for r, g, b in pixels if b > 200 and r < 60 and g < 60)
    assert reds > 1000 and blues > 1000
    # gpt-image-2 reads every input at high fidelity: 65 + 129*tiles + 4096 per square image.
    assert result.usage.input_tokens_details.image_tokens == 3 * (65 + 129 + 4096)


def test_edit_json_variant_with_data_urls(server):
    base = png_bytes(1024, 1024, (10, 10, 200, 255))
    mask = mask_bytes(1024, 1024, (512, 0, 1024, 1024))
    data_url = "data:image/png;base64," + base64.b64encode(base).decode()
    mask_url = "data:image/png;base64," + base64.b64encode(mask).decode()
    response = httpx.post(
        f"{server.base_url}/images/edits",
        headers={"Authorization": f"Bearer {TEST_KEY}"},
        json={"model": "gpt-image-1.5", "prompt": "add a moon", "images": [{"image_url": data_url}],
              "mask": {"image_url": mask_url}, "size": "1024x1024", "quality": "low"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    openapi.validate(body, "ImagesResponse")
    assert decode_b64(body["data"][0]["b64_json"]).size == (1024, 1024)


def test_edit_with_image_bracket_single_file_and_url(client):
    result = client.images.edit(model="dall-e-2", prompt="a hat", image=_png(256, 256), size="256x256")
    response = httpx.get(result.data[0].url)
    assert decode(response.content).size == (256, 256)


def test_edit_transparent_output_keeps_alpha(client):
    base = io.BytesIO()
    img = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
    img.paste((250, 200, 0, 255), (128, 128, 384, 384))
    img.save(base, "PNG")
    result = client.images.edit(model="gpt-image-1", prompt="make the square shiny", image=("s.png", base.getvalue(), "image/png"),
                                background="transparent", size="1024x1024", quality="low")
    image = decode_b64(result.data[0].b64_json)
    assert image.mode == "RGBA" and image.getchannel("A").getextrema() == (0, 255)


# --- models ----------------------------------------------------------------------------------------------------

ALL_MODELS = {
    "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "chatgpt-image-latest", "gpt-image-2", "gpt-image-2-2026-04-21",
    "gpt-image-2.5-sunburst", "gpt-image-2.5-flare", "gpt-image-2.5-sunburst-2026-09-08", "gpt-image-2.5-flare-2026-09-08",
    "gpt-image-2.6-sunburst", "gpt-image-2.6-flare", "gpt-4o-image", "gpt-4o-image-vip", "dall-e-2", "dall-e-3",
}


def test_models_list_and_get(client):
    models = {m.id: m for m in client.models.list()}
    assert ALL_MODELS <= set(models)
    caps = models["gpt-image-2"].model_extra["capabilities"]
    assert caps["sizes"]["rule"] == "free-form" and caps["sizes"]["multiple_of"] == 16
    assert "xhigh" in models["gpt-image-2.5-sunburst"].model_extra["capabilities"]["qualities"]
    assert models["dall-e-3"].model_extra["capabilities"]["operations"] == ["generate"]
    one = client.models.retrieve("gpt-image-1")
    assert one.id == "gpt-image-1" and one.object == "model"
    assert one.model_extra["capabilities"]["sizes"] == ["1024x1024", "1536x1024", "1024x1536"]


def test_healthz_needs_no_key(server):
    response = httpx.get(f"{server.root}/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


def test_janitor_spares_images_still_being_written(tmp_path):
    import time as _time

    from imagegate.storage import LocalStorage, UrlSigner

    storage = LocalStorage(tmp_path / "images", UrlSigner(b"k" * 32), ttl_seconds=60)
    partial = storage.root / "0123456789abcdef0123456789abcdef.part"
    partial.write_bytes(b"half an image")  # mtime is now: not yet stamped with its expiry
    assert storage.sweep(now=_time.time() + 5) == 0 and partial.exists()
    assert storage.sweep(now=_time.time() + 7200) == 1  # abandoned for over an hour: gone


def _json_edit(base_url: str, images: list[str], model: str | None = "gpt-image-1") -> httpx.Response:
    body = {"prompt": "restyle", "quality": "low", "size": "1024x1024", "images": [{"image_url": url} for url in images]}
    if model is not None:
        body["model"] = model
    return httpx.post(f"{base_url}/images/edits", headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=60,
                      json=body)


def test_json_edits_take_image_urls_as_openai_does(server, tmp_path):
    with image_host() as host:
        refused = _json_edit(server.base_url, [host.url])  # loopback: not fetched unless the operator allows it
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "images[0].image_url"
        assert "private or loopback" in refused.json()["error"]["message"]
        live = start_server(tmp_path, allow_private_image_urls=True)
        try:
            answer = _json_edit(live.base_url, [host.url, host.url])
            assert answer.status_code == 200, answer.text
            assert len(host.hits) == 2
            assert decode_b64(answer.json()["data"][0]["b64_json"]).size == (1024, 1024)
            assert answer.json()["usage"]["input_tokens_details"]["image_tokens"] > 0  # both references counted
        finally:
            live.stop()


def test_referenced_images_share_one_deadline(tmp_path):
    live = start_server(tmp_path, allow_private_image_urls=True, image_fetch_timeout_seconds=1.2)
    try:
        with image_host(delay=0.5) as host:
            # One after another they would need 1.5 s of the 1.2 s they have together: they are fetched at once.
            answer = _json_edit(live.base_url, [host.url] * 3)
            assert answer.status_code == 200, answer.text
        with image_host(delay=3) as host:
            answer = _json_edit(live.base_url, [host.url])
            error = answer.json()["error"]
            assert answer.status_code == 400 and error["param"] == "images[0].image_url", error
            assert error["code"] == "image_fetch_timeout" and "1.2 s" in error["message"]  # the one deadline's
    finally:
        live.stop()


def test_referenced_images_are_refused_as_soon_as_their_sum_is_over_the_limit(tmp_path):
    """Counted as the bytes arrive, not once every body is in memory: a body that never ends is cut off at the
    limit of the sum (without it, it would be read to max_image_bytes or until the deadline)."""
    live = start_server(tmp_path, allow_private_image_urls=True, max_request_bytes=1024 * 1024)
    try:
        with image_host() as host:
            answer = _json_edit(live.base_url, [host.url, host.endless_url])
        error = answer.json()["error"]
        assert answer.status_code == 400, error
        assert (error["code"], error["param"]) == ("image_too_large", "images[1].image_url")
        assert "add up to more than 1,048,576 bytes" in error["message"]
    finally:
        live.stop()


@pytest.mark.parametrize("model, code, says", [
    ("no-such-model", "model_not_found", "no-such-model"),
    ("dall-e-3", "invalid_value", "dall-e-3"),  # it makes no edits
])
def test_a_json_edit_for_a_model_that_cannot_take_it_fetches_nothing(tmp_path, model, code, says):
    live = start_server(tmp_path, allow_private_image_urls=True)
    try:
        with image_host() as host:
            answer = _json_edit(live.base_url, [host.url], model=model)
            error = answer.json()["error"]
            assert answer.status_code in (400, 404) and error["code"] == code and error["param"] == "model", error
            assert says in error["message"] and host.hits == []
    finally:
        live.stop()


def test_too_many_image_urls_are_refused_before_any_fetch(server):
    with image_host() as host:
        answer = _json_edit(server.base_url, [host.url] * 17)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "images"
        assert host.hits == []


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_unmasked_transparent_edit_of_an_opaque_image_cuts_out_the_background(client, fmt):
    base = png_bytes(1024, 1024, (40, 120, 200), mode="RGB")  # fully opaque: no alpha channel at all
    result = client.images.edit(model="gpt-image-1.5", prompt="make it a sticker", image=("base.png", base, "image/png"),
                                background="transparent", output_format=fmt, size="1024x1024", quality="low")
    assert result.background == "transparent" and result.output_format == fmt
    image = decode_b64(result.data[0].b64_json)
    assert image.format == fmt.upper() and image.size == (1024, 1024)
    assert image.mode == "RGBA"  # webp keeps its alpha channel
    alpha = image.getchannel("A")
    assert alpha.getextrema() == (0, 255)
    hist = alpha.histogram()
    assert hist[0] > 0.1 * 1024 * 1024 and hist[255] > 0.1 * 1024 * 1024  # a real cut-out, not a few pixels
