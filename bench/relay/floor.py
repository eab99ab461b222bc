"""The Python floor: the least a Python relay can do, to measure what the language and its server stack cost.

A bare ASGI app under uvicorn (uvloop, httptools: what imagegate runs on) with one aiohttp session to the
upstream, and imagegate's allocator setting and read size. It checks nothing: no key, no validation, no ledger, no parsing of the answer. ``stream`` copies the
upstream's chunks to the client as they arrive, as nginx does; ``buffered`` reads the whole answer first, as any
relay that inspects the answer before committing to a status must.

    python bench/relay/floor.py --upstream http://127.0.0.1:PORT --port PORT [--mode stream|buffered] [--workers N]
"""

from __future__ import annotations

import argparse
import os

import aiohttp
import uvicorn

from imagegate.memory import keep_freed_buffers

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "")
MODE = os.environ.get("FLOOR_MODE", "stream")
_session: aiohttp.ClientSession | None = None


async def _read_request(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def app(scope, receive, send) -> None:
    global _session
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # The same allocator setting and read size as imagegate: what any Python relay can have.
                keep_freed_buffers()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _session is not None:
                    await _session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = await _read_request(receive)
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), read_bufsize=1 << 20)
    async with _session.request(scope["method"], UPSTREAM + scope["path"], data=body,
                                headers={"content-type": "application/json"}) as response:
        headers = [(b"content-type", response.headers.get("content-type", "application/json").encode())]
        if MODE == "buffered":
            payload = await response.read()
            headers.append((b"content-length", str(len(payload)).encode()))
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        length = response.headers.get("content-length")
        if length is not None:
            headers.append((b"content-length", length.encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        async for chunk in response.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True, help="the upstream's origin, http://host:port")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("stream", "buffered"), default="stream")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ["FLOOR_UPSTREAM"] = args.upstream.rstrip("/")
    os.environ["FLOOR_MODE"] = args.mode
    uvicorn.run("floor:app", app_dir=os.path.dirname(os.path.abspath(__file__)), host="127.0.0.1", port=args.port,
                workers=args.workers, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
