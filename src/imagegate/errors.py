"""The whole error tree.

Every failure a client can see is one of these. Each class knows its HTTP status and the OpenAI ``type`` and
``code`` it renders as, so the API layer translates exceptions to the ``{"error": {...}}`` envelope in one place
and nothing else in the code base needs to know about HTTP.
"""

from __future__ import annotations

import math
from typing import Any


class ImagegateError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.extra = extra or {}
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        body.update(self.extra)
        return body


class InvalidRequest(ImagegateError):
    """Bad input: the message must say what is allowed."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class UnknownParameter(InvalidRequest):
    code = "unknown_parameter"

    def __init__(self, param: str, model: str | None = None, *, hint: str = "") -> None:
        suffix = f" Model '{model}' does not accept it." if model else ""
        super().__init__(f"Unknown parameter: '{param}'.{suffix}" + (f" {hint}" if hint else ""), param=param)


class MissingParameter(InvalidRequest):
    code = "missing_required_parameter"

    def __init__(self, param: str) -> None:
        super().__init__(f"Missing required parameter: '{param}'.", param=param)


class InvalidType(InvalidRequest):
    code = "invalid_type"


class InvalidImage(InvalidRequest):
    code = "invalid_image"


class ModelNotFound(ImagegateError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class ModerationBlocked(ImagegateError):
    status = 400
    type = "image_generation_user_error"
    code = "moderation_blocked"


# Refusals of a request's content, by code: OpenAI's, and the reverse interfaces' (seeds 000 and 002).
REFUSAL_CODES = frozenset({"moderation_blocked", "input_moderation", "output_moderation", "content_policy_violation"})


def is_refusal(exc: ImagegateError) -> bool:
    """Whether ``exc`` refuses what was asked (a moderation block, ours or an upstream's), rather than failing."""
    return isinstance(exc, ModerationBlocked) or (exc.status == 400 and exc.code in REFUSAL_CODES)


class AuthenticationFailed(ImagegateError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ImagegateError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFound(ImagegateError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(ImagegateError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(ImagegateError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(ImagegateError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(ImagegateError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class InsufficientQuota(ImagegateError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class RateLimited(ImagegateError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class EngineError(ImagegateError):
    """An engine failed before producing the images; nothing was delivered."""

    status = 502
    type = "server_error"
    code = "engine_error"


class EngineTimeout(EngineError):
    status = 504
    code = "engine_timeout"


class EngineOverloaded(ImagegateError):
    """An engine's queue is full: refused before anything ran, so a retry is safe. Met after the hold (the queue
    filled while it was placed), it is settled as free under every failure policy."""

    status = 503
    type = "server_error"
    code = "engine_overloaded"
    nothing_generated = True


class ServerError(ImagegateError):
    status = 500
    type = "server_error"
    code = "internal_error"


class UpstreamError(EngineError):
    """An upstream answered with an error or not at all.

    ``nothing_generated`` is True only when the failure proves the upstream did no work (connection refused,
    429, 502/503 before any body): only then may the request be retried or sent to another channel.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        type: str = "server_error",
        code: str | None = "upstream_error",
        param: str | None = None,
        nothing_generated: bool = False,
        retry_after: float | None = None,
        failure_policy: str = "refund",
        extra: dict | None = None,
    ) -> None:
        # A client given the upstream's 429 or 503 waits as long as the upstream asked (the SDK reads the header).
        headers = {"retry-after": str(math.ceil(retry_after))} \
            if status in (429, 503) and retry_after is not None and math.isfinite(retry_after) else None
        super().__init__(message, status=status, type=type, code=code, param=param, extra=extra, headers=headers)
        self.nothing_generated = nothing_generated
        self.retry_after = retry_after
        self.failure_policy = failure_policy
