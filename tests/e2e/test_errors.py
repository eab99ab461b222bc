"""Every failure on every route leaves as OpenAI's error envelope, checked with raw httpx straight off the wire.

The envelope is exactly ``{"error": {"message", "type", "param", "code"}}``, valid against OpenAI's published
``ErrorResponse``; every response carries ``x-request-id``; client errors say ``x-should-retry: false`` so the SDK
does not retry them; and no response is ever FastAPI's ``{"detail": ...}``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest

from tests import openapi
from tests.imaging_helpers import decode, png_bytes
from tests.servers import TEST_KEY, start_server

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
PROMPT = "a lighthouse at dawn"
SMALL_LIMIT = 100_000


def assert_envelope(response: httpx.Response, status: int, *, code: str | None, param: str | None = None,
                    type: str = "invalid_request_error") -> dict[str, Any]:
    """The whole error response; returns the inner error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    request_id = response.headers.get("x-request-id")
    assert request_id and request_id.startswith("req_"), dict(response.headers)
    body = response.json()
    assert "detail" not in body, body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"].strip()
    assert error["type"] == type, error
    assert error["code"] == code, error
    assert error["param"] == param, error
    openapi.validate(body, "ErrorResponse")
    if status < 500 and status not in (408, 409, 429):
        assert response.headers.get("x-should-retry") == "false"
    return error


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("small"), max_request_bytes=SMALL_LIMIT)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory):
    """A server of its own, so that breaking its gateway cannot disturb the shared one."""
    live = start_server(tmp_path_factory.mktemp("broken"))
    yield live
    live.stop()


# --- every route ---------------------------------------------------------------------------------------------------

