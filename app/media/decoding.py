"""One upload's bytes -> an upright image no larger than the working size needs (thread pool).

What a hostile file could make a decode cost is bounded before it starts, from the header:
- pixels: a 50 KB PNG can claim 100k x 100k pixels (the pixel cap, 413);
- CPU: a progressive JPEG's cost grows with its scans times its pixels (one small scan repeated
  20,000 times over 36 megapixels is 1.25 MB and 45 s of decoding); photos have about 10 scans
  (415 past `max_jpeg_scans`, or past JPEG_SCAN_PASSES passes over the largest allowed image);
- memory: `decode_cost` counts the bytes a decode holds at its peak (decoded pixels at their
  depth, a progressive JPEG's coefficients), so the intake can keep the sum under a budget.
The header also shows an image too small to use (MIN_IMAGE_SIDE, 422): refused before decoding.

After decoding, a large image is converted and shrunk band by band (never a whole-image copy):
a 40-megapixel RGBA photo is 160 MB decoded, and each whole-image conversion copied it again.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pillow_heif
from PIL import ExifTags, Image, ImageOps

from app.edge.errors import ImageTooSmallError, PayloadTooLargeError, UnsupportedImageError
from app.media.uploads import ACCEPTED_FORMATS, Upload
from catvton import preprocess
from catvton.preprocess import to_rgb

logger = logging.getLogger(__name__)

# ISO-BMFF brands of HEIC/HEIF stills (the "ftyp" box at offset 4); AVIF is not decoded here.
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
# EXIF orientations 5..8 rotate by 90 degrees: the stored image is the transposed working shape.
TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
# A progressive JPEG may cost at most this many scans over the largest allowed image (about 4 s on
# one core, what the largest 16-bit PNG costs): 15 scans at the pixel cap, 100 below 6 megapixels.
JPEG_SCAN_PASSES = 15
# Kept after decoding: at least twice the working size each way (the final LANCZOS resize then
# antialiases as a direct one would), at most this many working sizes of pixels (a 40:1
# panorama loses resolution rather than keep 160 MB until it is fitted).
KEPT_WORKING_SIZES = 8
BAND_BYTES = 8 * 1024 * 1024  # conversion works on bands of rows of about this size
# The least either side of a photo, garment or mask may have (422 image_too_small below it). A floor
# against images that hold nothing for the models, not a quality bar: 64 px is the smallest image
# SD-1.5 runs at its own size (the VAE makes it 8x8 latents, which the UNet's three downsamplings
# take to 1x1); anything smaller is less than one cell of the network's coarsest grid, blown up to
# the working size (a 1x1 photo was "tried on" as a flat colour). A fixed number rather than a
# fraction of --size: the demo, whose tiny model runs at 96x128, refuses exactly what production
# refuses, and an app can check it before uploading.
MIN_IMAGE_SIDE = 64
# Pillow stores 1 byte a pixel for these modes, 2 for 16-bit grey, 4 for every other mode.
ONE_BYTE_MODES = {"1", "L", "P"}


def sniff_format(data: bytes) -> str | None:
    """The image format judged by magic bytes: "JPEG", "PNG", "WEBP", "HEIF" or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        return "HEIF"
    return None


def decode_cost(
    upload: Upload,
    *,
    size: tuple[int, int],
    max_pixels: int,
    max_jpeg_scans: int,
) -> int:
    """Check the header; return the bytes `decode_image` will hold at its peak.

    Cheap (headers and a byte count, no pixel decoding): the intake runs it for every file of a
    request before any decode starts, so a bad second file costs no first decode. Raises what
    `decode_image` raises for a bad header, and ImageTooSmallError under MIN_IMAGE_SIDE.
    """
    with _naming_errors(upload, max_pixels) as image_format:
        if image_format == "HEIF":
            heif_file = pillow_heif.open_heif(io.BytesIO(upload.data), convert_hdr_to_8bit=True)
            _check_pixels(upload.field, heif_file.size, max_pixels)
            _check_min_side(upload.field, heif_file.size)
            width, height = heif_file.size
            return 2 * 4 * width * height + _kept_bytes(
                heif_file.size, size
            )  # decoded + Pillow copy
        image = _open(upload, image_format, max_pixels, max_jpeg_scans)
        _check_min_side(upload.field, image.size)
        full_width, full_height = image.size
        coefficients = 0
        if image.info.get("progressive"):
            # libjpeg holds every coefficient of a multi-scan JPEG: 2 bytes each, at full size.
            coefficients = 2 * full_width * full_height * len(image.getbands())
        _draft(image, size)
        width, height = image.size  # after the draft: the size libjpeg decodes to
        decoded = width * height * _pixel_bytes(image.mode)
        return decoded + coefficients + _kept_bytes(image.size, size)


