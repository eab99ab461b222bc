"""A small fault-injecting upstream: a real HTTP server on loopback that answers from a script."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.imaging_helpers import png_bytes

IMAGE = png_bytes(1024, 1024, (250, 120, 10, 255))
B64 = base64.b64encode(IMAGE).decode()
USAGE = {"input_tokens": 12, "input_tokens_details": {"text_tokens": 12, "image_tokens": 0}, "output_tokens": 272,
         "total_tokens": 284}


def ok_body(b64: str = B64, usage: dict | None = USAGE, url: str | None = None) -> bytes:
    item = {"url": url} if url else {"b64_json": b64}
    body = {"created": int(time.time()), "data": [item]}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


@dataclass
class Reply:
    status: int = 200
    body: bytes = field(default_factory=ok_body)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the headers
    trickle_s: float = 0.0  # between body chunks: a slow body
    truncate: bool = False  # send half the body and close
    hang: bool = False  # never answer
    pause_at: int | None = None  # send this many bytes of the body, then wait pause_s before the rest
    pause_s: float = 0.0
    cut_at: int | None = None  # send this many bytes of the body (after any pause), then close the connection


class FaultUpstream:
    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.default = Reply()
        self.requests: list[tuple[str, str, bytes]] = []
        self.authorizations: list[str] = []  # the Authorization header of every request, in order ("" if none)
        self._stop = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - image downloads for url-only answers
                upstream.authorizations.append(self.headers.get("authorization", ""))
                if self.path.endswith("/gone"):  # an image link that no longer works
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(IMAGE)))
                self.end_headers()
                self.wfile.write(IMAGE)

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length) if length else b""
                upstream.requests.append((self.path, self.headers.get("content-type", ""), body))
                upstream.authorizations.append(self.headers.get("authorization", ""))
                reply = upstream.script.popleft() if upstream.script else upstream.default
                if reply.hang:
                    upstream._stop.wait(30)
                    return
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                payload = reply.body
                self.send_response(reply.status)
                self.send_header("content-type", reply.headers.get("content-type", "application/json"))
                self.send_header("content-length", str(len(payload)))
                for name, value in reply.headers.items():
                    if name != "content-type":
                        self.send_header(name, value)
                self.end_headers()
                cut = len(payload) // 2 if reply.truncate else reply.cut_at
                sent = 0
                if reply.pause_at is not None:
                    sent = min(reply.pause_at, len(payload) if cut is None else cut)
                    self.wfile.write(payload[:sent])
                    self.wfile.flush()
                    if upstream._stop.wait(reply.pause_s):
                        return
                if cut is not None:
                    self.wfile.write(payload[sent:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if sent:
                    self.wfile.write(payload[sent:])
                    return
                if reply.trickle_s:
                    for i in range(0, len(payload), 64):
                        if upstream._stop.is_set():
                            return
                        self.wfile.write(payload[i:i + 64])
                        self.wfile.flush()
                        time.sleep(reply.trickle_s)
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def image_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/img.png"

    def calls(self, path_suffix: str = "") -> int:
        return sum(1 for path, _, _ in self.requests if path.endswith(path_suffix))

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()

