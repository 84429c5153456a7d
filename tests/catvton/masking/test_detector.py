"""Pieces of the DensePose inference against detectron2's documented behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from catvton.masking.detector import (
    apply_deltas,
    clip_boxes,
    grid_anchors,
    pool_boxes,
    resize_for_detector,
    shortest_edge_size,
)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1024, 768), (1067, 800)),  # the working size is enlarged: short edge 800
        ((128, 96), (1067, 800)),
        ((800, 1200), (800, 1200)),
        ((1000, 3000), (444, 1333)),  # long edge capped at 1333
    ],
)
def test_shortest_edge_resize(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert shortest_edge_size(*size) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1000, 1504), (680, 1024)),  # 1000 * 1024 / 1504 = 680.85: truncated (rounding gave 681)
        ((3000, 8), (1024, 2)),  # 8 * 1024 / 3000 = 2.73
        ((8, 9000), (1, 1024)),  # 0.91 would be 0: the side keeps 1 px
        ((2304, 3072), (768, 1024)),  # exactly a third
        ((768, 1024), (768, 1024)),  # not above 1024: untouched
        ((1024, 1024), (1024, 1024)),
    ],
)
def test_the_detector_input_is_capped_at_1024_with_truncated_sides(size, expected) -> None:
    assert resize_for_detector(Image.new("RGB", size)).size == expected


def test_the_detector_input_is_shrunk_without_antialiasing() -> None:
    """At a third of the size, bilinear without antialiasing samples source column 3x + 1 exactly
    (the centre of output pixel x, (x + 0.5) * 3 - 0.5): a lit column of every three fills the
    whole output. An antialiasing filter would average it with its dark neighbours."""
    columns = np.zeros((3072, 2304, 3), dtype=np.uint8)
    columns[:, 1::3] = 200
    shrunk = np.asarray(resize_for_detector(Image.fromarray(columns)))
    assert shrunk.shape == (1024, 768, 3)
    assert (shrunk == 200).all()


def test_anchors_are_location_major_with_three_aspect_ratios() -> None:
    feature = torch.zeros(1, 1, 2, 3)  # 2 rows, 3 columns
    anchors = grid_anchors(feature, stride=4, size=32)
    assert anchors.shape == (2 * 3 * 3, 4)
    half_w, half_h = math.sqrt(32**2 / 0.5) / 2, 0.5 * math.sqrt(32**2 / 0.5) / 2
    torch.testing.assert_close(anchors[0], torch.tensor([-half_w, -half_h, half_w, half_h]))
    torch.testing.assert_close(anchors[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    torch.testing.assert_close(anchors[3] - anchors[0], torch.tensor([4.0, 0.0, 4.0, 0.0]))
    torch.testing.assert_close(anchors[9] - anchors[0], torch.tensor([0.0, 4.0, 0.0, 4.0]))


def test_box_deltas_move_and_scale_with_weights() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # 20 wide, 40 high, centre (20, 40)
    torch.testing.assert_close(apply_deltas(torch.zeros(1, 4), boxes), boxes)
    deltas = torch.tensor([[1.0, -2.0, math.log(2) * 5, 0.0]])
    moved = apply_deltas(deltas, boxes, (10.0, 10.0, 5.0, 5.0))
    # dx = 0.1 widths, dy = -0.2 heights, width doubled.
    torch.testing.assert_close(moved, torch.tensor([[2.0, 12.0, 42.0, 52.0]]))
    huge = apply_deltas(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), boxes)
    assert torch.isfinite(huge).all()  # log-size change clamped


def test_clip_boxes_to_the_image() -> None:
    boxes = torch.tensor([[-5.0, -1.0, 120.0, 90.0]])
    torch.testing.assert_close(clip_boxes(boxes, 80, 100), torch.tensor([[0.0, 0.0, 100.0, 80.0]]))


def test_each_box_is_pooled_from_the_level_its_size_picks() -> None:
    """Canonical 224 px at p4: 20 px -> p2, 112 -> p3, 224 -> p4, 448 and larger -> p5."""
    features = [torch.full((1, 2, 256 // s, 256 // s), float(level)) for level, s in
                zip((2, 3, 4, 5), (4, 8, 16, 32), strict=True)]  # fmt: skip
    boxes = torch.tensor(
        [[0.0, 0.0, 20.0, 20.0], [0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 448, 448]]
    )
    pooled = pool_boxes(features, boxes)
    assert pooled.shape == (4, 2, 7, 7)
    levels = pooled[:, 0, 0, 0]
    torch.testing.assert_close(levels, torch.tensor([2.0, 3.0, 4.0, 5.0]))
