"""Fetching reference images from URLs that clients put in chat messages, safely.

The URL is the client's, the request is ours: without care it is a server-side request forgery. Only http(s),
only public addresses (unless the operator allows private ones), a time limit and a size limit enforced while
streaming, not after. The address check is made by the resolver the connection itself uses
(:class:`PublicResolver`), so a name that answers a public address to a first lookup and a private one to the
next (DNS rebinding) cannot slip in between.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.request
from typing import Any, Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

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


class PublicResolver(AbstractResolver):
    """The system's resolver, refusing a name with any address that is not public. A connector using it connects
    to exactly the addresses it checked (with its DNS cache off, it checks every time)."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        found = await self._inner.resolve(host, port, family)
        if not found or not all(is_public_address(entry["host"]) for entry in found):
            raise OSError(f"'{host}' resolves to a private or loopback address")
        return found

    async def close(self) -> None:
        await self._inner.close()


def public_connector(**options: Any) -> aiohttp.TCPConnector:
    """A connector that only ever connects to public addresses. Addresses written in the URL are not resolved,
    so check those first (:func:`public_host`)."""
    return aiohttp.TCPConnector(resolver=PublicResolver(), use_dns_cache=False, **options)


def env_proxy(url: str, proxies: Mapping[str, str]) -> str | None:
    """The proxy from HTTP(S)_PROXY / NO_PROXY (``urllib.request.getproxies()``) for ``url``. Through a proxy the
    proxy resolves the name: only the check before the request applies then."""
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


async def public_host(url: str) -> bool:
    """Whether every address the URL's host resolves to is public (a first, early answer; the connection's own
    resolver checks again, see :class:`PublicResolver`)."""
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
    proxy = env_proxy(url, urllib.request.getproxies())
    connector = aiohttp.TCPConnector() if allow_private or proxy else public_connector()
    try:
        # timeout_s bounds the whole fetch: per-read timeouts are what a trickling server evades.
        async with asyncio.timeout(timeout_s), aiohttp.ClientSession(connector=connector) as session:
            async with session.get(url, allow_redirects=False, proxy=proxy) as response:
                if response.status != 200:
                    raise InvalidRequest(
                        f"Fetching the image URL in '{param}' failed with HTTP {response.status}.", param=param
                    )
                chunks, total = [], 0
                async for chunk in response.content.iter_any():
                    total += len(chunk)
                    if total > max_bytes:
                        raise InvalidRequest(
                            f"The image at the URL in '{param}' is larger than {max_bytes:,} bytes.", param=param
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
    except aiohttp.ClientConnectorDNSError:
        raise InvalidRequest(
            f"The image URL in '{param}' points to a private or loopback address, which this server does not fetch.",
            param=param,
        ) from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise InvalidRequest(f"Fetching the image URL in '{param}' failed: {type(exc).__name__}.", param=param) from None
