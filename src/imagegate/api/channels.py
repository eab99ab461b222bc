"""Channels through the admin API: list them with their health, add, change and remove the ones kept in the
database. The config file's channels are listed but changed only in the file."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from imagegate.api.admin import require_admin
from imagegate.api.auth import redact
from imagegate.api.wire import json_body
from imagegate.channels import ChannelError, ChannelSet, ChannelStore, parse_channel, reload_channels
from imagegate.errors import Conflict, ImagegateError, InvalidRequest, InvalidType, NotFound

router = APIRouter(prefix="/admin/channels", dependencies=[Depends(require_admin)])


def _store(request: Request) -> ChannelStore:
    store = request.app.state.channel_store
    if store is None:
        raise ImagegateError("Channels can be added through the API only with a database (metering on); "
                             "this server takes them from its config file.", status=503, code="metering_off")
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
    return next(c for c in _described(request) if c["name"] == name)


async def _save(request: Request, raw: dict[str, Any]) -> None:
    try:
        given, _ = parse_channel(raw, request.app.state.channels.base_catalog)
    except ChannelError as exc:
        raise InvalidRequest(f"{exc}.", param=exc.field) from None
    await _store(request).put(given)
    await reload_channels(request.app.state, _store(request))


def _fixed(request: Request, name: str) -> None:
    if name in request.app.state.channels.file:
        raise Conflict(f"Channel '{name}' comes from the config file; change it there.", code="channel_in_config_file")


async def _object(request: Request) -> dict[str, Any]:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidType("The body must be a JSON object of channel fields.")
    return body


@router.get("")
async def list_channels(request: Request) -> Any:
    return {"object": "list", "data": _described(request)}


@router.post("", status_code=201)
async def add_channel(request: Request) -> Any:
    raw = await _object(request)
    name = raw.get("name")
    if isinstance(name, str):
        _fixed(request, name)
        if name in request.app.state.channels.admin:
            raise Conflict(f"A channel named '{name}' exists; PATCH /admin/channels/{name} changes it.",
                           code="channel_exists")
    await _save(request, raw)
    return _one(request, raw["name"])


@router.patch("/{name}")
async def change_channel(name: str, request: Request) -> Any:
    _fixed(request, name)
    current = request.app.state.channels.admin.get(name)
    if current is None:
        raise NotFound(f"No channel named '{name}' was added through the API.", code="channel_not_found")
    changes = await _object(request)
    if changes.get("name", name) != name:
        raise InvalidRequest("A channel cannot be renamed; add one under the new name.", param="name")
    await _save(request, {**current.model_dump(mode="json"), **changes})
    return _one(request, name)


@router.delete("/{name}")
async def remove_channel(name: str, request: Request) -> Any:
    _fixed(request, name)
    if not await _store(request).delete(name):
        raise NotFound(f"No channel named '{name}' was added through the API.", code="channel_not_found")
    await reload_channels(request.app.state, _store(request))
    return {"name": name, "deleted": True}