V1_ROUTES = [
    ("POST", "/v1/images/generations"),
    ("POST", "/v1/images/edits"),
    ("POST", "/v1/images/variations"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/gpt-image-1"),
]


@pytest.mark.parametrize("method, path", V1_ROUTES)
@pytest.mark.parametrize("authorization, code", [
    pytest.param(None, "missing_api_key", id="missing"),
    pytest.param("Bearer sk-wrong-key-0000000000", "invalid_api_key", id="wrong"),
    pytest.param(f"Bearer {TEST_KEY}x", "invalid_api_key", id="key-plus-one"),
    pytest.param(f"Basic {TEST_KEY}", "invalid_authorization_header", id="not-bearer"),
])
def test_every_v1_route_needs_a_key(http, method, path, authorization, code):
    headers = {"Authorization": authorization} if authorization else {}
    error = assert_envelope(http.request(method, path, headers=headers), 401, code=code)
    assert TEST_KEY not in error["message"]


@pytest.mark.parametrize("call, exception, status, code", [
    pytest.param(lambda c: c.with_options(api_key="sk-wrong").models.list(), openai.AuthenticationError, 401,
                 "invalid_api_key", id="wrong-key"),
    pytest.param(lambda c: c.models.retrieve("gpt-image-99"), openai.NotFoundError, 404, "model_not_found",
                 id="unknown-model"),
    pytest.param(lambda c: c.images.create_variation(image=("a.png", png_bytes(64, 64), "image/png")),
                 openai.NotFoundError, 404, "endpoint_retired", id="variations",
                 marks=pytest.mark.filterwarnings("ignore::DeprecationWarning")),
])
def test_sdk_maps_statuses_to_its_exceptions(client, call, exception, status, code):
    with pytest.raises(exception) as info:
        call(client)
    assert info.value.status_code == status
    assert info.value.body["code"] == code
    assert info.value.request_id == info.value.response.headers["x-request-id"]
    assert info.value.request_id.startswith("req_")


def test_wrong_key_is_redacted_in_the_message(http):
    error = assert_envelope(http.get("/v1/models", headers={"Authorization": "Bearer sk-secret-abcdefghijklmnop"}),
                            401, code="invalid_api_key")
    assert "sk-secret-abcdefghijklmnop" not in error["message"]
    assert "sk-...mnop" in error["message"]
    short = assert_envelope(http.get("/v1/models", headers={"Authorization": "Bearer hunter2abc"}),
                            401, code="invalid_api_key")
    assert "Incorrect API key provided: ****." == short["message"]  # four characters are much of a short one


BAD_REQUESTS = [
    pytest.param("POST", "/v1/images/generations",
                 {"content": b"{not json", "headers": {"content-type": "application/json"}},
                 400, "invalid_value", None, id="generations-invalid-json"),
    pytest.param("POST", "/v1/images/edits", {"files": [("prompt", (None, PROMPT)), ("model", (None, "gpt-image-1"))]},
                 400, "missing_required_parameter", "image", id="edits-no-image"),
    pytest.param("POST", "/v1/images/variations", {"files": [("image", ("a.png", png_bytes(64, 64), "image/png"))]},
                 404, "endpoint_retired", None, id="variations-retired"),
    pytest.param("DELETE", "/v1/models", {}, 405, "method_not_allowed", None, id="models-delete"),
    pytest.param("GET", "/v1/models/not-a-model", {}, 404, "model_not_found", "model", id="model-unknown"),
    pytest.param("GET", "/files/0123456789abcdef0123456789abcdef.png", {}, 403, "invalid_signature", None,
                 id="files-unsigned"),
    pytest.param("POST", "/healthz", {}, 405, "method_not_allowed", None, id="healthz-post"),
]


@pytest.mark.parametrize("method, path, kwargs, status, code, param", BAD_REQUESTS)
def test_bad_request_to_every_route(http, method, path, kwargs, status, code, param):
    kwargs = dict(kwargs)
    headers = {**AUTH, **kwargs.pop("headers", {})}
    assert_envelope(http.request(method, path, headers=headers, **kwargs), status, code=code, param=param)


def test_healthz_needs_no_key_and_has_a_request_id(http):
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"].startswith("req_")


def test_request_ids_are_unique(http):
    ids = {http.get("/v1/nope").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def test_the_access_log_names_each_request_by_the_id_its_client_saw(client, caplog):
    caplog.set_level(logging.INFO)
    raw = client.images.with_raw_response.generate(model="gpt-image-1", prompt=PROMPT, size="1024x1024",
                                                   quality="low")
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("not-a-model")
    deadline = time.monotonic() + 5  # the line is written once the answer is out, after the client has it
    wanted = {raw.headers["x-request-id"]: ("POST", "/v1/images/generations", "200"),
              missing.value.request_id: ("GET", "/v1/models/not-a-model", "404")}
    while not all(any(rid in r.getMessage() for r in caplog.records) for rid in wanted) and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = {rid: r.getMessage() for r in caplog.records if r.name == "imagegate.access" for rid in wanted
             if rid in r.getMessage()}
    for rid, (method, path, status) in wanted.items():
        assert re.fullmatch(rf'127\.0\.0\.1:\d+ - "{method} {path}" {status} {rid} \d+\.\dms', lines[rid]), lines
    assert not [r for r in caplog.records if r.name == "uvicorn.access"]  # one access log, not two


# --- 404 / 405 -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/images", "/v1/images/generate", "/nope", "/v1/chat/unknown"])
@pytest.mark.parametrize("authorized", [True, False], ids=["with-key", "without-key"])
def test_unknown_route_is_404(http, path, authorized):
    error = assert_envelope(http.get(path, headers=AUTH if authorized else {}), 404, code="not_found")
    assert path in error["message"]


@pytest.mark.parametrize("model_id", ["x", "gpt-image-99", "dall-e-4"])
def test_unknown_model_id_is_404(http, model_id):
    error = assert_envelope(http.get(f"/v1/models/{model_id}", headers=AUTH), 404, code="model_not_found",
                            param="model")
    assert f"'{model_id}'" in error["message"]


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/v1/images/generations", "POST"),
    ("PUT", "/v1/images/generations", "POST"),
    ("GET", "/v1/images/edits", "POST"),
    ("POST", "/v1/models", "GET"),
    ("POST", "/v1/models/gpt-image-1", "GET"),
])
def test_wrong_method_is_405(http, method, path, allowed):
    response = http.request(method, path, headers=AUTH)
    error = assert_envelope(response, 405, code="method_not_allowed")
    assert response.headers["allow"] == allowed
    assert method in error["message"] and allowed in error["message"]


# --- 413 -----------------------------------------------------------------------------------------------------------


def _chunks(total: int, size: int = 10_000) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b"x" * size


def _multipart_chunks(total: int) -> Iterator[bytes]:
    yield (b"--bnd\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n" + PROMPT.encode() + b"\r\n"
           b"--bnd\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
           b"Content-Type: image/png\r\n\r\n")
    yield from _chunks(total)
    yield b"\r\n--bnd--\r\n"


def _oversized(route: str, chunked: bool) -> dict[str, Any]:
    if route == "generations":
        if chunked:
            return {"content": _chunks(200_000), "headers": {"content-type": "application/json"}}
        body = json.dumps({"model": "gpt-image-1", "prompt": "x" * 200_000}).encode()
        return {"content": body, "headers": {"content-type": "application/json"}}
    if chunked:
        return {"content": _multipart_chunks(200_000), "headers": {"content-type": "multipart/form-data; boundary=bnd"}}
    return {"files": [("image", ("big.png", b"\x89PNG" + b"x" * 200_000, "image/png"))], "data": {"prompt": PROMPT}}


