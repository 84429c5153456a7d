"""Preprocessing: crop boxes, letterboxing, mask fitting and smoothing, modes, repaint blend."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from catvton import InvalidInputError
from catvton.preprocess import (
    check_mask_shape,
    fit_cloth,
    fit_mask,
    fit_person,
    image_to_tensor,
    mask_to_tensor,
    person_crop_box,
    repaint_blend,
    smooth_mask,
    to_rgb,
    upright_size,
)

SIZE = (96, 128)  # (W, H), 3:4 like 768 x 1024


@pytest.mark.parametrize(
    ("image_size", "box"),
    [
        ((300, 600), (0, 100, 300, 500)),  # taller than 3:4: keep the width, crop 400 rows centred
        ((800, 600), (175, 0, 625, 600)),  # wider than 3:4: keep the height, crop 450 columns
        ((768, 1024), (0, 0, 768, 1024)),  # exactly 3:4: the whole image
        ((301, 401), (0, 0, 300, 401)),  # integer arithmetic: 401 * 3 // 4 = 300 columns
    ],
)
def test_person_crop_box(image_size, box) -> None:
    assert person_crop_box(image_size, (768, 1024)) == box


def test_fit_person_crops_the_centre() -> None:
    image = Image.new("RGB", (300, 600), (0, 0, 255))
    image.paste((255, 0, 0), (0, 100, 300, 500))  # the centre 3:4 band is red
    fitted = fit_person(image, SIZE)
    assert fitted.size == SIZE
    assert np.array_equal(np.unique(np.asarray(fitted).reshape(-1, 3), axis=0), [[255, 0, 0]])


def test_fit_cloth_letterboxes_on_white() -> None:
    image = Image.new("RGB", (200, 100), (0, 0, 0))  # wide garment: white bars above and below
    fitted = np.asarray(fit_cloth(image, SIZE))
    assert fitted.shape == (128, 96, 3)
    assert (fitted[:40] == 255).all() and (fitted[-40:] == 255).all()
    assert (fitted[50:78] == 0).all()  # the garment, 96 x 48, centred


# Hand-computed with the reference's rule (floor division): a wide garment gets width W and height
# h*W//w, a narrow one height H and width w*H//h, centred at ((W-new_w)//2, (H-new_h)//2).
@pytest.mark.parametrize(
    ("garment_size", "size", "box"),
    [
        # 180*192/260 = 132.9: 132 rows (rounding gave 133), top (256-132)//2 = 62
        ((260, 180), (192, 256), (0, 62, 192, 194)),
        # 110*256/300 = 93.9: 93 columns (rounding gave 94), left (192-93)//2 = 49
        ((110, 300), (192, 256), (49, 0, 142, 256)),
        # 700*768/1000 = 537.6: 537 rows, top (1024-537)//2 = 243
        ((1000, 700), (768, 1024), (0, 243, 768, 780)),
        # exactly 3:4: the whole canvas
        ((300, 400), (192, 256), (0, 0, 192, 256)),
        # 100*96/200 = 48 rows, top (128-48)//2 = 40
        ((200, 100), (96, 128), (0, 40, 96, 88)),
    ],
)
def test_fit_cloth_floors_the_fitted_size_as_the_reference(garment_size, size, box) -> None:
    fitted = np.asarray(fit_cloth(Image.new("RGB", garment_size, (0, 0, 0)), size))
    rows, columns = np.nonzero(fitted.min(axis=2) < 255)  # the garment: everything not white
    assert (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1) == box
    left, top, right, bottom = box
    assert (fitted[top:bottom, left:right] == 0).all()


def test_fit_functions_return_fitted_images_unchanged() -> None:
    person = fit_person(Image.new("RGB", (50, 50)), SIZE)
    cloth = fit_cloth(Image.new("RGB", (50, 50)), SIZE)
    mask = fit_mask(Image.new("L", (50, 50), 3), SIZE)
    assert fit_person(person, SIZE) is person
    assert fit_cloth(cloth, SIZE) is cloth
    assert fit_mask(mask, SIZE) is mask


def test_fit_mask_counts_any_nonzero_pixel_and_crops_like_the_person() -> None:
    mask = Image.new("L", (300, 600), 0)
    mask.paste(1, (0, 300, 300, 500))  # faint but non-zero: the lower half of the crop
    fitted = np.asarray(fit_mask(mask, SIZE))
    assert (fitted[:60] == 0).all() and (fitted[68:] == 255).all()


def third_covered_stripes() -> Image.Image:
    """A 192 x 256 mask, white in columns 1 and 2 of every 6: a third of it is masked."""
    columns = np.arange(192)
    stripes = np.zeros((256, 192), dtype=np.uint8)
    stripes[:, (columns % 6 == 1) | (columns % 6 == 2)] = 255
    return Image.fromarray(stripes)


def test_a_resized_mask_is_blurred_as_resized_not_binarised_again() -> None:
    """Halved to 96 x 128, each white pair straddles two pixels: two half-grey pixels of every
    three. Blurred as resized (the reference), a third of the area is masked: below 0.5 everywhere,
    nothing is repainted. Binarised first, the half-grey pixels count fully (2 of 3): everything."""
    smoothed = np.asarray(smooth_mask(fit_mask(third_covered_stripes(), SIZE)))
    assert (smoothed[20:-20, 20:-20] == 0).all()


def test_fitting_a_fitted_mask_again_changes_nothing() -> None:
    """The service fits in its intake, then the pipeline fits once more: the grey edges stay."""
    fitted = fit_mask(third_covered_stripes(), SIZE)
    assert len(np.unique(np.asarray(fitted))) > 2  # grey edges from the LANCZOS resize
    assert fit_mask(fitted, SIZE) is fitted


def test_smooth_mask_removes_specks_and_stays_binary() -> None:
    mask = Image.new("L", SIZE, 0)
    mask.paste(255, (20, 20, 70, 100))
    mask.putpixel((5, 5), 255)  # a one-pixel island
    smoothed = np.asarray(smooth_mask(mask))
    assert set(np.unique(smoothed)) == {0, 255}
    assert smoothed[5, 5] == 0
    assert smoothed[60, 45] == 255


def test_tensors_are_normalised() -> None:
    image = Image.new("RGB", (8, 8), (0, 255, 0))
    tensor = image_to_tensor(image)
    assert tensor.shape == (1, 3, 8, 8)
    assert tensor[0, :, 0, 0].tolist() == [-1.0, 1.0, -1.0]
    mask = mask_to_tensor(Image.new("L", (8, 8), 255))
    assert mask.shape == (1, 1, 8, 8) and mask.unique().tolist() == [1.0]


def exif_rotated_jpeg() -> Image.Image:
    """A 40 x 20 landscape JPEG whose EXIF says 'rotate 90 degrees': upright it is 20 x 40."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_mask_must_have_the_person_shape() -> None:
    person = Image.new("RGB", (300, 400))
    check_mask_shape(person, Image.new("L", (300, 400)), (96, 128))
    check_mask_shape(person, Image.new("L", (151, 201)), (96, 128))  # same shape, other size
    with pytest.raises(
        InvalidInputError, match=r"mask_image \(400x300\).*person_image \(300x400\)"
    ):
        check_mask_shape(person, Image.new("L", (400, 300)), (96, 128))


