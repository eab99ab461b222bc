"""Settings, read once at start-up and passed down as one object.

Precedence, lowest first: the defaults below < a TOML file (``--config``) < ``IMAGEGATE_*`` environment variables
< command-line flags. Nothing else in the code base reads the environment.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from imagegate.tomlfile import read_toml

log = logging.getLogger("imagegate.config")
ENV_PREFIX = "IMAGEGATE_"
DB_FILE = "imagegate.db"  # the ledger's SQLite file in the data dir, when no database URL is set
WRITE_TIMEOUT_S = 60.0  # database_write_timeout_seconds' default


class ConfigError(Exception):
    """The configuration cannot be used; the message names the bad entry."""


class UnsetVariable(LookupError):
    """An ``env:NAME`` reference to a variable that is not set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def resolve_env(value: str, environ: Mapping[str, str]) -> str:
    """``env:NAME`` stands for that environment variable's value (UnsetVariable if it has none); anything else
    for itself."""
    if not value.startswith("env:"):
        return value
    if value[4:] not in environ:
        raise UnsetVariable(value[4:])
    return environ[value[4:]]


def first_error(exc: ValidationError) -> tuple[str, str]:
    """(where, what) of a validation error's first complaint: the dotted field name and pydantic's message."""
    first = exc.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["msg"]


