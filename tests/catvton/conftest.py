"""Fixtures of the library's tests: generated inputs for the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def images() -> tuple[Image.Image, Image.Image, Image.Image]:
    """A person (tall, patterned), a garment (square) and a mask over the torso, all generated."""
    rng = np.random.default_rng(0)
    person = Image.fromarray(rng.integers(0, 256, (400, 240, 3), dtype=np.uint8))
    cloth = Image.fromarray(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8))
    mask = Image.new("L", person.size, 0)
    mask.paste(255, (60, 100, 180, 260))
    return person, cloth, mask
