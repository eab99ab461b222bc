"""``imagegate generate`` / ``imagegate edit``: a small client on the official openai SDK.

It works against imagegate or any OpenAI-compatible endpoint. Files are named from the prompt and never
overwrite an existing file (a counter suffix is added, as in the seed examples).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import sys
import unicodedata
from pathlib import Path

import httpx

from imagegate.keyfile import existing_key

LOCAL_BASE_URL = "http://127.0.0.1:8000/v1"


def slug(prompt: str, limit: int = 48) -> str:
    text = unicodedata.normalize("NFKC", prompt).strip().lower()
    text = re.sub(r"[^\w]+", "-", text, flags=re.UNICODE).strip("-_")
    return (text[:limit].rstrip("-_") or "image")


def unique_path(directory: Path, stem: str, ext: str) -> Path:
    """``stem_0.ext``, or the next free counter: never overwrite."""
    counter = 0
    while True:
        path = directory / f"{stem}_{counter}.{ext}"
        try:
            # O_EXCL makes the check and the claim one step, so two clients can't pick the same name.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            counter += 1
            continue
        os.close(fd)
        return path


def _resolve(args: argparse.Namespace) -> tuple[str, str]:
    base_url = args.base_url or os.environ.get("OPENAI_BASE_URL") or LOCAL_BASE_URL
    api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        api_key = next(iter(existing_key(args.data_dir)), None)
    if not api_key:
        raise SystemExit("imagegate: no API key: pass --api-key or set OPENAI_API_KEY")
    return base_url, api_key


def run(args: argparse.Namespace) -> int:
    from openai import OpenAI, OpenAIError
    from rich.console import Console

    console = Console(stderr=True)
    base_url, api_key = _resolve(args)
    client = OpenAI(base_url=base_url, api_key=api_key, timeout=httpx.Timeout(900, connect=10))
    params = {
        "model": args.model,
        "prompt": args.prompt,
        "size": args.size,
        "quality": args.quality,
        "n": args.n,
        "output_format": args.output_format,
        "background": args.background,
    }
    params = {k: v for k, v in params.items() if v is not None}
    try:
        with console.status(f"{'Editing' if args.operation == 'edit' else 'Generating'} with {args.model}…"):
            if args.operation == "edit":
                with contextlib.ExitStack() as stack:
                    files = [stack.enter_context(open(p, "rb")) for p in args.images]
                    mask = stack.enter_context(open(args.mask, "rb")) if args.mask else None
                    extra = {"mask": mask} if mask else {}
                    result = client.images.edit(image=files if len(files) > 1 else files[0], **extra, **params)
            else:
                result = client.images.generate(**params)
    except OpenAIError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    except OSError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    ext = (getattr(result, "output_format", None) or args.output_format or "png").replace("jpg", "jpeg")
    stem = slug(args.prompt)
    for item in result.data or []:
        if item.b64_json:
            data = base64.b64decode(item.b64_json.split(",", 1)[-1])
        elif item.url:
            response = httpx.get(item.url, timeout=120, follow_redirects=True)
            response.raise_for_status()
            data = response.content
        else:
            console.print("[yellow]an image came back empty; skipped[/yellow]")
            continue
        path = unique_path(args.out, stem, ext)
        path.write_bytes(data)
        print(path)
    if result.usage:
        u = result.usage
        print(f"usage: input_tokens={u.input_tokens} output_tokens={u.output_tokens} total_tokens={u.total_tokens}")
    sys.stdout.flush()
    return 0