def upright_size(upload: Upload) -> tuple[int, int]:
    """The size a person sees (EXIF orientation applied), from the header alone: what a stored
    image's document reports (`decode_image` may decode a large photo smaller). For an upload
    that already decoded, so nothing is checked here."""
    if sniff_format(upload.data) == "HEIF":
        width, height = pillow_heif.open_heif(io.BytesIO(upload.data)).size
        return width, height
    with Image.open(io.BytesIO(upload.data)) as image:
        return preprocess.upright_size(image)


def decode_image(
    upload: Upload,
    *,
    size: tuple[int, int],
    max_pixels: int,
    max_jpeg_scans: int,
    rgb: bool = True,
) -> Image.Image:
    """Bytes -> upright image, decoded no larger than a working size of `size` (W, H) needs.

    `rgb` converts to 8-bit RGB (transparency on white); a mask (`rgb=False`) becomes `L`, with
    transparency on black: a transparent background means "keep", whatever colour its invisible
    pixels hold (drawing apps often leave them white, which would mean "repaint").

    Raises UnsupportedImageError (empty, not an accepted format, truncated or corrupt, a JPEG of
    too many scans) and PayloadTooLargeError (more pixels than `max_pixels`), naming the field.
    """
    with _naming_errors(upload, max_pixels) as image_format:
        if image_format == "HEIF":
            image = _decode_heif(upload, max_pixels)
        else:
            image = _open(upload, image_format, max_pixels, max_jpeg_scans)
            _draft(image, size)
            image.load()
        # Inside the block: a corrupt EXIF block fails here, when the orientation is read.
        return _shrink_upright(image, size, to_rgb if rgb else _mask_on_black)


