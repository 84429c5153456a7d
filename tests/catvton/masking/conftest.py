"""Masker fixtures: tiny masker checkpoints written once per session, and the masker they load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catvton.masking import AutoMasker, load_automasker, write_tiny_masker_weights


@pytest.fixture(scope="session")
def masker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CatVTON folder holding only the tiny SCHP/ and DensePose/ checkpoints."""
    catvton_dir = tmp_path_factory.mktemp("catvton")
    write_tiny_masker_weights(catvton_dir)
    return catvton_dir


@pytest.fixture(scope="session")
def tiny_masker(masker_dir: Path) -> AutoMasker:
    return load_automasker(masker_dir, device="cpu")


@pytest.fixture(scope="session")
def person_image() -> Image.Image:
    """A 96 x 128 RGB picture: a figure of flat colours on grey, generated in code."""
    pixels = np.full((128, 96, 3), 200, dtype=np.uint8)
    pixels[10:30, 38:58] = (230, 190, 160)  # head
    pixels[30:75, 28:68] = (40, 60, 160)  # shirt
    pixels[75:120, 32:64] = (30, 30, 30)  # trousers
    noise = np.random.default_rng(0).integers(0, 20, pixels.shape, dtype=np.uint8)
    return Image.fromarray(pixels + noise)
