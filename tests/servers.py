"""Real servers on loopback ports for the tests: uvicorn in a thread of its own."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import uvicorn

from imagegate.app import create_app
from imagegate.config import Settings
from imagegate.serving import uvicorn_options

TEST_KEY = "sk-test-imagegate-0123456789"
EXE = Path(sys.executable).parent / "imagegate"


def clean_env(extra: dict | None = None) -> dict[str, str]:
    """This environment without the variables that would configure a command behind a test's back."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "IMAGEGATE_"))}
    env.update(extra or {})
    return env


@contextlib.contextmanager
def serve_process(*args: str, cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """``imagegate serve ARGS`` in a process of its own (stdout and stderr merged), stopped afterwards."""
    proc = subprocess.Popen([str(EXE), "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=clean_env(), cwd=cwd)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_healthy(port: int, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    """Until ``/healthz`` answers; fails with the server's output if its process (``proc``) exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            output = proc.stderr or proc.stdout
            raise AssertionError(f"serve exited: {output.read() if output else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server on port {port} did not come up in {timeout:.0f} s")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """``imagegate ARGS`` in a process of its own."""
    return subprocess.run([str(EXE), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=clean_env(env))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    app: object
    server: uvicorn.Server
    thread: threading.Thread
    port: int
    settings: Settings

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_server(data_dir: Path, **overrides) -> LiveServer:
    port = free_port()
    values = {
        "host": "127.0.0.1",
        "port": port,
        "data_dir": data_dir,
        "api_keys": (TEST_KEY,),
        "sandbox_latency_ms": 0,
        "shutdown_grace_seconds": 0,  # tests stop servers with work left on purpose; those that test it set it
    }
    values.update(overrides)
    settings = Settings(**values)
    app = create_app(settings)
    graceful = {"timeout_graceful_shutdown": overrides["shutdown_grace_seconds"]} \
        if "shutdown_grace_seconds" in overrides else {}  # as `serve` does; otherwise stop waits for connections
    config = uvicorn.Config(app, **uvicorn_options(host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                                   **graceful))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_healthy(port, timeout=20)
    return LiveServer(app, server, thread, port, settings)
