"""Response encoding: lossless PNG, every format decodes at the same size, base64 unprefixed."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from app.media.encoding import encode_image


def result_like_image() -> Image.Image:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_png_is_lossless() -> None:
    image = result_like_image()
    encoded = encode_image(image, "png")
    decoded = Image.open(io.BytesIO(base64.b64decode(encoded.base64, validate=True)))
    assert (decoded.format, decoded.mode, encoded.mime_type) == ("PNG", "RGB", "image/png")
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


@pytest.mark.parametrize(("output_format", "pil_format"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_lossy_formats_keep_the_size(output_format: str, pil_format: str) -> None:
    encoded = encode_image(result_like_image(), output_format)
    assert not encoded.base64.startswith("data:")
    decoded = Image.open(io.BytesIO(base64.b64decode(encoded.base64, validate=True)))
    assert (decoded.format, decoded.size) == (pil_format, (48, 64))
    assert encoded.mime_type == f"image/{output_format}"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="png, jpeg, webp"):
        encode_image(result_like_image(), "gif")