@pytest.mark.parametrize("route", ["generations", "edits"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413(small_server, route, chunked):
    kwargs = _oversized(route, chunked)
    kwargs["headers"] = {**AUTH, **kwargs.get("headers", {})}
    with httpx.Client(base_url=small_server.root, timeout=30) as client:
        request = client.build_request("POST", f"/v1/images/{route}", **kwargs)
        assert ("content-length" in request.headers) is not chunked
        assert (request.headers.get("transfer-encoding") == "chunked") is chunked
        response = client.send(request)
    error = assert_envelope(response, 413, code="request_too_large")
    assert "100,000" in error["message"]


def test_small_server_still_serves_requests_under_the_limit(small_server):
    response = httpx.post(f"{small_server.base_url}/images/generations", headers=AUTH, timeout=30,
                          json={"model": "gpt-image-1", "prompt": PROMPT, "size": "1024x1024", "quality": "low"})
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")


def test_oversized_body_without_a_key_is_still_413(small_server):
    body = b"x" * 200_000
    response = httpx.post(f"{small_server.base_url}/images/generations", content=body, timeout=30,
                          headers={"content-type": "application/json"})
    assert_envelope(response, 413, code="request_too_large")


# --- 415 / 400 bodies ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, content_type, named", [
    ("/v1/images/generations", "text/plain", "text/plain"),
    ("/v1/images/generations", "multipart/form-data; boundary=x", "multipart/form-data"),
    ("/v1/images/generations", "application/x-www-form-urlencoded", "application/x-www-form-urlencoded"),
    ("/v1/images/edits", "application/x-www-form-urlencoded", "application/x-www-form-urlencoded"),
    ("/v1/images/edits", "text/plain", "text/plain"),
])
def test_unsupported_content_type_is_415(http, path, content_type, named):
    response = http.post(path, content=b"prompt=a+fox", headers={**AUTH, "content-type": content_type})
    error = assert_envelope(response, 415, code="unsupported_media_type")
    assert f"'{named}'" in error["message"]


def test_edits_without_content_type_is_415(http):
    error = assert_envelope(http.post("/v1/images/edits", content=b"x", headers=AUTH), 415,
                            code="unsupported_media_type")
    assert "multipart/form-data" in error["message"]


@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/images/edits"])
@pytest.mark.parametrize("body, fragment", [
    pytest.param(b"{\"prompt\": ", "not valid JSON", id="truncated-json"),
    pytest.param(b"{'prompt': 'x'}", "not valid JSON", id="single-quotes"),
    pytest.param(b"\xff\xfe\x00", "not valid JSON", id="not-utf8"),
    pytest.param(b"[{\"prompt\": \"x\"}]", "JSON object", id="array"),
    pytest.param(b"\"a fox\"", "JSON object", id="string"),
    pytest.param(b"null", "JSON object", id="null"),
    pytest.param(b"", "empty", id="empty"),
    pytest.param(b'{"n": ' + b"9" * 5000 + b"}", "not valid JSON", id="huge-number"),
    pytest.param(b"[" * 100_000, "nested too deeply", id="deep-nesting"),
    # Lone surrogates: json.loads takes them, UTF-8 cannot carry them (they were a 502, or a 500 in the model name).
    pytest.param(b'{"model": "gpt-image-1.5", "prompt": "a \\ud800 cat"}', "lone surrogate", id="surrogate-prompt"),
    pytest.param(b'{"model": "gpt-image-\\uDC00", "prompt": "a cat"}', "lone surrogate", id="surrogate-model"),
    pytest.param(b'{"prompt": "a cat", "\\ud83e": 1}', "lone surrogate", id="surrogate-key"),
    pytest.param(b'{"prompt": "a \xed\xa0\x80 cat"}', "lone surrogate", id="surrogate-raw-utf8-bytes"),
    pytest.param('{"prompt": "a \\ud800 cat"}'.encode("utf-16-le"), "lone surrogate", id="surrogate-utf16-body"),
])
def test_unusable_json_body_is_400(http, path, body, fragment):
    response = http.post(path, content=body, headers={**AUTH, "content-type": "application/json"})
    error = assert_envelope(response, 400, code="invalid_value")
    assert fragment in error["message"]


