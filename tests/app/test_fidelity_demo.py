"""Demo mode answers at production dimensions: the tiny model's result, upscaled to 768x1024."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from http_helpers import post_try_on, serve, try_on_parts, wait_until_ready
from PIL import Image

from app.settings import Settings


def test_demo_answers_have_the_production_size_and_say_they_are_upscaled(tmp_path: Path) -> None:
    settings = Settings(demo=True, demo_dir=tmp_path / "demo", device="cpu")
    with serve(settings) as base_url:
        health = wait_until_ready(base_url)
        assert tuple(health["size"]) == (768, 1024)
        assert "upscaled to 768x1024" in health["message"]
        assert "96x128" in health["message"]  # what the tiny model really runs at

        response = post_try_on(base_url, try_on_parts(num_inference_steps="10"))
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["width"], body["height"]) == (768, 1024)
        with Image.open(io.BytesIO(base64.b64decode(body["imageBase64"]))) as image:
            assert image.size == (768, 1024)


def test_demo_with_a_size_runs_the_tiny_model_at_that_size(tmp_path: Path) -> None:
    """--size in demo mode is the size asked for: the model runs at it, nothing is upscaled."""
    settings = Settings(demo=True, demo_dir=tmp_path / "demo", device="cpu", size="64x64")
    with serve(settings) as base_url:
        health = wait_until_ready(base_url)
        assert tuple(health["size"]) == (64, 64)
        assert "upscaled" not in health["message"]
        response = post_try_on(base_url, try_on_parts(num_inference_steps="10"))
        assert (response.json()["width"], response.json()["height"]) == (64, 64)
