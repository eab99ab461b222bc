"""Relay benchmark: imagegate vs LiteLLM proxy vs nginx, all in front of the same local upstream stand-in.

The upstream answers every POST /v1/images/generations with a realistic gpt-image answer: a 1024x1024 PNG as
b64_json (about 4 MB of JSON) plus usage. It is a static file served by its own nginx, so that the upstream costs
the same for every contender. Load comes from wrk on the same machine.

Run by hand (never in the test suite):  python bench/relay/run.py [--duration 10]
It needs nginx and wrk (Debian packages) and creates bench/.venv-litellm with a pinned LiteLLM on first use.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LITELLM_VERSION = "1.106.2"
LITELLM_VENV = REPO / "bench" / ".venv-litellm"
KEY = "sk-bench-0123456789"
BODY = json.dumps({"model": "gpt-image-1", "prompt": "a lighthouse at dawn", "size": "1024x1024", "quality": "high"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 60, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2, headers=headers or {})
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def payload() -> bytes:
    rng = np.random.default_rng(7)
    # Smooth noise compresses like a real picture (about 3 MB as PNG), not like a flat colour.
    small = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((1024, 1024), Image.BICUBIC)
    noise = rng.integers(-12, 12, (1024, 1024, 3))
    pixels = np.clip(np.asarray(image, dtype=np.int32) + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    usage = {"input_tokens": 9, "input_tokens_details": {"text_tokens": 9, "image_tokens": 0}, "output_tokens": 4160,
             "total_tokens": 4169}
    body = {"created": 1763700000, "data": [{"b64_json": base64.b64encode(out.getvalue()).decode()}],
            "background": "opaque", "output_format": "png", "quality": "high", "size": "1024x1024", "usage": usage}
    return json.dumps(body).encode()


def nginx(workdir: Path, name: str, server_block: str) -> subprocess.Popen:
    conf = workdir / f"{name}.conf"
    conf.write_text(f"""
worker_processes auto;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}.error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/{name}-body;
    proxy_temp_path {workdir}/{name}-proxy;
    fastcgi_temp_path {workdir}/{name}-fcgi;
    uwsgi_temp_path {workdir}/{name}-uwsgi;
    scgi_temp_path {workdir}/{name}-scgi;
    keepalive_requests 100000;
    {server_block}
}}
""")
    return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(workdir)], stderr=subprocess.DEVNULL)


def ensure_litellm() -> Path:
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
                       check=True)
    return exe


def rss_mb(pids: list[int]) -> float:
    """Peak resident memory (VmHWM) summed over the server's processes."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        total += int(match.group(1)) if match else 0
    return total / 1024


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)
    return total