@pytest.mark.parametrize("prompt", [
    pytest.param(b"a \\ud83e\\udd8a in the snow", id="escaped-pair"),
    pytest.param("a \U0001F98A in the snow".encode(), id="raw-pair"),
    pytest.param(b"a \\\\ud800 in the snow", id="escaped-backslash-then-ud800"),
])
def test_json_text_that_only_looks_like_a_lone_surrogate_is_fine(http, prompt):
    body = b'{"model": "gpt-image-1", "prompt": "' + prompt + b'", "size": "1024x1024", "quality": "low"}'
    response = http.post("/v1/images/generations", content=body, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 200, response.text


def test_json_charset_parameter_is_fine(http):
    body = json.dumps({"model": "gpt-image-1", "prompt": PROMPT, "size": "1024x1024", "quality": "low"})
    response = http.post("/v1/images/generations", content=body.encode(),
                         headers={**AUTH, "content-type": "application/json; charset=utf-8"})
    assert response.status_code == 200


@pytest.mark.parametrize("content_type, body", [
    pytest.param("multipart/form-data; boundary=zz", b"this is not multipart", id="garbage"),
    pytest.param("multipart/form-data", b"--zz\r\n", id="no-boundary"),
    pytest.param("multipart/form-data; boundary=zz",
                 b"".join(b"--zz\r\nContent-Disposition: form-data; name=\"image[]\"; filename=\"a.png\"\r\n"
                          b"Content-Type: image/png\r\n\r\nx\r\n" for _ in range(33)) + b"--zz--\r\n",
                 id="33-files"),
])
def test_malformed_multipart_is_400_with_a_code(http, content_type, body):
    response = http.post("/v1/images/edits", content=body, headers={**AUTH, "content-type": content_type})
    error = assert_envelope(response, 400, code="invalid_value")
    assert "multipart" in error["message"].lower()


# --- 500 -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def exploding_gateway(broken_server, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("kaboom: internal detail that must not leak")

    monkeypatch.setattr(broken_server.app.state.gateway, "start", explode)
    return broken_server


def _trigger_500(live) -> httpx.Response:
    return httpx.post(f"{live.base_url}/images/generations", headers=AUTH, timeout=30,
                      json={"model": "gpt-image-1", "prompt": PROMPT, "size": "1024x1024", "quality": "low"})


def test_unhandled_exception_is_a_500_envelope(exploding_gateway):
    response = _trigger_500(exploding_gateway)
    assert response.status_code == 500
    body = response.json()
    assert "detail" not in body
    assert set(body) == {"error"}
    openapi.validate(body, "ErrorResponse")
    error = body["error"]
    assert error == {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    assert "kaboom" not in response.text and "Traceback" not in response.text


def test_unhandled_exception_has_a_request_id(exploding_gateway):
    assert_envelope(_trigger_500(exploding_gateway), 500, code="internal_error", type="server_error")


def test_server_keeps_serving_after_a_500(exploding_gateway, monkeypatch):
    assert _trigger_500(exploding_gateway).status_code == 500
    monkeypatch.undo()
    assert _trigger_500(exploding_gateway).status_code == 200


# --- signed file URLs ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored_image(server) -> tuple[str, int, str]:
    """(name, expires, signature) of an image the server stored for a url response."""
    response = httpx.post(f"{server.base_url}/images/generations", headers=AUTH, timeout=30,
                          json={"model": "dall-e-2", "prompt": PROMPT, "size": "256x256"})
    assert response.status_code == 200, response.text
    url = urlsplit(response.json()["data"][0]["url"])
    query = parse_qs(url.query)
    return url.path.rsplit("/", 1)[-1], int(query["expires"][0]), query["signature"][0]


def test_signed_url_serves_the_image(http, stored_image):
    name, expires, signature = stored_image
    response = http.get(f"/files/{name}", params={"expires": expires, "signature": signature})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-request-id"].startswith("req_")
    assert decode(response.content).size == (256, 256)


@pytest.mark.parametrize("params", [
    pytest.param(lambda e, s: {}, id="no-query"),
    pytest.param(lambda e, s: {"expires": e}, id="no-signature"),
    pytest.param(lambda e, s: {"signature": s}, id="no-expires"),
    pytest.param(lambda e, s: {"expires": e, "signature": ""}, id="empty-signature"),
    pytest.param(lambda e, s: {"expires": e, "signature": ("0" if s[0] != "0" else "1") + s[1:]},
                 id="tampered-signature"),
    pytest.param(lambda e, s: {"expires": e, "signature": s[:-1]}, id="short-signature"),
    pytest.param(lambda e, s: {"expires": e + 3600, "signature": s}, id="extended-expiry"),
    pytest.param(lambda e, s: {"expires": "tomorrow", "signature": s}, id="expires-not-a-number"),
])
def test_bad_signature_is_403(http, stored_image, params):
    name, expires, signature = stored_image
    response = http.get(f"/files/{name}", params=params(expires, signature))
    assert_envelope(response, 403, code="invalid_signature")


def test_signature_for_another_file_is_403(http, server, stored_image):
    name, expires, _ = stored_image
    other = server.app.state.storage.signer.signature("f" * 32 + ".png", expires)
    assert_envelope(http.get(f"/files/{name}", params={"expires": expires, "signature": other}), 403,
                    code="invalid_signature")


def test_expired_link_is_403(http, server, stored_image):
    name, _, _ = stored_image
    past = int(time.time()) - 60
    signature = server.app.state.storage.signer.signature(name, past)
    error = assert_envelope(http.get(f"/files/{name}", params={"expires": past, "signature": signature}), 403,
                            code="url_expired")
    assert "expired" in error["message"]


@pytest.mark.parametrize("name", ["0123456789abcdef0123456789abcdef.png", "fedcba9876543210fedcba9876543210.webp",
                                  "not-an-image-name.png", "0123456789abcdef0123456789abcdef.gif"])
def test_unknown_file_with_a_valid_signature_is_404(http, server, name):
    expires = int(time.time()) + 3600
    signature = server.app.state.storage.signer.signature(name, expires)
    error = assert_envelope(http.get(f"/files/{name}", params={"expires": expires, "signature": signature}), 404,
                            code="not_found")
    assert name in error["message"]


def test_api_key_does_not_replace_the_signature(http, stored_image):
    name, _, _ = stored_image
    assert_envelope(http.get(f"/files/{name}", headers=AUTH), 403, code="invalid_signature")


# --- never {"detail": ...} -----------------------------------------------------------------------------------------


def test_no_response_is_ever_fastapi_detail(http, stored_image):
    name, expires, _ = stored_image
    probes = [
        ("GET", "/v1/nope", {}),
        ("GET", "/v1/images/generations", {"headers": AUTH}),
        ("POST", "/v1/models", {"headers": AUTH}),
        ("GET", "/v1/models/%00", {"headers": AUTH}),
        ("GET", f"/files/{name}", {"params": {"expires": expires}}),
        ("GET", f"/files/{name}", {"params": {"expires": [expires, expires], "signature": ["a", "b"]}}),
        ("GET", "/files/..%2F..%2Fetc%2Fpasswd", {"params": {"expires": expires, "signature": "x"}}),
        ("POST", "/v1/images/generations", {"headers": {**AUTH, "content-type": "application/json"},
                                            "content": b"{\"prompt\": \"x\", \"n\": {\"$gt\": 1}}"}),
        ("POST", "/v1/images/edits", {"headers": AUTH, "json": {"prompt": "x", "images": "nope"}}),
        ("POST", "/v1/images/edits", {"headers": AUTH, "json": {"prompt": "x", "images": [{"file_id": "file-1"}]}}),
        ("POST", "/v1/images/variations", {"headers": AUTH}),
    ]
    for method, path, kwargs in probes:
        response = http.request(method, path, **kwargs)
        assert response.status_code >= 400, (method, path)
        body = response.json()
        assert "detail" not in body, (method, path, body)
        assert set(body) == {"error"}, (method, path, body)
        openapi.validate(body, "ErrorResponse")
        assert response.headers["x-request-id"].startswith("req_")


def test_a_request_cut_off_by_the_shutdown_is_a_503_to_retry_with_its_id(tmp_path, caplog):
    """Past the shutdown's grace, a request still waiting for its image is answered in the OpenAI envelope, and
    the cut-off is logged with the id the client got (it was uvicorn's bare 500, and a log line with no id)."""
    import threading

    live = start_server(tmp_path, sandbox_latency_ms=5000, shutdown_grace_seconds=0.5)
    answers: list[httpx.Response] = []

    def ask() -> None:
        answers.append(httpx.post(f"{live.base_url}/images/generations", headers=AUTH, timeout=30,
                                  json={"model": "gpt-image-1", "prompt": PROMPT, "size": "1024x1024", "quality": "low"}))

    asking = threading.Thread(target=ask)
    asking.start()
    time.sleep(0.5)
    live.stop()
    asking.join(30)
    (answer,) = answers
    error = assert_envelope(answer, 503, code="server_shutting_down", type="server_error")
    # Not to be retried blindly: the run goes on and is charged (a retry with its Idempotency-Key gets it).
    assert "Idempotency-Key" in error["message"] and answer.headers["x-should-retry"] == "false"
    assert f"request {answer.headers['x-request-id']} (POST /v1/images/generations) cut off by the shutdown" in caplog.text
