"""The cloth-type rules on hand-built label maps: a person drawn as rectangles in all three maps."""

from __future__ import annotations

import numpy as np
import pytest

from catvton.errors import InvalidInputError
from catvton.masking import CLOTH_TYPES, build_mask, parse_cloth_type
from catvton.masking.rules import ATR_LABELS, LIP_LABELS

WIDTH, HEIGHT = 384, 512

# name: (rows, cols, LIP label, ATR label, DensePose label); drawn in this order, later on top.
PERSON = {
    "hair": ((20, 40), (160, 224), "hair", "hair", 0),
    "face": ((40, 100), (160, 224), "face", "face", 23),
    "hat": ((5, 20), (160, 224), "hat", "hat", 0),
    "torso": ((110, 280), (120, 264), "upper-clothes", "upper-clothes", 1),
    "left upper arm": ((110, 190), (80, 120), "left arm", "left arm", 15),
    "left forearm": ((190, 260), (80, 120), "left arm", "left arm", 19),
    "left hand": ((260, 295), (80, 120), "left arm", "left arm", 3),
    "right upper arm": ((110, 190), (264, 304), "right arm", "right arm", 16),
    "right forearm": ((190, 260), (264, 304), "right arm", "right arm", 20),
    "right hand": ((260, 295), (264, 304), "right arm", "right arm", 4),
    "thighs": ((280, 360), (130, 254), "pants", "pants", 7),
    "lower legs": ((360, 440), (130, 254), "pants", "pants", 11),
    "left shin": ((440, 480), (130, 190), "left leg", "left leg", 13),
    "right shin": ((440, 480), (194, 254), "right leg", "right leg", 14),
    "left foot": ((480, 500), (130, 190), "left shoe", "left shoe", 5),
    "right foot": ((480, 500), (194, 254), "right shoe", "right shoe", 6),
    "bag": ((200, 260), (320, 360), "background", "bag", 0),  # LIP has no bag label
}


