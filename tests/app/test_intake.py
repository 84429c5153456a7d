"""Upload decoding: bad and odd uploads, generated in code, against `decode_image`
(app/media/intake.py)."""

from __future__ import annotations

import asyncio
import io
import itertools
import struct
import zlib
from collections.abc import Iterable

import pytest
from http_helpers import heic_bytes, multipart, try_on_parts
from PIL import Image
from starlette.requests import Request

from app.edge.errors import (
    ImageTooSmallError,
    InvalidFieldError,
    PayloadTooLargeError,
    UnsupportedImageError,
)
from app.media.decoding import decode_cost, decode_image, sniff_format
from app.media.uploads import Upload, UploadLimits, receive_upload
from app.settings import Settings

SIZE = (96, 128)
DEFAULTS = Settings()
MAX_PIXELS = DEFAULTS.max_image_pixels
# What the server decodes with: the settings' defaults, written once there.
LIMITS = {"max_pixels": MAX_PIXELS, "max_jpeg_scans": DEFAULTS.max_jpeg_scans}


def encode(image: Image.Image, image_format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels in a few dozen bytes: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def decode(data: bytes, field: str = "person_image", **kwargs) -> Image.Image:
    return decode_image(Upload(field=field, data=data), size=SIZE, **{**LIMITS, **kwargs})


def photo(size: tuple[int, int] = (60, 80)) -> Image.Image:
    """A smooth gradient: compresses like a photo, unlike noise."""
    return Image.linear_gradient("L").resize(size).convert("RGB")


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_accepted_formats_decode_to_rgb(image_format: str) -> None:
    image = decode(encode(photo(), image_format))
    assert image.mode == "RGB"
    assert image.size == (60, 80)


def test_heic_decodes_to_rgb() -> None:
    data = heic_bytes(photo())
    assert sniff_format(data) == "HEIF"
    image = decode(data)
    assert (image.mode, image.size) == ("RGB", (60, 80))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "is empty"),
        (b"hello, this is text in a file named photo.jpg\n", "is not a JPEG, PNG, WebP or HEIC"),
        (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n", "is not a JPEG, PNG, WebP or HEIC"),
        (b"GIF89a" + b"\0" * 32, "is not a JPEG, PNG, WebP or HEIC"),
    ],
    ids=["empty", "text", "pdf", "gif"],
)
def test_non_images_are_refused_naming_the_field(data: bytes, expected: str) -> None:
    with pytest.raises(UnsupportedImageError, match=expected) as caught:
        decode(data, field="cloth_image")
    assert caught.value.message.startswith("cloth_image")
    assert caught.value.status_code == 415


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_truncated_files_are_refused(image_format: str) -> None:
    data = encode(photo((200, 200)), image_format)
    with pytest.raises(UnsupportedImageError, match="truncated or corrupt"):
        decode(data[: len(data) // 2])


@pytest.mark.parametrize("image_format", ["PNG", "WEBP"])
def test_a_corrupt_exif_block_is_refused_not_a_crash(image_format: str) -> None:
    """The EXIF is parsed when the orientation is read, after the pixels: still a 415."""
    data = encode(photo(), image_format, exif=b"MM\x00\x6a not a TIFF header")
    with pytest.raises(UnsupportedImageError, match="truncated or corrupt"):
        decode(data)


def test_a_corrupt_heic_is_refused_not_a_crash() -> None:
    """pillow-heif raises RuntimeError (here: libheif's security limit on iloc extents)."""
    data = bytearray(heic_bytes(photo()))
    extent_count = data.index(b"iloc") + 20  # version 0, 4-byte offsets, one item
    data[extent_count : extent_count + 2] = b"\x7f\xff"
    with pytest.raises(UnsupportedImageError, match="could not be decoded as HEIF"):
        decode(bytes(data))


@pytest.mark.parametrize("side", [8_000, 100_000], ids=["64MP", "10GP"])
def test_pixel_bomb_is_refused_before_decoding(side: int) -> None:
    data = png_header_only(side, side)  # in under 100 bytes
    assert len(data) < 100
    with pytest.raises(PayloadTooLargeError, match="the cap of 40 megapixels") as caught:
        decode(data)
    assert caught.value.status_code == 413


def test_heic_pixel_cap_uses_the_header() -> None:
    data = heic_bytes(photo((64, 64)))
    with pytest.raises(PayloadTooLargeError, match="megapixels"):
        decode_image(Upload("person_image", data), size=SIZE, **{**LIMITS, "max_pixels": 1000})


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "HEIF"])
def test_an_image_under_64_pixels_on_a_side_is_refused_from_its_header(image_format: str) -> None:
    def cost(size: tuple[int, int]) -> int:
        image = photo(size)
        data = heic_bytes(image) if image_format == "HEIF" else encode(image, image_format)
        return decode_cost(Upload("cloth_image", data), size=SIZE, **LIMITS)

    assert cost((64, 64)) > 0
    with pytest.raises(ImageTooSmallError, match="cloth_image is 300x63 pixels") as caught:
        cost((300, 63))
    assert (caught.value.status_code, caught.value.code) == (422, "image_too_small")


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (80, 40), (255, 0, 0))
    stored.paste((0, 0, 255), (0, 0, 40, 40))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image = decode(encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert image.size == (40, 80)
    top_r, _, top_b = image.getpixel((20, 5))
    assert top_b > 200 and top_r < 60  # the stored left (blue) half is now on top


def test_rgba_is_composited_on_white() -> None:
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    decoded = decode(encode(image, "PNG"))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((5, 5)) == (255, 255, 255)
    assert decoded.getpixel((0, 0)) == (255, 0, 0)


def test_palette_with_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    decoded = decode(encode(image, "PNG", transparency=0))
    assert decoded.getpixel((5, 5)) == (255, 255, 255)
    assert decoded.getpixel((1, 1)) == (0, 200, 0)


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    image = Image.new("I;16", (10, 10), 32768)
    decoded = decode(encode(image, "PNG"))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0))[0] == 128


