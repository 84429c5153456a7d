"""Debug output for people: each label map as a label PNG and a coloured PNG, plus the mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from catvton.masking.automasker import MaskResult


def label_palette(num_colors: int = 256) -> list[int]:
    """A flat RGB palette of distinct colours (the PASCAL VOC bit-spreading scheme); 0 is black."""
    palette = []
    for label in range(num_colors):
        red = green = blue = 0
        for bit in range(8):
            red |= ((label >> (3 * bit)) & 1) << (7 - bit)
            green |= ((label >> (3 * bit + 1)) & 1) << (7 - bit)
            blue |= ((label >> (3 * bit + 2)) & 1) << (7 - bit)
        palette += [red, green, blue]
    return palette


def colorize_labels(labels: np.ndarray) -> Image.Image:
    """An RGB picture of an (H, W) uint8 label map."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(label_palette())
    return image.convert("RGB")


def save_debug_maps(result: MaskResult, directory: str | Path) -> list[Path]:
    """Write `{densepose,atr,lip}.png` (mode L, pixel = label id), `*_color.png` and `mask.png`.

    Creates `directory` if needed; returns the written paths.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, labels in (("densepose", result.densepose), ("atr", result.atr), ("lip", result.lip)):
        label_path, color_path = directory / f"{name}.png", directory / f"{name}_color.png"
        Image.fromarray(labels.astype(np.uint8), mode="L").save(label_path)
        colorize_labels(labels).save(color_path)
        written += [label_path, color_path]
    mask_path = directory / "mask.png"
    result.mask.save(mask_path)
    return [*written, mask_path]
