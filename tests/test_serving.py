"""imagegate's HTTP protocol: chunked bodies written without uvicorn's copy arrive byte for byte, framed right."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import httpx
import pytest
import uvicorn

from imagegate.serving import _ScatterCycle, uvicorn_options
from tests.servers import free_port, wait_healthy

# Small and large chunks, in both orders, and a large last chunk (the terminator rides with it).
SIZES = [10, 70_000, 3, 300_000, 65_535, 65_536, 200_000]


def _chunk(index: int, size: int) -> bytes:
    return bytes((index * 31 + i) % 251 for i in range(251)) * (size // 251) + b"x" * (size % 251)


EXPECTED = b"".join(_chunk(i, size) for i, size in enumerate(SIZES))
seen_cycles: list[str] = []


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    seen_cycles.append(type(send.__self__).__name__)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    last = len(SIZES) - 1
    for i, size in enumerate(SIZES):
        body = _chunk(i, size)
        # Upstream pieces reach the protocol as memoryviews too.
        await send({"type": "http.response.body", "body": memoryview(body) if i % 2 else body, "more_body": i < last})


@pytest.fixture(scope="module")
def port():
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(host="127.0.0.1", port=port, log_level="warning")))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_healthy(port, timeout=20)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


class _Reader:
    """Responses from one connection, read by the HTTP/1.1 framing alone: each one's chunk sizes and body."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(1 << 16)
        assert data, "the connection closed inside a response"
        self.buffer += data

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        out, self.buffer = self.buffer[:count], self.buffer[count:]
        return out

    def response(self) -> tuple[list[int], bytes]:
        head = self._until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"transfer-encoding: chunked" in head.lower()
        sizes, body = [], b""
        while True:
            size = int(self._until(b"\r\n"), 16)
            if size == 0:
                assert self._until(b"\r\n") == b""  # no trailers: the blank line that ends the response
                return sizes, body
            sizes.append(size)
            body += self._exactly(size)
            assert self._exactly(2) == b"\r\n"


def _read_chunked(sock: socket.socket) -> tuple[list[int], bytes]:
    """One response, and nothing after it."""
    reader = _Reader(sock)
    response = reader.response()
    assert reader.buffer == b"", "bytes after the end of the response"
    return response


def test_every_chunk_arrives_whole_and_framed(port):
    seen_cycles.clear()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # Twice on one keep-alive connection: the first response must end exactly where its framing says.
        for _ in range(2):
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
            sizes, body = _read_chunked(sock)
            assert sizes == SIZES
            assert body == EXPECTED
    assert seen_cycles == [_ScatterCycle.__name__] * 2  # the requests went through imagegate's cycle


def test_a_pipelined_request_is_answered_after_a_large_last_chunk(port):
    # The response ends on a large chunk (the scatter path): the request queued behind it must still start.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\nGET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        reader = _Reader(sock)
        for _ in range(2):
            sizes, body = reader.response()
            assert sizes == SIZES and body == EXPECTED


def test_a_client_reads_the_body(port):
    response = httpx.get(f"http://127.0.0.1:{port}/stream", timeout=10)
    assert response.status_code == 200
    assert response.content == EXPECTED


def test_a_connection_closing_after_its_response(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        sizes, body = _read_chunked(sock)
        assert sizes == SIZES and body == EXPECTED
        assert sock.recv(1) == b""  # closed by the server once the last chunk went out


def test_the_serve_supervisor_does_not_load_the_app():
    # `serve --workers N` runs its command line in a process that only watches the workers: loading the app there
    # would cost it what a worker costs (some 100 MB).
    script = (
        "import sys\n"
        "import uvicorn\n"
        "from imagegate import cli, config, keyfile, serving\n"  # what cli._serve loads before uvicorn.run
        "cli.build_parser()\n"
        "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'numpy', 'aiohttp', 'imagegate.app') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_without_uvloop_uvicorn_writes_as_it_does():
    port = free_port()
    config = uvicorn.Config(app, **uvicorn_options(host="127.0.0.1", port=port, log_level="warning", loop="asyncio"))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_healthy(port, timeout=20)
        seen_cycles.clear()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
            sizes, body = _read_chunked(sock)
        assert sizes == SIZES and body == EXPECTED
        assert seen_cycles == ["RequestResponseCycle"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
