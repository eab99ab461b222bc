"""URL fetches the server makes on someone else's word (chat reference images, upstream image links) connect only
to the addresses they checked: a name that answers a public address first and a loopback one next (DNS
rebinding) never reaches the loopback server."""

from __future__ import annotations

import asyncio
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import pytest

from imagegate.engines.upstream import UpstreamSession, download
from imagegate.errors import InvalidRequest
from imagegate import fetch as fetch_module
from imagegate.fetch import PrivateAddress, fetch_image
from tests.imaging_helpers import png_bytes

IMAGE = png_bytes(8, 8)
PUBLIC = "93.184.216.34"  # any public address: a rebinding name's first answer, never connected to


@pytest.fixture
def local_image():
    """A loopback server holding an image; it counts the requests that reach it."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.send_header("content-length", str(len(IMAGE)))
            self.end_headers()
            self.wfile.write(IMAGE)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], hits
    server.shutdown()
    server.server_close()


@pytest.fixture
def dns(monkeypatch):
    """Names the tests make up: each maps to the answers it gives, one per lookup, the last one repeated."""
    answers: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        queue = answers[host]
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 80)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def test_a_rebinding_name_never_reaches_the_loopback_server(local_image, dns):
    port, hits = local_image
    dns["rebind.test"] = [PUBLIC, "127.0.0.1"]
    with pytest.raises(InvalidRequest, match="private or loopback"):
        asyncio.run(fetch_image(f"http://rebind.test:{port}/a.png", param="messages[0].content[1]",
                                max_bytes=1 << 20, allow_private=False))
    assert hits == []


def test_a_loopback_name_is_fetched_when_the_operator_allows_private_addresses(local_image, dns):
    port, hits = local_image
    dns["local.test"] = ["127.0.0.1"]
    data = asyncio.run(fetch_image(f"http://local.test:{port}/a.png", param="p", max_bytes=1 << 20,
                                   allow_private=True))
    assert data == IMAGE and hits == ["/a.png"]


def test_an_upstream_link_to_a_rebinding_name_is_not_downloaded(local_image, dns):
    port, hits = local_image
    dns["rebind.test"] = [PUBLIC, "127.0.0.1"]

    async def main():
        session = UpstreamSession()
        try:
            with pytest.raises(aiohttp.ClientConnectorDNSError) as refused:
                await download(session, f"http://rebind.test:{port}/a.png", max_bytes=1 << 20)
            # The channel's own host is trusted as configured, whatever it resolves to.
            dns["relay.test"] = ["127.0.0.1"]
            trusted = await download(session, f"http://relay.test:{port}/b.png", max_bytes=1 << 20,
                                     trusted_hosts=frozenset({"relay.test"}))
        finally:
            await session.aclose()
        return refused.value, trusted

    refused, trusted = asyncio.run(main())
    assert isinstance(refused.os_error, PrivateAddress)  # refused by the connection's own resolver, not the server
    assert trusted == IMAGE and hits == ["/b.png"]


@pytest.fixture
def redirector():
    """A server on 127.0.0.2 (taken for a public host by the tests that use it) whose every path redirects to the
    URL the test sets (``targets[0]``)."""
    targets: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            self.send_response(302)
            self.send_header("location", targets[0])
            self.send_header("content-length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.2:{server.server_address[1]}/r.png", targets
    server.shutdown()
    server.server_close()


def test_a_redirect_is_followed_and_checked_as_the_first_url_was(local_image, redirector, monkeypatch):
    port, hits = local_image
    url, targets = redirector
    real = fetch_module.is_public_address
    monkeypatch.setattr(fetch_module, "is_public_address", lambda a: a == "127.0.0.2" or real(a))
    targets.append(f"http://127.0.0.1:{port}/a.png")  # a public link that leads to a loopback one
    with pytest.raises(InvalidRequest, match="private or loopback"):
        asyncio.run(fetch_image(url, param="p", max_bytes=1 << 20, allow_private=False))
    assert hits == []
    data = asyncio.run(fetch_image(url, param="p", max_bytes=1 << 20, allow_private=True))
    assert data == IMAGE and hits == ["/a.png"]
    targets[0] = url  # a loop
    with pytest.raises(InvalidRequest, match="redirected more than 5 times"):
        asyncio.run(fetch_image(url, param="p", max_bytes=1 << 20, allow_private=True))
