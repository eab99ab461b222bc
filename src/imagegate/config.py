"""Settings, read once at start-up and passed down as one object.

Precedence, lowest first: the defaults below < a TOML file (``--config``) < ``IMAGEGATE_*`` environment variables
< command-line flags. Nothing else in the code base reads the environment.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "IMAGEGATE_"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the bad entry."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    data_dir: Path = Path("imagegate-data")
    # Static bearer keys. Empty means: create one on first start and keep it in the data dir.
    api_keys: tuple[str, ...] = ()
    # Where signed image URLs point. Empty: derived from each request's own Host, which is right for a single
    # server; set it behind a proxy or load balancer.
    public_base_url: str = ""
    url_ttl_seconds: int = Field(7 * 24 * 3600, ge=1)
    janitor_interval_seconds: float = Field(600.0, gt=0)
    # Uploads: OpenAI allows 50 MB per image; a request carries up to 16 images plus a mask.
    max_image_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    max_request_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    # Decoding more pixels than this is refused as a decompression bomb.
    max_input_pixels: int = Field(40_000_000, ge=4096)
    # The sandbox engine's simulated generation time, so progress and timeouts can be exercised.
    sandbox_latency_ms: int = Field(20, ge=0)
    # Jobs one engine runs at once; the rest wait in a FIFO queue whose positions chat streams show.
    engine_concurrency: int = Field(4, ge=1)
    # Reference images in chat messages may be http(s) URLs; they are fetched with these limits.
    image_fetch_timeout_seconds: float = Field(20.0, gt=0)
    allow_private_image_urls: bool = False
    # Prompt guard: block | rewrite | off.
    guard_policy: Literal["block", "rewrite", "off"] = "block"
    guard_rule_files: tuple[Path, ...] = ()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("api_keys", "guard_rule_files", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    return values


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                values.update(tomllib.load(fh))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {config_file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: {exc}") from None
    values.update(_from_env(environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"bad setting '{where}': {first['msg']}") from None
