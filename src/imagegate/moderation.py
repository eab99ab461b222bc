"""The optional second stage of the prompt guard: an OpenAI-compatible ``/v1/moderations`` endpoint.

It is consulted only after the local rules let a prompt through, so the common refusals cost no network call.
If the endpoint cannot be reached the request is refused rather than waved through: an operator who configured
a moderation stage wants it enforced.
"""

from __future__ import annotations

import logging

import httpx

from imagegate.errors import ModerationBlocked, UpstreamError

log = logging.getLogger("imagegate.moderation")


class ModerationClient:
    def __init__(self, base_url: str, api_key: str, model: str, client: httpx.AsyncClient, timeout_s: float = 10.0) -> None:
        self.url = base_url.rstrip("/") + "/moderations"
        self.api_key = api_key
        self.model = model
        self.client = client
        self.timeout_s = timeout_s

    async def check(self, prompt: str) -> None:
        """Raise ModerationBlocked when the endpoint flags the prompt."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"input": prompt}
        if self.model:
            body["model"] = self.model
        try:
            response = await self.client.post(self.url, json=body, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"The moderation service could not be reached ({type(exc).__name__}); the request was not run.",
                status=503, code="moderation_unavailable", nothing_generated=True,
            ) from None
        if response.status_code != 200:
            raise UpstreamError(
                f"The moderation service answered HTTP {response.status_code}; the request was not run.",
                status=503, code="moderation_unavailable", nothing_generated=True,
            )
        try:
            results = response.json()["results"]
            flagged = [r for r in results if r.get("flagged")]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UpstreamError(
                "The moderation service gave an unreadable answer; the request was not run.",
                status=503, code="moderation_unavailable", nothing_generated=True,
            ) from None
        if flagged:
            categories = sorted(
                {name for r in flagged for name, hit in (r.get("categories") or {}).items() if hit}
            )
            log.info("moderation stage blocked a prompt: %s", ", ".join(categories) or "flagged")
            raise ModerationBlocked(
                "Your request was rejected as a result of our safety system: the moderation check flagged "
                f"it ({', '.join(categories) or 'flagged'}). It was refused before reaching the model and cost nothing.",
                extra={"moderation_details": {"moderation_stage": "input", "categories": categories}},
            )
