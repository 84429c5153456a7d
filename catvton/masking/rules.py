"""From three label maps and a cloth type to the repaint mask: plain numpy and OpenCV, no model.

The maps are DensePose body parts (0..24), ATR parsing (0..17) and LIP parsing (0..19), all at the
cropped person size. `build_mask` follows the 13 steps of the reference's mask rules; the tables
below are its "parts per cloth type" table, by part name, so each line can be checked by name.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from catvton.errors import InvalidInputError

CLOTH_TYPES = ("upper", "lower", "overall", "inner", "outer")
_CLOTH_TYPE_ALIASES = {
    "upper_body": "upper",
    "tops": "upper",
    "lower_body": "lower",
    "bottoms": "lower",
    "dresses": "overall",
    "one-pieces": "overall",
}
# Every name `parse_cloth_type` accepts (in any case): the canonical types, then the aliases.
CLOTH_TYPE_NAMES = (*CLOTH_TYPES, *_CLOTH_TYPE_ALIASES)

DENSEPOSE_PARTS = {
    "torso": (1, 2),
    "hands": (3, 4),
    "feet": (5, 6),
    "thighs": (7, 8, 9, 10),
    "lower legs": (11, 12, 13, 14),
    "upper arms": (15, 16, 17, 18),
    "forearms": (19, 20, 21, 22),
    "face": (23, 24),
}
ATR_LABELS = {
    "background": 0, "hat": 1, "hair": 2, "sunglasses": 3, "upper-clothes": 4, "skirt": 5,
    "pants": 6, "dress": 7, "belt": 8, "left shoe": 9, "right shoe": 10, "face": 11,
    "left leg": 12, "right leg": 13, "left arm": 14, "right arm": 15, "bag": 16, "scarf": 17,
}  # fmt: skip
LIP_LABELS = {
    "background": 0, "hat": 1, "hair": 2, "glove": 3, "sunglasses": 4, "upper-clothes": 5,
    "dress": 6, "coat": 7, "socks": 8, "pants": 9, "jumpsuits": 10, "scarf": 11, "skirt": 12,
    "face": 13, "left arm": 14, "right arm": 15, "left leg": 16, "right leg": 17,
    "left shoe": 18, "right shoe": 19,
}  # fmt: skip

BODY_PARTS = {
    "legs": ("left leg", "right leg"),
    "arms": ("left arm", "right arm"),
    "face": ("face",),
}
ACCESSORIES = ("hat", "glove", "sunglasses", "bag", "left shoe", "right shoe", "scarf", "socks")
# Skin where DensePose hands and feet count: SCHP's arms and legs.
LIMB_SKIN = ("left arm", "right arm", "left leg", "right leg")

PROTECTED_BODY = {
    "upper": ("legs",),
    "lower": ("arms", "face"),
    "overall": (),
    "inner": ("legs",),
    "outer": ("legs",),
}
PROTECTED_CLOTHES_LIP = {
    "upper": ("skirt", "pants"),
    "lower": ("upper-clothes", "coat"),
    "overall": (),
    "inner": ("dress", "coat", "skirt", "pants", "jumpsuits"),
    "outer": ("upper-clothes", "dress", "pants", "skirt", "jumpsuits"),
}
PROTECTED_CLOTHES_ATR = {
    "upper": ("skirt", "pants"),
    "lower": ("upper-clothes",),
    "overall": (),
    "inner": ("dress", "skirt", "pants"),
    "outer": ("dress", "pants", "skirt"),
}
MASKED_CLOTHES = {
    "upper": ("upper-clothes", "coat", "dress", "jumpsuits"),
    "lower": ("pants", "skirt", "dress", "jumpsuits"),
    "overall": ("upper-clothes", "dress", "pants", "skirt", "coat", "jumpsuits"),
    "inner": ("upper-clothes",),
    "outer": ("coat",),
}
DENSEPOSE_REGION = {
    "upper": ("torso", "upper arms", "forearms"),
    "lower": ("thighs", "lower legs"),
    "overall": ("torso", "thighs", "lower legs", "upper arms", "forearms"),
    "inner": ("torso",),
    "outer": ("torso", "upper arms", "forearms"),
}

MASK_THRESHOLD_AFTER_BLUR = 25


def parse_cloth_type(name: str) -> str:
    """The canonical cloth type for `name` (case-insensitive; dataset aliases accepted).

    Raises `InvalidInputError` listing the allowed values.
    """
    key = str(name).strip().lower()
    key = _CLOTH_TYPE_ALIASES.get(key, key)
    if key not in CLOTH_TYPES:
        allowed = ", ".join(CLOTH_TYPE_NAMES)
        raise InvalidInputError(f"cloth_type must be one of {allowed}; got {name!r}")
    return key


def _parts(label_map: np.ndarray, table: dict[str, int], names: Iterable[str]) -> np.ndarray:
    """Pixels of `label_map` whose label is one of `names`; names the table lacks are skipped."""
    return np.isin(label_map, [table[name] for name in names if name in table])


def _either_parsing(atr: np.ndarray, lip: np.ndarray, names: Iterable[str]) -> np.ndarray:
    names = tuple(names)
    return _parts(atr, ATR_LABELS, names) | _parts(lip, LIP_LABELS, names)


def _densepose(densepose: np.ndarray, regions: Iterable[str]) -> np.ndarray:
    return np.isin(densepose, [label for region in regions for label in DENSEPOSE_PARTS[region]])


def _odd(size: int) -> int:
    return size if size % 2 else size + 1


def _fill_convex_hulls(mask: np.ndarray) -> np.ndarray:
    """Replace every external contour by its filled convex hull (one hull per contour)."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    filled = np.zeros(mask.shape, dtype=np.uint8)
    for contour in contours:
        cv2.fillPoly(filled, [cv2.convexHull(contour)], 1)
    return filled.astype(bool)


