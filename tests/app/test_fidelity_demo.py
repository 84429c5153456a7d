"""Demo mode answers at production dimensions: the tiny model's result, upscaled to 768x1024."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
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


def white_centre(mask_base64: str) -> tuple[float, float, float]:
    """(share of white pixels, centre x, centre y) of a PNG mask, as fractions of its size."""
    with Image.open(io.BytesIO(base64.b64decode(mask_base64))) as image:
        white = np.asarray(image.convert("L")) >= 128
    rows, columns = np.nonzero(white)
    if not rows.size:
        return 0.0, 0.5, 0.5
    height, width = white.shape
    return float(white.mean()), columns.mean() / width, rows.mean() / height


def test_demo_masks_show_where_each_garment_goes(tmp_path: Path) -> None:
    """The tiny masker's own masks were all black, so the page's "Show mask" showed nothing."""
    settings = Settings(demo=True, demo_dir=tmp_path / "demo", device="cpu")
    with serve(settings) as base_url:
        wait_until_ready(base_url)
        masks = {}
        for cloth_type in ("upper", "lower", "overall"):
            parts = try_on_parts(
                num_inference_steps="10", cloth_type=cloth_type, return_mask="true"
            )
            response = post_try_on(base_url, parts)
            assert response.status_code == 200, response.text
            masks[cloth_type] = white_centre(response.json()["maskBase64"])
    for share, centre_x, _ in masks.values():
        assert share > 0.05 and 0.4 < centre_x < 0.6  # a region in the middle of the frame
    assert masks["upper"][2] < 0.5 < masks["lower"][2]  # the top above the legs
    assert masks["overall"][0] > max(masks["upper"][0], masks["lower"][0])