def children(pid: int) -> list[int]:
    """The process and all its descendants (a server's workers, and theirs)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid] + [p for child in out for p in children(int(child))]


def wrk(url: str, connections: int, duration: int, workdir: Path, key: str = KEY) -> dict:
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(BODY)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("RESULT %d %d %d %d\\n", summary.requests, summary.duration,'
        " latency:percentile(50), summary.errors.status + summary.errors.connect + summary.errors.read"
        " + summary.errors.timeout))\n"
        "end\n"
    )
    threads = min(2, connections)
    done = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "30s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    )
    requests, micros, p50, errors = map(int, re.search(r"RESULT (\d+) (\d+) (\d+) (\d+)", done.stdout).groups())
    return {"rps": requests / (micros / 1e6), "p50_ms": p50 / 1000, "errors": errors, "requests": requests}


def check(url: str, key: str = KEY) -> None:
    response = httpx.post(url, content=BODY, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                          timeout=60)
    response.raise_for_status()
    image = response.json()["data"][0]["b64_json"]
    assert base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n", "the relay did not return the image"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="measure every contender this many times; medians")
    parser.add_argument("--only", nargs="*", default=["nginx", "imagegate", "litellm"],
                        choices=["nginx", "imagegate", "imagegate-buffered", "litellm", "floor", "floor-buffered"],
                        help="contenders; imagegate-buffered is imagegate with stream_through off; floor and "
                             "floor-buffered are the bare Python relays of floor.py")
    parser.add_argument("--out", default=str(HERE / "results.json"), help="where the raw numbers go")
    parser.add_argument("--database-url", default="",
                        help="imagegate's ledger database (default: SQLite in its data dir)")
    parser.add_argument("--unmetered", dest="metered", action="store_false",
                        help="imagegate with a static key only (no accounts, no ledger)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="server processes for imagegate and LiteLLM (default: one per core, as nginx's auto)")
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install nginx wrk", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="imagegate-bench-"))
    workdir.chmod(0o755)  # nginx workers run as another user
    body = payload()
    (workdir / "answer.json").write_bytes(body)
    # nginx checks that the POSTed path exists before answering 405, which error_page turns into the answer.
    (workdir / "v1" / "images").mkdir(parents=True)
    (workdir / "v1" / "images" / "generations").write_bytes(b"")
    for path in workdir.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    up_port = free_port()
    procs: list[subprocess.Popen] = []
    results: dict[str, dict] = {}
    try:
        procs.append(nginx(workdir, "upstream", f"""
    server {{
        listen 127.0.0.1:{up_port};
        location = /v1/images/generations {{
            # A static file answers GET only; turn the POST's 405 into the canned answer.
            error_page 405 =200 /answer.json;
            root {workdir};
            default_type application/json;
        }}
        location = /answer.json {{ root {workdir}; default_type application/json; }}
    }}"""))
        upstream = f"http://127.0.0.1:{up_port}/v1"
        time.sleep(0.5)
        targets: dict[str, tuple[str, subprocess.Popen]] = {}
        keys: dict[str, str] = {}

        if "nginx" in args.only:
            port = free_port()
            proc = nginx(workdir, "proxy", f"""
    upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 64m;
        location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}""")
            procs.append(proc)
            targets["nginx"] = (f"http://127.0.0.1:{port}/v1/images/generations", proc)

        for name, stream_through in (("imagegate", "true"), ("imagegate-buffered", "false")):
            if name not in args.only:
                continue
            # imagegate-buffered: the same server with the channel's stream_through off (whole answer read first).
            port = free_port()
            config = workdir / f"{name}.toml"
            config.write_text(f"""
api_keys = ["{KEY}"]
log_level = "warning"
[[channels]]
name = "upstream"
type = "openai"
base_url = "{upstream}"
api_key = "upstream-key"
models = ["gpt-image-1"]
concurrency = 64
stream_through = {stream_through}
""")
            exe = Path(sys.executable).parent / "imagegate"
            data = ["--data-dir", str(workdir / f"{name}-data")]
            if args.database_url:
                data += ["--database-url", args.database_url]
            if args.metered:
                # Billing on: a metered account whose every request is held and settled in the ledger.
                subprocess.run([str(exe), "accounts", "create", f"bench-{name}", "--balance", "1000000", *data],
                               check=True, stdout=subprocess.DEVNULL)
                made = subprocess.run([str(exe), "keys", "create", "--account", f"bench-{name}", *data], check=True,
                                      capture_output=True, text=True)
                keys[name] = made.stdout.strip().splitlines()[-1]
            env = {**os.environ, "IMAGEGATE_DATABASE_URL": args.database_url} if args.database_url else None
            proc = subprocess.Popen([str(exe), "serve", "--port", str(port), *data[:2],
                                     "--config", str(config), "--workers", str(args.workers)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            procs.append(proc)
            targets[name] = (f"http://127.0.0.1:{port}/v1/images/generations", proc)

        for name, mode in (("floor", "stream"), ("floor-buffered", "buffered")):
            if name in args.only:
                port = free_port()
                proc = subprocess.Popen([sys.executable, str(HERE / "floor.py"), "--upstream", f"http://127.0.0.1:{up_port}",
                                         "--port", str(port), "--mode", mode, "--workers", str(args.workers)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                procs.append(proc)
                targets[name] = (f"http://127.0.0.1:{port}/v1/images/generations", proc)

        if "litellm" in args.only:
            exe = ensure_litellm()
            port = free_port()
            config = workdir / "litellm.yaml"
            config.write_text(f"""
model_list:
  - model_name: gpt-image-1
    litellm_params:
      model: openai/gpt-image-1
      api_base: {upstream}
      api_key: upstream-key
general_settings:
  master_key: {KEY}