def build_mask(
    densepose: np.ndarray, atr: np.ndarray, lip: np.ndarray, cloth_type: str
) -> np.ndarray:
    """The repaint mask (H, W) uint8 with values 0 and 255 for one cloth type.

    `densepose`, `atr` and `lip` are (H, W) integer label maps of the same size. Raises
    `InvalidInputError` for an unknown cloth type or maps that are empty or of different sizes.
    """
    cloth_type = parse_cloth_type(cloth_type)
    if not densepose.shape == atr.shape == lip.shape or densepose.ndim != 2 or not densepose.size:
        raise InvalidInputError(
            "label maps must be 2-D, non-empty and equal in size; got "
            f"densepose {densepose.shape}, atr {atr.shape}, lip {lip.shape}"
        )
    height, width = densepose.shape
    longest = max(height, width)
    kernel = np.ones((_odd(longest // 250),) * 2, dtype=np.uint8)  # 5 x 5 at 1024
    blur_size = _odd(longest // 25)  # 41 at 1024; sigma 0 lets OpenCV derive it from the size

    def dilate(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
        return cv2.dilate(mask.astype(np.uint8), kernel, iterations=iterations).astype(bool)

    # 1-3. Hands, feet and face are never repainted.
    hands_feet = dilate(_densepose(densepose, ("hands", "feet")))
    hands_feet &= _either_parsing(atr, lip, LIMB_SKIN)
    face = _parts(lip, LIP_LABELS, ("face",))
    strong_protect = hands_feet | face

    # 4. What the cloth type keeps: body parts, other garments, hair and accessories.
    body_parts = [part for region in PROTECTED_BODY[cloth_type] for part in BODY_PARTS[region]]
    weak_protect = (
        _either_parsing(atr, lip, (*body_parts, "hair", *ACCESSORIES))
        | _parts(lip, LIP_LABELS, PROTECTED_CLOTHES_LIP[cloth_type])
        | _parts(atr, ATR_LABELS, PROTECTED_CLOTHES_ATR[cloth_type])
        | strong_protect
    )

    # 5-6. The garment being replaced; background only where both parsers agree.
    strong_mask = _either_parsing(atr, lip, MASKED_CLOTHES[cloth_type])
    background = (lip == LIP_LABELS["background"]) & (atr == ATR_LABELS["background"])

    # 7. The DensePose region, grown blockily (about 16 px at 1024) at a quarter of the size.
    quarter = (max(width // 4, 1), max(height // 4, 1))
    region = _densepose(densepose, DENSEPOSE_REGION[cloth_type]).astype(np.uint8)
    grown = cv2.dilate(
        cv2.resize(region, quarter, interpolation=cv2.INTER_NEAREST), kernel, iterations=2
    )
    dense = cv2.resize(grown, (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)

    # 8-10. Everything neither kept nor background, plus the region; convex hulls; keep again.
    mask = (~weak_protect & ~background) | dense
    mask = _fill_convex_hulls(mask)
    mask &= ~weak_protect

    # 11. Blur and threshold: about 8 px of growth that bridges small gaps.
    blurred = cv2.GaussianBlur(mask.astype(np.uint8) * 255, (blur_size, blur_size), 0)
    mask = blurred >= MASK_THRESHOLD_AFTER_BLUR

    # 12-13. Garment pixels in, hands and face out; one last dilation.
    mask = (mask | strong_mask) & ~strong_protect
    return dilate(mask).astype(np.uint8) * 255