def test_mask_of_the_cropped_person_is_accepted() -> None:
    """`python -m catvton mask` writes the mask at the working size, in the cropped frame."""
    landscape_person = Image.new("RGB", (400, 300))
    check_mask_shape(landscape_person, Image.new("L", (96, 128)), (96, 128))
    with pytest.raises(InvalidInputError, match=r"working size \(96x128"):
        check_mask_shape(landscape_person, Image.new("L", (128, 128)), (96, 128))


def test_mask_shape_is_compared_upright() -> None:
    sideways = exif_rotated_jpeg()  # stored 40 x 20, upright 20 x 40
    assert upright_size(sideways) == (20, 40)
    check_mask_shape(sideways, Image.new("L", (20, 40)), (96, 128))
    with pytest.raises(InvalidInputError, match="mask_image"):
        check_mask_shape(sideways, Image.new("L", (40, 20)), (96, 128))


def test_fit_mask_applies_exif_orientation_even_at_the_working_size() -> None:
    """A binary mask stored sideways at exactly the working size is turned upright, not kept."""
    stored = Image.new("L", (128, 96), 0)
    stored.paste(255, (0, 0, 64, 96))  # left half white: upright (90 degrees CW), the top half
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(buffer, format="PNG", exif=exif)
    fitted = np.asarray(fit_mask(Image.open(io.BytesIO(buffer.getvalue())), (128, 96)))
    assert fitted.shape == (96, 128)
    assert (fitted[:40] == 255).all() and (fitted[56:] == 0).all()


def test_exif_orientation_is_applied() -> None:
    upright = to_rgb(exif_rotated_jpeg())
    assert upright.size == (20, 40)
    top, bottom = np.asarray(upright)[5, 10], np.asarray(upright)[35, 10]
    assert top[2] > 200 and bottom[0] > 200  # the blue half ends up on top


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (30, 40), (255, 0, 0, 0)),  # fully transparent: white
        Image.new("LA", (30, 40), (0, 0)),
        Image.new("RGB", (30, 40), (255, 255, 255)).convert("P"),
        Image.new("L", (30, 40), 255),
        Image.new("CMYK", (30, 40), (0, 0, 0, 0)),
        Image.fromarray(np.full((40, 30), 65535, dtype=np.uint16)),  # 16-bit grayscale
    ],
    ids=["RGBA", "LA", "P", "L", "CMYK", "I;16"],
)
def test_every_mode_becomes_white_rgb(image) -> None:
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (30, 40)
    assert (np.asarray(rgb) >= 254).all()
    assert fit_person(image, SIZE).mode == "RGB"
    assert fit_cloth(image, SIZE).mode == "RGB"


def test_palette_with_transparency_composites_on_white() -> None:
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    assert (np.asarray(to_rgb(image)) == 255).all()


def test_repaint_keeps_pixels_outside_the_blurred_mask() -> None:
    rng = np.random.default_rng(0)
    person = Image.fromarray(rng.integers(0, 256, (128, 96, 3), dtype=np.uint8))
    result = Image.fromarray(rng.integers(0, 256, (128, 96, 3), dtype=np.uint8))
    mask = Image.new("L", SIZE, 0)
    mask.paste(255, (30, 40, 66, 90))
    blended = np.asarray(repaint_blend(person, result, mask))
    person_pixels, result_pixels = np.asarray(person), np.asarray(result)
    # Radius 128 // 50 = 2 -> 3: well beyond the box plus a margin, the person is back exactly.
    outside = np.ones((128, 96), dtype=bool)
    outside[40 - 12 : 90 + 12, 30 - 12 : 66 + 12] = False
    assert np.array_equal(blended[outside], person_pixels[outside])
    assert np.array_equal(blended[55:75, 40:56], result_pixels[55:75, 40:56])
    assert not np.array_equal(blended, person_pixels)