litellm_settings:
  set_verbose: false
""")
            env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "true"}
            proc = subprocess.Popen([str(exe), "--config", str(config), "--port", str(port), "--host", "127.0.0.1",
                                     "--num_workers", str(args.workers)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=env)
            procs.append(proc)
            targets["litellm"] = (f"http://127.0.0.1:{port}/v1/images/generations", proc)

        for name, (url, proc) in targets.items():
            wait_http(url.rsplit("/v1/", 1)[0] + "/", timeout=120)
            check(url, keys.get(name, KEY))
            wrk(url, 4, 2, workdir, keys.get(name, KEY))  # warm-up
        # Rounds, each measuring every contender in turn; the median round counts. A shared 2-core machine drifts
        # over minutes, and nginx's proxy buffers big answers in temp files: their writeback slows the next
        # contender's fsyncs unless it has drained (hence the sync before each measurement).
        samples: dict[str, list[dict]] = {name: [] for name in targets}
        for round_ in range(args.rounds):
            for name, (url, proc) in targets.items():
                key = keys.get(name, KEY)
                os.sync()
                time.sleep(1)
                busy = wrk(url, 16, args.duration, workdir, key)
                os.sync()
                time.sleep(1)
                # The server's own CPU time per request at one connection: steadier than rates on a noisy host,
                # and what the relay's overhead is.
                pids = children(proc.pid)
                before = cpu_seconds(pids)
                idle = wrk(url, 1, args.duration, workdir, key)
                cpu_ms = (cpu_seconds(pids) - before) * 1000 / max(idle["requests"], 1)
                samples[name].append({"rps_16": busy["rps"], "errors_16": busy["errors"], "p50_ms_1": idle["p50_ms"],
                                      "cpu_ms_1": cpu_ms})
                print(f"round {round_ + 1}: {name:10s} {busy['rps']:8.1f} req/s @16  p50 {idle['p50_ms']:7.1f} ms @1  "
                      f"CPU {cpu_ms:5.2f} ms/request @1  errors {busy['errors']}", flush=True)
        for name, (url, proc) in targets.items():
            runs = samples[name]
            results[name] = {
                "rps_16": statistics.median(r["rps_16"] for r in runs),
                "p50_ms_1": statistics.median(r["p50_ms_1"] for r in runs),
                "cpu_ms_1": statistics.median(r["cpu_ms_1"] for r in runs),
                # Noise on a shared host only ever slows a contender down: the best round is what it can do.
                "rps_16_best": max(r["rps_16"] for r in runs),
                "p50_ms_1_best": min(r["p50_ms_1"] for r in runs),
                "errors_16": sum(r["errors_16"] for r in runs),
                "rss_mb": rss_mb(children(proc.pid)),
                "rounds": runs,
            }
            print(f"{name:10s} {results[name]['rps_16']:8.1f} req/s @16  p50 {results[name]['p50_ms_1']:7.1f} ms @1  "
                  f"CPU {results[name]['cpu_ms_1']:5.2f} ms/request  RSS {results[name]['rss_mb']:6.1f} MB  "
                  f"(medians of {len(runs)} rounds)", flush=True)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    def ratio(mine: dict, theirs: dict) -> str:
        return (f"req/s x{mine['rps_16'] / theirs['rps_16']:.2f}, p50 x{mine['p50_ms_1'] / theirs['p50_ms_1']:.2f}, "
                f"CPU x{mine['cpu_ms_1'] / theirs['cpu_ms_1']:.2f}"
                f"  (best rounds: x{mine['rps_16_best'] / theirs['rps_16_best']:.2f}, "
                f"x{mine['p50_ms_1_best'] / theirs['p50_ms_1_best']:.2f})")

    if "nginx" in results:
        for name, theirs in results.items():
            if name != "nginx":
                print(f"{name} / nginx: {ratio(theirs, results['nginx'])}")
    if "imagegate" in results:
        for other in ("litellm", "floor", "floor-buffered", "imagegate-buffered"):
            if other in results:
                print(f"imagegate / {other}: {ratio(results['imagegate'], results[other])}")
    Path(args.out).write_text(json.dumps({"payload_bytes": len(body), "imagegate_metered": args.metered,
                                                   "workers": args.workers, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
