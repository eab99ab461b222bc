"""Fetching reference images from URLs that clients put in chat messages, safely.

The URL is the client's, the request is ours: without care it is a server-side request forgery. Only http(s),
only public addresses (unless the operator allows private ones), a time limit and a size limit enforced while
streaming, not after.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import httpx

from imagegate.errors import InvalidRequest


async def _resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


# IPv6 prefixes that embed an IPv4 address the rest of the check would not see: NAT64 and 6to4.
_EMBEDDING_V4 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"),
                 ipaddress.ip_network("2002::/16"))


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(str(ip.ipv4_mapped))
        if any(ip in net for net in _EMBEDDING_V4):
            return False
    return ip.is_global and not ip.is_multicast


async def public_host(url: str) -> bool:
    """Whether every address the URL's host resolves to is public. The addresses are resolved again when
    connecting, so a name that changes its answer in between (DNS rebinding) is not caught here."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = await _resolve(parts.hostname, port)
    except OSError:
        return False
    return bool(addresses) and all(is_public_address(a) for a in addresses)


async def fetch_image(url: str, *, param: str, max_bytes: int, timeout_s: float, allow_private: bool) -> bytes:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"Invalid image URL in '{param}': only http(s) URLs and data URLs are accepted.", param=param)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = await _resolve(parts.hostname, port)
    except OSError:
        raise InvalidRequest(f"Could not resolve the image URL's host '{parts.hostname}'.", param=param) from None
    if not allow_private and not all(is_public_address(a) for a in addresses):
        raise InvalidRequest(
            f"The image URL in '{param}' points to a private or loopback address, which this server does not fetch.",
            param=param,
        )
    try:
        # timeout_s bounds the whole fetch: httpx's own timeouts are per read, which a trickling server evades.
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise InvalidRequest(
                        f"Fetching the image URL in '{param}' failed with HTTP {response.status_code}.", param=param
                    )
                chunks, total = [], 0
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > max_bytes:
                        raise InvalidRequest(
                            f"The image at the URL in '{param}' is larger than {max_bytes:,} bytes.", param=param
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
    except (httpx.HTTPError, TimeoutError) as exc:
        raise InvalidRequest(f"Fetching the image URL in '{param}' failed: {type(exc).__name__}.", param=param) from None