class ChannelConfig(BaseModel):
    """One upstream: an OpenAI-compatible images API, or a chat-only image upstream."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    type: Literal["openai", "chat-image"] = "openai"
    base_url: str = Field(min_length=1)
    api_key: str = ""  # a literal, or env:NAME (resolved when settings are loaded)
    models: tuple[str, ...] = Field(min_length=1)  # public model ids this channel serves
    model_map: dict[str, str] = Field(default_factory=dict)  # public id -> the upstream's id
    priority: int = 0  # higher tiers are tried first
    weight: int = Field(1, ge=1)  # weighted random choice within a tier
    timeout_s: float = Field(300.0, gt=0)  # images take minutes; this is the whole-answer limit
    connect_timeout_s: float = Field(10.0, gt=0)
    concurrency: int = Field(8, ge=1)  # requests in flight to this upstream at once
    max_retries: int = Field(2, ge=0)  # retries on this channel, only for errors that prove nothing ran
    retry_after_send: bool = False  # the upstream is idempotent: a timeout after sending may be retried
    failure_policy: Literal["refund", "charge"] = "refund"  # "charge": the upstream bills failed calls
    drop_params: tuple[str, ...] | None = None  # None: the defaults for the channel type
    rename_params: dict[str, str] = Field(default_factory=dict)
    send_response_format: bool | None = None  # None: only for non-GPT models
    operations: tuple[Literal["generate", "edit"], ...] = ("generate", "edit")
    max_n: int | None = Field(None, ge=1)
    transparency: bool = True
    sizes: tuple[str, ...] | None = None  # sizes the upstream accepts; None: whatever the model allows
    circuit_failures: int = Field(3, ge=1)  # consecutive failures that open the circuit
    circuit_cooldown_s: float = Field(30.0, gt=0)
    max_download_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # url-only answers are fetched up to this
    # Forward a b64_json image to the client while the upstream still sends it, once its header checks out; off:
    # read and check the whole answer first (an error found later can then still be an error answer).
    stream_through: bool = True


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Server processes sharing the port. Each has its own event loop, so a busy relay uses every core; they share
    # the data dir and the database, while circuit breakers, channel concurrency caps and queues are per process.
    workers: int = Field(1, ge=1, le=64)
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
    # Requests one engine lets wait (per process) beyond those it runs; past it, new ones get a 503
    # engine_overloaded before anything is held. Each waiter keeps its request, input images included, in memory.
    engine_queue_limit: int = Field(100, ge=0)
    # Reference images in chat messages may be http(s) URLs; they are fetched with these limits.
    image_fetch_timeout_seconds: float = Field(20.0, gt=0)
    allow_private_image_urls: bool = False
    # Prompt guard: block | rewrite | off.
    guard_policy: Literal["block", "rewrite", "off"] = "block"
    guard_rule_files: tuple[Path, ...] = ()
    # Optional second guard stage: an OpenAI-compatible /v1/moderations endpoint consulted after the rules pass.
    moderation_url: str = ""  # e.g. https://api.openai.com/v1; empty: off
    moderation_api_key: str = ""
    moderation_model: str = "omni-moderation-latest"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # On SIGTERM: how long requests in flight, then runs whose clients left, get to finish before they are cut
    # off (each stage; keep the orchestrator's stop timeout above twice this).
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    # Accounts, keys and the ledger. auto: on when database_url or admin_token is set, or the data dir already
    # holds imagegate.db (`imagegate accounts create` or `db upgrade` makes it); off: static keys only, no database.
    metering: Literal["auto", "on", "off"] = "auto"
    database_url: str = ""  # empty: SQLite in data_dir/imagegate.db; or postgresql+asyncpg://user@host/db
    # SQLite: how long a write waits for its turn (held by another worker, the CLI, a hung process) before the
    # request gets 503 database_unavailable. PostgreSQL: the longest any statement may run.
    database_write_timeout_seconds: float = Field(WRITE_TIMEOUT_S, gt=0, le=3600)
    database_pool_size: int = Field(10, ge=1, le=500)  # PostgreSQL connections per server process (x2 at a peak)
    admin_token: str = ""  # guards /admin; empty: the admin API is off
    price_file: Path | None = None  # overrides the shipped price book (billing/prices.toml)
    hold_ttl_seconds: int = Field(3600, ge=60)  # a hold whose server stops heart-beating is released after this
    idempotency_ttl_seconds: int = Field(86400, ge=60)  # how long a retry with the same Idempotency-Key replays
    heartbeat_interval_seconds: float = Field(10.0, gt=0)
    # How long a server remembers a valid key instead of asking the database again. A revocation made through
    # another process (the CLI, another replica) takes effect within this; 0 asks the database every time.
    key_cache_seconds: float = Field(2.0, ge=0, le=300)
    channels: tuple[ChannelConfig, ...] = ()

    @field_validator("api_keys", "guard_rule_files", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("admin_token")
    @classmethod
    def _strip_token(cls, value: str) -> str:
        return value.strip()  # a bearer token is read stripped: " " would never match, and is no token

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"


# The IMAGEGATE_ variables that are not settings, and so are not warned about: `serve --workers N` hands its
# workers the settings it read, as JSON, in the first; the second names a PostgreSQL that the database tests also
# run on (.ci/run sets it), and the server never reads it.
WORKER_ENV = "IMAGEGATE_WORKER_SETTINGS"
TEST_DATABASE_ENV = "IMAGEGATE_TEST_DATABASE_URL"
NOT_SETTINGS_ENV = frozenset({WORKER_ENV, TEST_DATABASE_ENV})


def _is_path_setting(annotation: Any) -> bool:
    """A Path, an optional Path or a tuple of Paths."""
    return annotation is Path or any(_is_path_setting(arg) for arg in get_args(annotation))


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw == "" and _is_path_setting(field.annotation):
            continue  # `IMAGEGATE_DATA_DIR=` is how a shell unsets it (the default), not the current directory
        if raw is not None:
            values[name] = raw
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | NOT_SETTINGS_ENV
    for variable in sorted(set(environ) - known):
        if variable.startswith(ENV_PREFIX):
            # Warned, not refused: an environment holds what other tools set too. But a misspelt setting would
            # otherwise be silently ignored.
            log.warning("%s is not a setting and is ignored; see docs/configuration.md for the names", variable)
    return values


# With OPENAI_API_KEY set and no channel configured, the GPT image models go to OpenAI itself.
OPENAI_DEFAULT_MODELS = (
    "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "chatgpt-image-latest", "gpt-image-2",
    "gpt-image-2-2026-04-21", "gpt-image-2.5-sunburst", "gpt-image-2.5-flare", "gpt-image-2.5-sunburst-2026-09-08",
    "gpt-image-2.5-flare-2026-09-08", "gpt-image-2.6-sunburst", "gpt-image-2.6-flare",
)


def _resolve_channels(channels: list[Any], environ: Mapping[str, str]) -> list[Any]:
    if not channels and environ.get("OPENAI_API_KEY"):
        channels = [
            {
                "name": "openai",
                "type": "openai",
                # Not OPENAI_BASE_URL: clients set that to point at imagegate itself, which would loop.
                "base_url": "https://api.openai.com/v1",
                "api_key": "env:OPENAI_API_KEY",
                "models": list(OPENAI_DEFAULT_MODELS),
            }
        ]
    resolved = []
    for index, channel in enumerate(channels):
        if isinstance(channel, dict) and isinstance(channel.get("api_key"), str):
            try:
                channel = {**channel, "api_key": resolve_env(channel["api_key"], environ)}
            except UnsetVariable as exc:
                raise ConfigError(
                    f"bad setting 'channels.{index}.api_key': environment variable {exc.name} is not set") from None
        resolved.append(channel)
    return resolved


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_toml(config_file, "config file", ConfigError))
    values.update(_from_env(environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values["channels"] = _resolve_channels(values.get("channels") or [], environ)
    try:
        if isinstance(values.get("moderation_api_key"), str):
            values["moderation_api_key"] = resolve_env(values["moderation_api_key"], environ)
    except UnsetVariable as exc:
        raise ConfigError(f"bad setting 'moderation_api_key': environment variable {exc.name} is not set") from None
    try:
        return Settings(**values)
    except ValidationError as exc:
        where, what = first_error(exc)
        raise ConfigError(f"bad setting '{where}': {what}") from None


def metering_enabled(settings: Settings) -> bool:
    """Accounts and the ledger are on when asked for, or when there is a database to use: a database URL, an
    admin token, or the data dir's own database (``imagegate accounts create`` makes one)."""
    if settings.metering != "auto":
        return settings.metering == "on"
    return bool(settings.database_url or settings.admin_token) or (settings.data_dir / DB_FILE).exists()
