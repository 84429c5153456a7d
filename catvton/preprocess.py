"""PIL images in, working-size images and tensors out; and the optional repaint blend.

Sizes are ``(W, H)`` in pixels, like PIL. The person is centre-cropped to the W:H aspect ratio and
resized (so the result lives in the cropped frame); the garment is letterboxed on white (so nothing
of it is cut off); a user mask gets the person's crop. All fitting uses LANCZOS, and every size and
offset uses the reference's integer arithmetic (floor division), so identical weights give the
reference's images.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from catvton.errors import InvalidInputError

# Mask smoothing before binarising: removes the mask's jagged edges and pixel islands.
MASK_BLUR_RADIUS = 9
MASK_THRESHOLD = 0.5
# Repaint blends over a soft seam about 2% of the image height wide.
REPAINT_BLUR_DIVISOR = 50
WHITE = (255, 255, 255)
EXIF_ORIENTATION = 0x0112
# EXIF orientations that turn the stored image by 90 degrees (width and height swap).
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
# A user mask may be drawn at another resolution than the person, but not at another shape: its
# aspect ratio may differ by this fraction at most (rounding of a resized mask), else the person's
# crop would cut it elsewhere.
MASK_ASPECT_TOLERANCE = 0.01
# `fit_mask` marks its output with the size it was fitted to: an already fitted mask (grey edges
# from the resize) is then passed through, not binarised a second time.
FITTED_MASK_INFO = "catvton_fitted_size"


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB: EXIF orientation applied, transparency composited on white.

    Handles palette, RGBA/LA, grayscale, CMYK and 16/32-bit inputs. Returns ``image`` itself when
    there is nothing to do.
    """
    image = _upright(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (and 32-bit integer) grayscale: keep the top 8 of 16 bits.
        values = np.asarray(image, dtype=np.uint32) >> 8
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (*WHITE, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def person_crop_box(
    image_size: tuple[int, int], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The centred box ``(left, top, right, bottom)`` of the W:H aspect ratio inside ``image_size``.

    Integer arithmetic: a narrower-than-W:H image keeps its width, a wider one keeps its height.
    """
    (w, h), (target_w, target_h) = image_size, size
    if w * target_h < h * target_w:
        new_w, new_h = w, w * target_h // target_w
    else:
        new_w, new_h = h * target_w // target_h, h
    left, top = (w - new_w) // 2, (h - new_h) // 2
    return left, top, left + new_w, top + new_h


def fit_person(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """RGB person image at ``size``: centre-cropped to the aspect ratio, then resized (LANCZOS).

    Returns ``image`` unchanged when it is already RGB at ``size``.
    """
    image = to_rgb(image)
    if image.size == tuple(size):
        return image
    return image.crop(person_crop_box(image.size, size)).resize(size, Image.Resampling.LANCZOS)


def cloth_paste_box(
    image_size: tuple[int, int], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Where a garment of ``image_size`` lands on the W x H canvas: ``(left, top, right, bottom)``.

    The reference's integer arithmetic: a narrower-than-W:H garment gets height H and width
    ``w*H//h``, a wider one width W and height ``h*W//w`` (floor, not rounding: rounding makes some
    garments one row taller, and the try-on image differs); the box is centred with floor division.
    """
    (w, h), (target_w, target_h) = image_size, size
    if w * target_h < h * target_w:
        new_w, new_h = max(w * target_h // h, 1), target_h
    else:
        new_w, new_h = target_w, max(h * target_w // w, 1)
    left, top = (target_w - new_w) // 2, (target_h - new_h) // 2
    return left, top, left + new_w, top + new_h


def fit_cloth(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """RGB garment image at ``size``: fitted inside it (LANCZOS) and centred on white.

    Returns ``image`` unchanged when it is already RGB at ``size``.
    """
    image = to_rgb(image)
    if image.size == tuple(size):
        return image
    left, top, right, bottom = cloth_paste_box(image.size, size)
    canvas = Image.new("RGB", (size[0], size[1]), WHITE)
    canvas.paste(image.resize((right - left, bottom - top), Image.Resampling.LANCZOS), (left, top))
    return canvas


def check_mask_shape(
    person_image: Image.Image, mask_image: Image.Image, size: tuple[int, int]
) -> None:
    """Refuse a user mask that cannot be placed on the person: InvalidInputError.

    ``fit_mask`` crops a mask with the person's rule, which lands on the same region of the photo
    when the mask has the photo's (upright) aspect ratio; a mask with the working size's aspect
    ratio is taken as drawn on the already cropped person (what ``python -m catvton mask``
    writes). Any other shape is refused. Call it on the images as received, before fitting.
    """
    check_mask_size(upright_size(person_image), upright_size(mask_image), size)


def check_mask_size(
    person_size: tuple[int, int], mask_size: tuple[int, int], size: tuple[int, int]
) -> None:
    """`check_mask_shape` on the upright sizes alone (a stored person photo is kept fitted)."""
    (person_w, person_h), (mask_w, mask_h) = person_size, mask_size
    if not (
        _same_aspect((mask_w, mask_h), (person_w, person_h)) or _same_aspect((mask_w, mask_h), size)
    ):
        width, height = size
        raise InvalidInputError(
            f"mask_image ({mask_w}x{mask_h}) must have the aspect ratio of person_image "
            f"({person_w}x{person_h}) or of the working size ({width}x{height}, a mask of the "
            "cropped person): draw the mask on the person photo itself"
        )


def _same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return abs(a[0] * b[1] - b[0] * a[1]) <= MASK_ASPECT_TOLERANCE * b[0] * a[1]


def fit_mask(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``L`` mask at ``size`` (white = repaint), cropped like the person, ready for `smooth_mask`.

    As the reference does: any pixel above 0 counts as masked, then the binary mask gets the
    person's crop and LANCZOS resize, and goes to the blur as resized (grey edges, no second
    binarisation). A mask already at ``size`` comes out binary. The result is marked as fitted, so
    fitting it again (the service fits in its intake, the pipeline once more) returns it unchanged.
    """
    image = _upright(image)
    if image.info.get(FITTED_MASK_INFO) == tuple(size):
        return image
    if image.size == tuple(size) and image.mode == "L" and _is_binary(image):
        return image
    mask = image.convert("L").point(lambda v: 255 if v > 0 else 0)
    if mask.size != tuple(size):
        box = person_crop_box(mask.size, size)
        mask = mask.crop(box).resize(size, Image.Resampling.LANCZOS)
    mask.info[FITTED_MASK_INFO] = tuple(size)
    return mask


def smooth_mask(mask: Image.Image) -> Image.Image:
    """Gaussian blur (radius 9) then binarise at 0.5: the mask the model sees, 0 or 255."""
    return _binarise(mask.filter(ImageFilter.GaussianBlur(MASK_BLUR_RADIUS)))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image to a ``(1, 3, H, W)`` float32 tensor in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def mask_to_tensor(mask: Image.Image) -> torch.Tensor:
    """Binary ``L`` mask to a ``(1, 1, H, W)`` float32 tensor of 0 and 1 (1 = repaint)."""
    array = np.asarray(mask, dtype=np.uint8) >= 128  # (H, W)
    return torch.from_numpy(array.astype(np.float32))[None, None]


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """A ``(1, 3, H, W)`` tensor in [0, 1] to an RGB image, rounding to the nearest 8-bit value."""
    array = (tensor[0].float().clamp(0, 1) * 255).round().to(torch.uint8)  # (3, H, W)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())


def repaint_blend(person: Image.Image, result: Image.Image, mask: Image.Image) -> Image.Image:
    """Put the original person back outside the mask: ``person * (1 - m) + result * m``.

    ``m`` is ``mask`` blurred with radius ``H // 50`` made odd (21 at 1024), so the seam is soft and
    pixels away from the mask are exactly the input's. All three images share one size.
    """
    radius = mask.height // REPAINT_BLUR_DIVISOR
    radius += 1 - radius % 2
    soft = mask.filter(ImageFilter.GaussianBlur(radius))
    weight = np.asarray(soft, dtype=np.float32)[..., None] / 255.0  # (H, W, 1)
    blended = (
        np.asarray(person, dtype=np.float32) * (1.0 - weight)
        + np.asarray(result, dtype=np.float32) * weight
    )
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def upright_size(image: Image.Image) -> tuple[int, int]:
    """``(W, H)`` of ``image`` once its EXIF orientation is applied, without transposing it."""
    if image.getexif().get(EXIF_ORIENTATION, 1) in TRANSPOSING_ORIENTATIONS:
        return image.height, image.width
    return image.size


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phones store photos sideways and rely on it); no copy if none."""
    if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)


def _binarise(mask: Image.Image) -> Image.Image:
    cutoff = round(MASK_THRESHOLD * 255)  # 128: values >= 0.5 count as masked
    return mask.point(lambda v: 255 if v >= cutoff else 0)


def _is_binary(mask: Image.Image) -> bool:
    return sum(mask.histogram()[1:255]) == 0
