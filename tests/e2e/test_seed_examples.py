"""The seeds' own Python examples, run unchanged but for the base URL and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.imaging_helpers import mask_bytes, png_bytes
from tests.servers import TEST_KEY

EXAMPLES = Path(__file__).resolve().parents[1] / "seed_examples"
PROVIDERS = ["https://aihubmix.com/v1", "https://api.modelverse.cn/v1"]
KEYS = ['"AIHUBMIX_API_KEY"', '"YOUR_API_KEY"', "'$MODELVERSE_API_KEY'"]


def _run_example(name: str, server, cwd: Path) -> str:
    source = (EXAMPLES / name).read_text()
    for provider in PROVIDERS:
        source = source.replace(provider, server.base_url)
    for key in KEYS:
        source = source.replace(key, repr(TEST_KEY))
    script = cwd / name
    script.write_text(source)
    done = subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_seed_001_generate_and_save_loop(server, tmp_path):
    (tmp_path / "image_gen_0.png").write_bytes(b"an older file the loop must not overwrite")
    out = _run_example("seed001_generate.py", server, tmp_path)
    assert "output_tokens=6240" in out  # gpt-image-1, high, 1024x1536: the seed's own figure
    assert "Image saved to: ./image_gen_1.png" in out
    assert (tmp_path / "image_gen_0.png").read_bytes().startswith(b"an older file")
    assert Image.open(tmp_path / "image_gen_1.png").size == (1024, 1536)


def test_seed_001_reverse_model_generate(server, tmp_path):
    out = _run_example("seed001_reverse_generate.py", server, tmp_path)
    assert "Image saved to: ./image_gen-reverse_0.png (base64)" in out
    assert Image.open(tmp_path / "image_gen-reverse_0.png").size == (1024, 1536)


def test_seed_004_sdk_generate(server, tmp_path):
    out = _run_example("seed004_sdk_generate.py", server, tmp_path)
    assert "Saved to image.png" in out
    assert Image.open(tmp_path / "image.png").size == (1024, 1024)


def test_seed_004_requests_multipart_edit_with_mask(server, tmp_path):
    (tmp_path / "beach.png").write_bytes(png_bytes(1024, 1024, (230, 210, 160, 255)))
    (tmp_path / "mask.png").write_bytes(mask_bytes(1024, 1024, (384, 384, 640, 640)))
    out = _run_example("seed004_requests_edit.py", server, tmp_path)
    assert "Saved to edit.png" in out
    edited = Image.open(tmp_path / "edit.png").convert("RGB")
    assert edited.size == (1024, 1024)
    assert edited.getpixel((50, 50)) == (230, 210, 160)  # outside the mask: untouched
    assert edited.getpixel((512, 512)) != (230, 210, 160)  # inside: repainted