def draw_person(**overrides: tuple[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DensePose, ATR and LIP maps of `PERSON`; `overrides` swaps a region's (LIP, ATR) parts."""
    densepose, atr, lip = (np.zeros((HEIGHT, WIDTH), dtype=np.uint8) for _ in range(3))
    for name, ((top, bottom), (left, right), lip_part, atr_part, dp_label) in PERSON.items():
        lip_part, atr_part = overrides.get(name, (lip_part, atr_part))
        lip[top:bottom, left:right] = LIP_LABELS[lip_part]
        atr[top:bottom, left:right] = ATR_LABELS[atr_part]
        if dp_label:
            densepose[top:bottom, left:right] = dp_label
    return densepose, atr, lip


def region(name: str, margin: int = 0) -> tuple[slice, slice]:
    """The pixels of a drawn region, shrunk by `margin` on every side."""
    (top, bottom), (left, right) = PERSON[name][:2]
    return slice(top + margin, bottom - margin), slice(left + margin, right - margin)


def masked_fraction(mask: np.ndarray, name: str, margin: int = 0) -> float:
    return float((mask[region(name, margin)] == 255).mean())


# Growth near a boundary: the final dilation (3 px at 512) and the blur (about 10 px at 512).
EDGE = 4
DEEP = 24


@pytest.fixture(scope="module")
def masks() -> dict[str, np.ndarray]:
    densepose, atr, lip = draw_person()
    return {cloth_type: build_mask(densepose, atr, lip, cloth_type) for cloth_type in CLOTH_TYPES}


@pytest.mark.parametrize("cloth_type", CLOTH_TYPES)
def test_mask_is_binary_at_the_input_size(masks: dict[str, np.ndarray], cloth_type: str) -> None:
    mask = masks[cloth_type]
    assert mask.shape == (HEIGHT, WIDTH)
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}


@pytest.mark.parametrize("cloth_type", CLOTH_TYPES)
def test_hands_face_accessories_and_background_are_never_masked(
    masks: dict[str, np.ndarray], cloth_type: str
) -> None:
    """Shoes are kept too, but only weakly: the blur may grow a garment mask into their edge."""
    mask = masks[cloth_type]
    for name in ("face", "left hand", "right hand", "hat", "bag"):
        assert masked_fraction(mask, name, EDGE) == 0, name
    for name in ("left foot", "right foot"):
        assert masked_fraction(mask, name) < 0.5, name
    assert not mask[:, :40].any() and not mask[:, -40:].any()  # background beside the person
    assert not mask[-8:].any()


def test_upper_masks_torso_and_arms_and_keeps_legs(masks: dict[str, np.ndarray]) -> None:
    mask = masks["upper"]
    assert masked_fraction(mask, "torso") == 1
    for arm in ("left upper arm", "left forearm", "right upper arm", "right forearm"):
        assert masked_fraction(mask, arm, EDGE) == 1, arm
    assert masked_fraction(mask, "lower legs") == 0
    assert masked_fraction(mask, "thighs", DEEP) == 0
    assert masked_fraction(mask, "left shin", EDGE) == 0


def test_lower_masks_legs_and_keeps_arms_face_and_top(masks: dict[str, np.ndarray]) -> None:
    mask = masks["lower"]
    assert masked_fraction(mask, "thighs") == 1
    assert masked_fraction(mask, "lower legs") == 1
    for kept in ("left upper arm", "right forearm"):
        assert masked_fraction(mask, kept, EDGE) == 0, kept
    assert masked_fraction(mask, "torso", DEEP) == 0


def test_overall_masks_top_and_bottom(masks: dict[str, np.ndarray]) -> None:
    mask = masks["overall"]
    for garment in ("torso", "thighs", "lower legs"):
        assert masked_fraction(mask, garment) == 1, garment


def test_inner_masks_the_top_and_keeps_the_trousers(masks: dict[str, np.ndarray]) -> None:
    mask = masks["inner"]
    assert masked_fraction(mask, "torso") == 1
    assert masked_fraction(mask, "thighs", DEEP) == 0
    assert masked_fraction(mask, "lower legs") == 0


def test_outer_masks_the_coat_and_keeps_the_shirt_under_it() -> None:
    """An open coat: coat on the arms (LIP coat; ATR has no coat and says upper-clothes)."""
    coat = ("coat", "upper-clothes")
    densepose, atr, lip = draw_person(
        **{
            arm: coat
            for arm in ("left upper arm", "left forearm", "right upper arm", "right forearm")
        }
    )
    mask = build_mask(densepose, atr, lip, "outer")
    for arm in ("left upper arm", "left forearm", "right upper arm", "right forearm"):
        assert masked_fraction(mask, arm) == 1, arm
    assert masked_fraction(mask, "torso", DEEP) == 0
    assert masked_fraction(mask, "thighs", DEEP) == 0


def test_garment_pixels_are_masked_even_where_the_region_rules_would_not() -> None:
    """A dress across the trousers area is masked for `upper`, though legs are kept there."""
    densepose, atr, lip = draw_person(thighs=("dress", "dress"))
    mask = build_mask(densepose, atr, lip, "upper")
    assert masked_fraction(mask, "thighs") == 1
    assert masked_fraction(mask, "lower legs", DEEP) == 0


def test_densepose_hands_protect_only_skin() -> None:
    """DensePose hand labels over a garment do not protect it: hands count only on arm/leg skin."""
    densepose, atr, lip = draw_person()
    densepose[region("torso", DEEP)] = 3
    mask = build_mask(densepose, atr, lip, "upper")
    assert masked_fraction(mask, "torso") == 1


def test_maps_of_different_sizes_are_refused() -> None:
    densepose, atr, lip = draw_person()
    with pytest.raises(InvalidInputError, match="equal in size"):
        build_mask(densepose, atr[:-4], lip, "upper")


def test_empty_maps_are_refused() -> None:
    empty = np.zeros((0, 8), dtype=np.uint8)
    with pytest.raises(InvalidInputError, match="non-empty"):
        build_mask(empty, empty, empty, "upper")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("upper", "upper"),
        ("UPPER", "upper"),
        ("upper_body", "upper"),
        ("tops", "upper"),
        ("lower_body", "lower"),
        ("Bottoms", "lower"),
        ("dresses", "overall"),
        ("one-pieces", "overall"),
        ("inner", "inner"),
        ("outer", "outer"),
    ],
)
def test_cloth_type_aliases(name: str, expected: str) -> None:
    assert parse_cloth_type(name) == expected


def test_unknown_cloth_type_lists_the_allowed_values() -> None:
    with pytest.raises(InvalidInputError, match="cloth_type must be one of upper, lower, overall"):
        parse_cloth_type("hat")
