"""A PNG served on loopback, for requests that name their reference images by URL."""

from __future__ import annotations

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

from tests.imaging_helpers import png_bytes

IMAGE = png_bytes(300, 200, (0, 200, 0, 255))  # 3:2


class ImageHost:
    """Where the image is (``url``), a body that never ends (``endless_url``: a PNG's start, then 64 KB every 10
    ms for as long as the reader reads), and the paths asked for so far (``hits``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.endless_url = url.rsplit("/", 1)[0] + "/endless.png"
        self.hits: list[str] = []


@contextlib.contextmanager
def image_host(delay: float = 0.0) -> Iterator[ImageHost]:
    """Serves ``IMAGE`` at any path but the endless one, each answer ``delay`` seconds late."""
    host: ImageHost

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            host.hits.append(self.path)
            if self.path == "/endless.png":
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.end_headers()
                try:
                    self.wfile.write(IMAGE[:64])
                    for _ in range(6000):  # a minute at most
                        self.wfile.write(b"\0" * 65536)
                        time.sleep(0.01)
                except OSError:  # the reader gave up
                    pass
                return
            time.sleep(delay)
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.send_header("content-length", str(len(IMAGE)))
            self.end_headers()
            self.wfile.write(IMAGE)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    host = ImageHost(f"http://127.0.0.1:{httpd.server_address[1]}/ref.png")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield host
    finally:
        httpd.shutdown()
        httpd.server_close()
