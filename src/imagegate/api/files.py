"""GET /files/{name}: images behind signed, expiring URLs (no API key needed, the signature is the key)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from imagegate.imaging import MEDIA_TYPES
from imagegate.errors import PermissionDenied

router = APIRouter()


@router.get("/files/{name}")
async def get_file(
    name: str, request: Request, expires: str = "", signature: str = "", download: str = ""
) -> FileResponse:
    if not expires or not signature:
        raise PermissionDenied("This image link is not signed: 'expires' and 'signature' are required.", code="invalid_signature")
    path = request.app.state.storage.open_signed(name, expires, signature)
    fmt = name.rsplit(".", 1)[-1]
    # No longer than the link lives: a browser must not go on showing an image whose link has expired.
    max_age = max(0, min(3600, int(expires) - int(time.time())))
    return FileResponse(
        path,
        media_type=MEDIA_TYPES.get(fmt, "application/octet-stream"),
        headers={"cache-control": f"private, max-age={max_age}"},
        # ?download=1 is the chat's "Click to download" link: same signature, saved instead of shown.
        filename=name if download else None,
        content_disposition_type="attachment",
    )
