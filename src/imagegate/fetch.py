"""Fetching what someone else names by URL, safely: reference images that clients put in chat messages, and the
pieces the relays' downloads of upstream image links share (the public-only connector, proxies, bounded reads).

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
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import urljoin, urlsplit

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


class PrivateAddress(OSError):
    """A name that resolves to an address this server does not fetch from."""


class PublicResolver(AbstractResolver):
    """The system's resolver, refusing a name with any address that is not public. A connector using it connects
    to exactly the addresses it checked (with its DNS cache off, it checks every time)."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        found = await self._inner.resolve(host, port, family)
        if not found or not all(is_public_address(entry["host"]) for entry in found):
            raise PrivateAddress(f"'{host}' resolves to a private or loopback address")
        return found

    async def close(self) -> None:
        await self._inner.close()


def public_connector(**options: Any) -> aiohttp.TCPConnector:
    """A connector that only ever connects to public addresses. It comes after :func:`public_host`, which gives the
    early, clear refusal and is the only check for an address written in the URL (never resolved) or a request
    through a proxy (the proxy resolves); this one closes the gap between that lookup and the connection."""
    return aiohttp.TCPConnector(resolver=PublicResolver(), use_dns_cache=False, **options)


def env_proxy(url: str, proxies: Mapping[str, str]) -> str | None:
    """The proxy from HTTP(S)_PROXY / NO_PROXY (``urllib.request.getproxies()``) for ``url``."""
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


async def _addresses(url: str) -> list[str]:
    parts = urlsplit(url)
    return await _resolve(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))


async def public_host(url: str) -> bool:
    """Whether every address the URL's host resolves to is public."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    try:
        addresses = await _addresses(url)
    except OSError:
        return False
    return bool(addresses) and all(is_public_address(a) for a in addresses)


class TooLarge(ValueError):
    """A body past its limit (a ValueError, as any unreadable answer is to read_body's callers)."""


class OverBudget(TooLarge):
    """Bodies read together past the limit of their sum."""


class ByteBudget:
    """What several reads may take between them (a request's referenced images), counted as the bytes arrive: the
    sum is refused as soon as it is over, not once every body is in memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            raise OverBudget(f"together larger than {self.limit:,} bytes")


async def read_body(
    response: aiohttp.ClientResponse, max_bytes: int, *, truncate: bool = False, budget: ByteBudget | None = None
) -> bytes:
    """The body, up to a limit (past it: TooLarge, or with ``truncate`` the first ``max_bytes``), and within
    ``budget`` (past it: OverBudget)."""
    chunks, total = [], 0
    async for chunk in response.content.iter_any():
        if budget is not None:
            budget.take(len(chunk))
        total += len(chunk)
        if total > max_bytes:
            if truncate:
                chunks.append(chunk[: max_bytes - (total - len(chunk))])
                break
            raise TooLarge(f"the answer is larger than {max_bytes:,} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _private(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"The image URL in '{param}' points to a private or loopback address, which this server does not fetch.",
        param=param,
    )


MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)


class NotOk(ValueError):
    """The answer's status was not 200 (a ValueError, as any unreadable answer is to read_body's callers)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"answered HTTP {status}")
        self.status = status


class TooManyRedirects(ValueError):
    pass


async def read_followed(
    url: str, hop: Callable[[str], Awaitable[tuple[aiohttp.ClientSession, str | None]]], *, max_bytes: int,
    max_redirects: int = MAX_REDIRECTS, budget: ByteBudget | None = None,
) -> bytes:
    """The body at ``url``, redirects followed by hand: ``hop(url)`` checks each URL (raising where it may not be
    fetched) and gives the session and proxy to fetch it with. NotOk, TooManyRedirects or read_body's errors."""
    for _ in range(max_redirects + 1):
        session, proxy = await hop(url)
        async with session.get(url, allow_redirects=False, proxy=proxy) as response:
            location = response.headers.get("location")
            if response.status in REDIRECTS and location:
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise NotOk(response.status)
            return await read_body(response, max_bytes, budget=budget)
    raise TooManyRedirects(f"redirected more than {max_redirects} times")


async def _check_url(url: str, param: str, allow_private: bool) -> None:
    """Refuses, naming ``param``, a URL this server does not fetch: the first one and every redirect's."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"Invalid image URL in '{param}': only http(s) URLs and data URLs are accepted.", param=param)
    try:
        addresses = await _addresses(url)
    except OSError:
        raise InvalidRequest(f"Could not resolve the image URL's host '{parts.hostname}'.", param=param) from None
    if not allow_private and not all(is_public_address(a) for a in addresses):
        raise _private(param)


async def fetch_image(
    url: str, *, param: str, max_bytes: int, allow_private: bool, budget: ByteBudget | None = None
) -> bytes:
    """The image at ``url``, or an InvalidRequest naming ``param`` that says why not (OverBudget passes through: the
    caller knows what the budget was for). Redirects are followed, each checked as the first URL was: a public
    link may not lead to a private address. No deadline of its own: the caller's bounds all of a request's."""
    sessions: dict[bool, aiohttp.ClientSession] = {}  # by whether its connector checks for public addresses

    async def hop(target: str) -> tuple[aiohttp.ClientSession, str | None]:
        await _check_url(target, param, allow_private)
        proxy = env_proxy(target, urllib.request.getproxies())
        checked = not (allow_private or proxy)
        if checked not in sessions:
            sessions[checked] = aiohttp.ClientSession(
                connector=public_connector() if checked else aiohttp.TCPConnector())
        return sessions[checked], proxy

    try:
        return await read_followed(url, hop, max_bytes=max_bytes, budget=budget)
    except OverBudget:
        raise
    except TooLarge:  # not any ValueError: aiohttp's InvalidURL (a bad proxy setting, say) is one too
        raise InvalidRequest(f"The image at the URL in '{param}' is larger than {max_bytes:,} bytes.",
                             param=param) from None
    except NotOk as exc:
        raise InvalidRequest(f"Fetching the image URL in '{param}' failed with HTTP {exc.status}.", param=param) from None
    except TooManyRedirects as exc:
        raise InvalidRequest(f"The image URL in '{param}' {exc}.", param=param) from None
    except aiohttp.ClientConnectorDNSError as exc:
        if isinstance(exc.os_error, PrivateAddress):  # the name changed its answer since the check above
            raise _private(param) from None
        raise InvalidRequest(f"Could not resolve the image URL's host '{urlsplit(url).hostname}'.", param=param) from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise InvalidRequest(f"Fetching the image URL in '{param}' failed: {type(exc).__name__}.", param=param) from None
    finally:
        for session in sessions.values():
            await session.close()