@contextmanager
def _naming_errors(upload: Upload, max_pixels: int) -> Iterator[str]:
    """Sniff the format (yielded) and turn every decoder failure inside the block into a 415 (or
    Pillow's own bomb check into a 413) naming the field."""
    name, data = upload.field, upload.data
    if not data:
        raise UnsupportedImageError(f"{name} is empty; send a {ACCEPTED_FORMATS} photo")
    image_format = sniff_format(data)
    if image_format is None:
        sent_as = f" (sent as {upload.content_type!r})" if upload.content_type else ""
        raise UnsupportedImageError(
            f"{name} is not a {ACCEPTED_FORMATS} image{sent_as}; the format is judged by the bytes"
        )
    try:
        yield image_format
    except (ImageTooSmallError, PayloadTooLargeError, UnsupportedImageError, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        raise PayloadTooLargeError(
            f"{name} has more pixels than the cap of {max_pixels / 1e6:g} megapixels"
        ) from exc
    except Exception as exc:
        # Decoders of hostile bytes fail in many ways (Pillow: OSError, SyntaxError, ValueError,
        # EOFError, struct.error; pillow-heif: RuntimeError, IndexError): all mean a bad file.
        logger.info("%s: %s decoding failed: %r", name, image_format, exc)
        raise UnsupportedImageError(
            f"{name} could not be decoded as {image_format}: "
            f"the file is truncated or corrupt ({exc})"
        ) from exc


def _open(upload: Upload, image_format: str, max_pixels: int, max_scans: int) -> Image.Image:
    """The header read and checked (pixels; a JPEG's scans), nothing decoded yet."""
    image = Image.open(io.BytesIO(upload.data), formats=[image_format])  # header only
    _check_pixels(upload.field, image.size, max_pixels)
    if image_format == "JPEG":
        _check_jpeg_scans(upload, image.size, max_pixels, max_scans)
    return image


def _draft(image: Image.Image, size: tuple[int, int]) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the result still covers the working size.

    A 12 MP photo for a 768x1024 working size decodes at 1/2 scale: a quarter of the pixels, a
    fraction of the time, and no visible loss since it is downscaled afterwards anyway.
    """
    if image.format == "JPEG":
        image.draft("RGB", _stored_size(image, size))


def _check_pixels(name: str, image_size: tuple[int, int], max_pixels: int) -> None:
    width, height = image_size
    if width * height > max_pixels:
        raise PayloadTooLargeError(
            f"{name} is {width}x{height} = {width * height / 1e6:.0f} megapixels, "
            f"over the cap of {max_pixels / 1e6:g} megapixels"
        )


def _check_min_side(name: str, image_size: tuple[int, int]) -> None:
    width, height = image_size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageTooSmallError(
            f"{name} is {width}x{height} pixels: too small to try on; images need at least "
            f"{MIN_IMAGE_SIDE} pixels on each side (a photo, not a thumbnail or an icon)"
        )


def _check_jpeg_scans(
    upload: Upload, image_size: tuple[int, int], max_pixels: int, max_scans: int
) -> None:
    """Refuse a JPEG whose scans would cost more than JPEG_SCAN_PASSES passes at the pixel cap.

    Counts start-of-scan markers (FF DA) in C: entropy-coded data never holds that byte pair (a
    data byte FF is followed by 00, a restart marker by D0..D7), so the count misses no scan; a
    coincidence inside a table or an EXIF thumbnail's own scans only make it higher.
    """
    scans = upload.data.count(b"\xff\xda")
    width, height = image_size
    affordable = min(max_scans, JPEG_SCAN_PASSES * max_pixels // max(width * height, 1))
    if scans > affordable:
        raise UnsupportedImageError(
            f"{upload.field} is a JPEG of {scans} scans over {width * height / 1e6:.1f} "
            f"megapixels, more than the {affordable} it may have at that size (photos have about "
            "10); save it again as a baseline JPEG"
        )


def _decode_heif(upload: Upload, max_pixels: int) -> Image.Image:
    """HEIC/HEIF through pillow-heif directly, not through its global Pillow plugin registration."""
    heif_file = pillow_heif.open_heif(io.BytesIO(upload.data), convert_hdr_to_8bit=True)
    _check_pixels(upload.field, heif_file.size, max_pixels)  # from the header, before decoding
    return heif_file.to_pillow()


def _orientation(image: Image.Image) -> int:
    return image.getexif().get(ExifTags.Base.Orientation, 1)


def _stored_size(image: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """The working size (W, H) in the image's stored orientation (phones store photos sideways)."""
    width, height = size
    return (height, width) if _orientation(image) in TRANSPOSING_ORIENTATIONS else (width, height)


def _pixel_bytes(mode: str) -> int:
    if mode in ONE_BYTE_MODES:
        return 1
    return 2 if mode.startswith("I;16") else 4


def _reduce_factor(image_size: tuple[int, int], stored_size: tuple[int, int]) -> int:
    """The integer box-shrink that keeps at least twice `stored_size` each way, or fewer pixels
    than KEPT_WORKING_SIZES working sizes when the aspect ratio is extreme."""
    (width, height), (target_width, target_height) = image_size, stored_size
    factor = max(1, min(width // (2 * target_width), height // (2 * target_height)))
    kept_pixels = KEPT_WORKING_SIZES * target_width * target_height
    while math.ceil(width / factor) * math.ceil(height / factor) > kept_pixels:
        factor += 1
    return factor


def _kept_bytes(image_size: tuple[int, int], size: tuple[int, int]) -> int:
    """What `_shrink_upright` allocates next to the decoded image: the result and its bands."""
    factor = _reduce_factor(image_size, size)  # orientation aside: the same pixel count
    kept = math.ceil(image_size[0] / factor) * math.ceil(image_size[1] / factor)
    return 4 * kept * 2 + 3 * BAND_BYTES  # the result, its upright copy, a band and its copies


def _shrink_upright(
    image: Image.Image, size: tuple[int, int], convert: Callable[[Image.Image], Image.Image]
) -> Image.Image:
    """`convert` the image band by band, shrinking each band by the reduce factor, then turn it
    upright: the only whole-image allocation is the (shrunk) result."""
    factor = _reduce_factor(image.size, _stored_size(image, size))
    orientation = _orientation(image)
    width, height = image.size
    rows = max(factor, BAND_BYTES // (4 * width) // factor * factor)  # a multiple of the factor
    kept: Image.Image | None = None
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(height, top + rows)))
        # Only what conversion needs: with the EXIF block, `convert` would turn each band upright.
        band.info = {key: image.info[key] for key in ("transparency",) if key in image.info}
        band = convert(band)
        if factor > 1:
            band = band.reduce(factor)
        if kept is None:
            kept = Image.new(band.mode, (math.ceil(width / factor), math.ceil(height / factor)))
        kept.paste(band, (0, top // factor))
    assert kept is not None  # a decoded image has at least one row
    if orientation == 1:
        return kept
    kept.info["exif"] = image.getexif().tobytes()
    return ImageOps.exif_transpose(kept)


def _mask_on_black(image: Image.Image) -> Image.Image:
    """A mask -> `L`; with transparency, transparent pixels black ("keep")."""
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return image if image.mode == "L" else image.convert("L")
    rgba = image.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("L")
