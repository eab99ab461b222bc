"""Channels through the admin API: list them with their health, add, change and remove the ones kept in the
database. The config file's channels are listed but changed only in the file."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from imagegate.api.admin import require_admin
from imagegate.api.auth import redact
from imagegate.api.wire import json_body
from imagegate.catalog import Catalog
from imagegate.channels import ChannelError, ChannelSet, ChannelStore, parse_channel, reload_channels
from imagegate.config import ChannelConfig
from imagegate.errors import Conflict, ImagegateError, InvalidRequest, NotFound

router = APIRouter(prefix="/admin/channels", dependencies=[Depends(require_admin)])


def _store(request: Request) -> ChannelStore:
    store = request.app.state.channel_store
    if store is None:
        raise ImagegateError("Channels can be added through the API only with a database (metering on); "
                             "this server takes them from its config file.", status=503, code="metering_off",
                             headers={"x-should-retry": "false"})
    return store


def _described(request: Request) -> list[dict[str, Any]]:
    """The channels with their keys redacted; an ``env:`` reference names a variable, not a secret."""
    channels: ChannelSet = request.app.state.channels
    described = channels.describe()
    for channel in described:
        if channel["api_key"] and not channel["api_key"].startswith("env:"):
            channel["api_key"] = redact(channel["api_key"])
    return described


def _one(request: Request, name: str) -> dict[str, Any]:
    # Another server may have removed it since this one's change: answer as a later request would.
    found = next((c for c in _described(request) if c["name"] == name), None)
    if found is None:
        raise _missing(name)
    return found


def _parsed(catalog: Catalog, raw: dict[str, Any]) -> ChannelConfig:
    try:
        return parse_channel(raw, catalog)[0]
    except ChannelError as exc:
        raise InvalidRequest(f"{exc}.", param=exc.field) from None


def _fixed(request: Request, name: str) -> None:
    if name in request.app.state.channels.file:
        raise Conflict(f"Channel '{name}' comes from the config file; change it there.", code="channel_in_config_file")


def _missing(name: str) -> NotFound:
    return NotFound(f"No channel named '{name}' was added through the API.", code="channel_not_found")


@router.get("")
async def list_channels(request: Request) -> Any:
    return {"object": "list", "data": _described(request)}


@router.post("", status_code=201)
async def add_channel(request: Request) -> Any:
    given = _parsed(request.app.state.channels.base_catalog, await json_body(request))
    _fixed(request, given.name)
    store = _store(request)
    if not await store.add(given):
        raise Conflict(f"A channel named '{given.name}' exists; PATCH /admin/channels/{given.name} changes it.",
                       code="channel_exists")
    await reload_channels(request.app.state)
    return _one(request, given.name)


@router.patch("/{name}")
async def change_channel(name: str, request: Request) -> Any:
    _fixed(request, name)
    changes = await json_body(request)
    if changes.get("name", name) != name:
        raise InvalidRequest("A channel cannot be renamed; add one under the new name.", param="name")
    store = _store(request)
    catalog = request.app.state.channels.base_catalog
    if await store.update(name, lambda stored: _parsed(catalog, {**stored, **changes})) is None:
        raise _missing(name)
    await reload_channels(request.app.state)
    return _one(request, name)


@router.delete("/{name}")
async def remove_channel(name: str, request: Request) -> Any:
    _fixed(request, name)
    store = _store(request)
    if not await store.delete(name):
        raise _missing(name)
    await reload_channels(request.app.state)
    return {"name": name, "deleted": True}
