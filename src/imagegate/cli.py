"""The one entry point: ``imagegate serve | generate | edit | accounts | keys | usage | db``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from imagegate.config import ConfigError, load_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from imagegate.config import metering_enabled
    from imagegate.keyfile import KEY_FILE, ensure_api_keys
    from imagegate.serving import WORKER_ENV, check_in_subprocess, configure_logging, run_workers, uvicorn_options

    overrides = {"host": args.host, "port": args.port, "data_dir": args.data_dir, "workers": args.workers}
    try:
        settings = load_settings(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"imagegate: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    metered = metering_enabled(settings)
    # With metering on, keys come from `imagegate keys create`; no unmetered key is made behind the operator's back.
    created = ensure_api_keys(settings)[1] if not metered else None
    try:
        if settings.workers == 1:
            from imagegate.app import create_app

            app = create_app(settings)
        else:
            # Built and checked once in a throwaway process: a bad setting stops the start here instead of
            # failing every worker over and over, and this supervisor stays small (it only watches the workers).
            problem = check_in_subprocess(settings)
            if problem:
                raise ConfigError(problem)
    except ConfigError as exc:
        print(f"imagegate: {exc}", file=sys.stderr)
        return 2
    if created:
        print(f"Created an API key (kept in {settings.data_dir / KEY_FILE}):\n{created}", flush=True)
    elif metered:
        print("Metered: accounts and keys from `imagegate accounts create` / `imagegate keys create`", flush=True)
    elif not settings.api_keys:
        print(f"API key: see {settings.data_dir / KEY_FILE}", flush=True)
    workers = f", {settings.workers} worker processes" if settings.workers > 1 else ""
    print(f"imagegate serving on http://{settings.host}:{settings.port}/v1 (data in {settings.data_dir}{workers})",
          flush=True)
    common = uvicorn_options(host=settings.host, port=settings.port, log_level=settings.log_level,
                             timeout_graceful_shutdown=settings.shutdown_grace_seconds)
    if settings.workers == 1:
        uvicorn.run(app, **common)
        return 0
    # Workers are fresh processes, started again when one dies: they take the settings as read here, once, so that
    # a config file edited since (or an environment changed) reaches no worker before the server restarts.
    os.environ[WORKER_ENV] = settings.model_dump_json()
    return run_workers(settings.workers, **common)


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt")
    parser.add_argument("--model", default="gpt-image-1.5")
    parser.add_argument("--size", default=None)
    parser.add_argument("--quality", default=None)
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--format", dest="output_format", default=None, help="png, jpeg or webp")
    parser.add_argument("--background", default=None, help="transparent, opaque or auto")
    parser.add_argument("--out", type=Path, default=Path("."), help="directory to save into")
    parser.add_argument("--base-url", default=None, help="default: $OPENAI_BASE_URL, else the local server")
    parser.add_argument("--api-key", default=None, help="default: $OPENAI_API_KEY, else the local data dir's key")
    parser.add_argument("--data-dir", type=Path, default=Path("imagegate-data"), help=argparse.SUPPRESS)


def _client(args: argparse.Namespace) -> int:
    from imagegate import client

    return client.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagegate", description="OpenAI-compatible image-generation gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--data-dir", type=Path, default=None)
    serve.add_argument("--config", type=Path, default=None, help="TOML settings file")
    serve.add_argument("--workers", type=int, default=None, help="server processes (default 1)")
    serve.set_defaults(func=_serve)

    generate = sub.add_parser("generate", help="generate images through any OpenAI-compatible endpoint")
    _client_args(generate)
    generate.set_defaults(func=_client, operation="generate")

    edit = sub.add_parser("edit", help="edit images through any OpenAI-compatible endpoint")
    _client_args(edit)
    edit.add_argument("images", nargs="+", type=Path)
    edit.add_argument("--mask", type=Path, default=None)
    edit.set_defaults(func=_client, operation="edit")

    from imagegate.admin_cli import add_commands

    add_commands(sub)  # accounts, keys, usage, db
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