def test_cmyk_jpeg_becomes_rgb() -> None:
    image = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # red
    decoded = decode(encode(image, "JPEG", quality=95))
    red, green, blue = decoded.getpixel((10, 10))
    assert decoded.mode == "RGB" and red > 200 and green < 60 and blue < 60


def test_mask_keeps_its_mode() -> None:
    mask = Image.new("L", (20, 20), 0)
    decoded = decode(encode(mask, "PNG"), field="mask_image", rgb=False)
    assert decoded.mode == "L"


def test_a_transparent_mask_background_means_keep_whatever_its_colour() -> None:
    mask = Image.new("RGBA", (20, 20), (255, 255, 255, 0))  # invisible white: keep
    mask.paste((255, 255, 255, 255), (5, 5, 15, 15))  # opaque white: repaint
    decoded = decode(encode(mask, "PNG"), field="mask_image", rgb=False)
    assert decoded.mode == "L"
    assert (decoded.getpixel((0, 0)), decoded.getpixel((10, 10))) == (0, 255)


def test_large_jpeg_is_decoded_at_reduced_scale() -> None:
    data = encode(photo((1600, 1200)), "JPEG")
    image = decode_image(Upload("person_image", data), size=(192, 256), **LIMITS)
    # 1/4 scale still covers 192x256 in both directions; 1/8 would not.
    assert image.size == (400, 300)


def test_reduced_scale_accounts_for_exif_rotation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(photo((1600, 1200)), "JPEG", exif=exif.tobytes())
    image = decode_image(Upload("person_image", data), size=(300, 400), **LIMITS)
    assert image.size == (300, 400)  # displayed portrait; 1/4 scale of the stored landscape


def streamed_request(chunks: Iterable[bytes], content_type: str) -> Request:
    """A request whose body arrives chunk by chunk with no Content-Length (chunked encoding)."""
    pending = iter(chunks)

    async def receive() -> dict:
        chunk = next(pending, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    headers = [(b"content-type", content_type.encode())]
    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


def receive(chunks: Iterable[bytes], content_type: str) -> object:
    request = streamed_request(chunks, content_type)
    return asyncio.run(
        receive_upload(
            request,
            UploadLimits(
                max_file_bytes=1024 * 1024,
                timeout=DEFAULTS.upload_timeout,
                idle_timeout=DEFAULTS.upload_idle_timeout,
            ),
        )
    )


def test_a_chunked_body_is_capped_also_outside_the_parts() -> None:
    """Bytes after the closing boundary are discarded by the parser: the body cap still counts."""
    body, content_type = multipart(try_on_parts())
    epilogue = itertools.repeat(b"x" * 65536, 200)  # 12.5 MiB, over the 4 MiB body cap
    with pytest.raises(PayloadTooLargeError, match="larger than the upload cap of 1 MB"):
        receive(itertools.chain([body], epilogue), content_type)


def test_a_huge_part_header_is_refused() -> None:
    """Our own cap, or python-multipart's in versions that have one (4 KiB a header line)."""
    body, content_type = multipart([("person_image", b"x", "a" * 1024 * 1024 + ".jpg", None)])
    chunks = [body[start : start + 65536] for start in range(0, len(body), 65536)]
    with pytest.raises(InvalidFieldError, match="header"):
        receive(chunks, content_type)
