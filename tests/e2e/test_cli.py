"""The command line: ``imagegate serve`` on a fresh data dir, and the generate/edit client."""

from __future__ import annotations

import time
from pathlib import Path

from openai import OpenAI
from PIL import Image

from tests.imaging_helpers import mask_bytes, png_bytes
from tests.servers import TEST_KEY, free_port, run_cli, serve_process, wait_healthy

def test_generate_names_files_from_the_prompt_and_never_overwrites(server, tmp_path):
    args = ["generate", "A red fox, in snow!", "--model", "gpt-image-1", "--size", "1024x1024", "--quality", "low",
            "--n", "2", "--out", str(tmp_path / "out"), "--base-url", server.base_url, "--api-key", TEST_KEY]
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [f"a-red-fox-in-snow_{i}.png" for i in range(4)]
    assert str(tmp_path / "out" / "a-red-fox-in-snow_0.png") in first.stdout
    assert "usage: input_tokens=" in first.stdout and "output_tokens=544" in first.stdout
    assert Image.open(tmp_path / "out" / "a-red-fox-in-snow_3.png").size == (1024, 1024)


def test_generate_reads_openai_environment(server, tmp_path):
    done = run_cli("generate", "a blue kite", "--model", "dall-e-2", "--size", "256x256", "--out", str(tmp_path),
                cwd=tmp_path, env={"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": TEST_KEY})
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.splitlines()[0])
    assert Image.open(path).size == (256, 256)  # a url answer, downloaded


def test_edit_with_mask(server, tmp_path):
    (tmp_path / "base.png").write_bytes(png_bytes(1024, 1024, (20, 200, 20, 255)))
    (tmp_path / "mask.png").write_bytes(mask_bytes(1024, 1024, (0, 0, 512, 512)))
    done = run_cli("edit", "add a sun", str(tmp_path / "base.png"), "--mask", str(tmp_path / "mask.png"),
                "--model", "gpt-image-1.5", "--size", "1024x1024", "--quality", "low", "--format", "webp",
                "--out", str(tmp_path / "edits"), "--base-url", server.base_url, "--api-key", TEST_KEY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = tmp_path / "edits" / "add-a-sun_0.webp"
    image = Image.open(saved)
    assert image.format == "WEBP" and image.size == (1024, 1024)
    assert image.convert("RGB").getpixel((900, 900)) == (20, 200, 20)


def test_client_error_is_reported(server, tmp_path):
    done = run_cli("generate", "x", "--model", "gpt-image-1", "--size", "1000x1000", "--base-url", server.base_url,
                "--api-key", TEST_KEY, cwd=tmp_path)
    assert done.returncode == 1
    assert "1000x1000" in done.stderr


def test_serve_creates_a_key_on_first_start(tmp_path):
    port = free_port()
    data_dir = tmp_path / "data"
    with serve_process("--port", str(port), "--data-dir", str(data_dir), cwd=tmp_path) as proc:
        lines = []
        deadline = time.monotonic() + 30
        key = None
        while time.monotonic() < deadline and key is None:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("sk-ig-"):
                key = line.strip()
        assert key, "".join(lines)
        assert (data_dir / "api_key.txt").read_text().strip() == key
        wait_healthy(port, proc)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        result = client.images.generate(model="gpt-image-2", prompt="a quiet harbour", size="1024x1024", quality="low")
        assert result.usage.output_tokens == 196


def test_serve_refuses_a_bad_config_in_one_line(tmp_path):
    config = tmp_path / "imagegate.toml"
    config.write_text('port = "not a port"\n')
    done = run_cli("serve", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "port" in done.stderr


def test_serve_refuses_a_bad_guard_rule_file_in_one_line(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text("not = [toml\n")
    config = tmp_path / "imagegate.toml"
    config.write_text(f"guard_rule_files = [{str(rules)!r}]\n")
    done = run_cli("serve", "--config", str(config), "--port", "0", cwd=tmp_path)
    assert done.returncode == 2  # a configuration problem, not a crash with a traceback
    assert done.stderr.strip().count("\n") == 0 and "guard_rule_files" in done.stderr and "invalid TOML" in done.stderr
