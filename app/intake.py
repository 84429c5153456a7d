"""Uploads -> RGB images: the streamed multipart body with byte caps, then sniffing and decoding.

Two halves with one purpose, keeping hostile or odd uploads away from the model:

- `receive_upload` reads the multipart body as it streams in (on the event loop: it only copies
  bytes) and stops at the first file over the byte cap, so a 2 GB upload costs 20 MB of memory, and
  no temporary file is written (FastAPI's own form parsing spools large files to disk).
- `decode_image` (thread pool) judges the format by the bytes, checks the pixel count from the
  header before decoding (a 50 KB PNG can claim 100k x 100k pixels), decodes JPEGs at a reduced
  scale when the working size is much smaller, applies the EXIF orientation, converts to RGB.
"""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass, field

import pillow_heif
from PIL import ExifTags, Image, ImageOps
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from app.errors import (
    ClientDisconnectedError,
    InvalidFieldError,
    PayloadTooLargeError,
    UnsupportedImageError,
)
from catvton.preprocess import check_mask_shape, fit_cloth, fit_mask, fit_person, to_rgb

logger = logging.getLogger(__name__)

FILE_FIELDS = ("person_image", "cloth_image", "mask_image")
REQUIRED_FILE_FIELDS = ("person_image", "cloth_image")
ACCEPTED_FORMATS = "JPEG, PNG, WebP or HEIC/HEIF"
# Text fields are short numbers and words; the caps bound what a malformed client can make us hold.
MAX_TEXT_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16
MAX_PART_HEADER_BYTES = 16 * 1024  # Content-Disposition with a long filename is well under 1 KiB
# ISO-BMFF brands of HEIC/HEIF stills (the "ftyp" box at offset 4); AVIF is not decoded here.
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
# EXIF orientations 5..8 rotate by 90 degrees: the stored image is the transposed working shape.
TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


@dataclass
class Upload:
    """One file part as received; `content_type` and `filename` are only what the client claimed."""

    field: str
    data: bytes = field(repr=False)  # megabytes: keep them out of logs and tracebacks
    filename: str | None = None
    content_type: str | None = None


@dataclass
class ReceivedForm:
    files: dict[str, Upload] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


class _FormCollector:
    """Callbacks for python-multipart's streaming parser, enforcing the caps as bytes arrive."""

    def __init__(self, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.form = ReceivedForm()
        self.parts = 0
        self.finished = False
        self._header_field = b""
        self._header_value = b""
        self._header_bytes = 0
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._filename: str | None = None
        self._buffer = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise InvalidFieldError(f"too many form parts (more than {MAX_PARTS})")
        self._headers = {}
        self._header_bytes = 0
        self._buffer = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._header_value += data[start:end]

    def _count_header_bytes(self, count: int) -> None:
        self._header_bytes += count
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise InvalidFieldError(
                f"a form part's headers are longer than {MAX_PART_HEADER_BYTES // 1024} KiB"
            )

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._filename = filename.decode("utf-8", "replace") if filename is not None else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._buffer += data[start:end]
        if self._name in FILE_FIELDS:
            if len(self._buffer) > self.max_file_bytes:
                raise PayloadTooLargeError(
                    f"{self._name} is larger than the upload cap of "
                    f"{self.max_file_bytes / 1024 / 1024:g} MB; send a smaller photo"
                )
        elif len(self._buffer) > MAX_TEXT_FIELD_BYTES:
            raise InvalidFieldError(f"{self._name or 'a text field'} is too long")

    def on_part_end(self) -> None:
        # Classified by field name, not by the presence of a filename: `curl -F person_image=<x.jpg`
        # and some React Native versions send files without one.
        if self._name in FILE_FIELDS:
            content_type = self._headers.get(b"content-type")
            self.form.files[self._name] = Upload(
                field=self._name,
                data=bytes(self._buffer),
                filename=self._filename,
                content_type=content_type.decode("latin-1") if content_type else None,
            )
        elif self._name:
            self.form.fields[self._name] = self._buffer.decode("utf-8", "replace")
        self._buffer = bytearray()

    def on_end(self) -> None:
        self.finished = True


async def receive_upload(request: Request, *, max_file_bytes: int) -> ReceivedForm:
    """Stream the multipart body into memory, file by file, enforcing the per-file byte cap.

    Raises InvalidFieldError (not multipart, malformed, required file missing),
    PayloadTooLargeError, ClientDisconnectedError.
    """
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidFieldError(
            "send multipart/form-data with the files person_image and cloth_image "
            f"(got Content-Type {request.headers.get('content-type')!r})"
        )
    # The whole body's cap: every file at its cap plus the text parts. An announced oversize body
    # is refused before a byte of it is read; a chunked one (no Content-Length) when it gets there,
    # so bytes outside the parts (an endless epilogue after the closing boundary) are bounded too.
    body_cap = len(FILE_FIELDS) * max_file_bytes + MAX_PARTS * MAX_TEXT_FIELD_BYTES
    declared_length = request.headers.get("content-length", "")
    if declared_length.isdigit() and int(declared_length) > body_cap:
        raise _body_too_large(f"{int(declared_length) / 1024 / 1024:.1f} MB", max_file_bytes)
    collector = _FormCollector(max_file_bytes)
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_cap:
                raise _body_too_large(f"over {body_cap / 1024 / 1024:.1f} MB", max_file_bytes)
            parser.write(chunk)
    except ClientDisconnect as exc:
        raise ClientDisconnectedError("the client disconnected during the upload") from exc
    except ValueError as exc:  # python-multipart's MultipartParseError is a ValueError
        raise InvalidFieldError(f"malformed multipart body: {exc}") from exc
    parser.finalize()
    if not collector.finished:
        raise InvalidFieldError("the multipart body ended before its closing boundary")
    missing = [name for name in REQUIRED_FILE_FIELDS if name not in collector.form.files]
    if missing:
        raise InvalidFieldError(
            f"{', '.join(missing)}: required (a {ACCEPTED_FORMATS} file in a multipart form part)"
        )
    return collector.form


def _body_too_large(size: str, max_file_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body ({size}) is larger than the upload cap of "
        f"{max_file_bytes / 1024 / 1024:g} MB per file"
    )


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


def decode_image(
    upload: Upload, *, size: tuple[int, int], max_pixels: int, rgb: bool = True
) -> Image.Image:
    """Bytes -> upright image, decoded no larger than a working size of `size` (W, H) needs.

    `rgb` converts to 8-bit RGB (transparency on white); a mask (`rgb=False`) keeps its mode,
    except that transparency goes on black: a transparent background means "keep", whatever colour
    its invisible pixels hold (drawing apps often leave them white, which would mean "repaint").

    Raises UnsupportedImageError (empty, not an accepted format, truncated or corrupt) and
    PayloadTooLargeError (more pixels than `max_pixels`), both naming the field.
    """
    name = upload.field
    if not upload.data:
        raise UnsupportedImageError(f"{name} is empty; send a {ACCEPTED_FORMATS} photo")
    image_format = sniff_format(upload.data)
    if image_format is None:
        claimed = f" (sent as {upload.content_type!r})" if upload.content_type else ""
        raise UnsupportedImageError(
            f"{name} is not a {ACCEPTED_FORMATS} image{claimed}; the format is judged by the bytes"
        )
    try:
        if image_format == "HEIF":
            image = _decode_heif(upload.data, name, max_pixels)
        else:
            image = Image.open(io.BytesIO(upload.data), formats=[image_format])  # header only
            _check_pixels(name, image.size, max_pixels)
            if image_format == "JPEG":
                _draft_for(image, size)
            image.load()
        # Inside the try: a corrupt EXIF block fails here, when the orientation is read.
        return to_rgb(image) if rgb else _mask_on_black(ImageOps.exif_transpose(image))
    except PayloadTooLargeError:
        raise
    except Image.DecompressionBombError as exc:
        raise PayloadTooLargeError(
            f"{name} has more pixels than the cap of {max_pixels / 1e6:g} megapixels"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:
        # Decoders of hostile bytes fail in many ways (Pillow: OSError, SyntaxError, ValueError,
        # EOFError, struct.error; pillow-heif: RuntimeError, IndexError): all mean a bad file.
        logger.info("%s: %s decoding failed: %r", name, image_format, exc)
        raise UnsupportedImageError(
            f"{name} could not be decoded as {image_format}: "
            f"the file is truncated or corrupt ({exc})"
        ) from exc


def _mask_on_black(image: Image.Image) -> Image.Image:
    """A mask with transparency -> `L`, transparent pixels black ("keep"); others unchanged."""
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("L")


def _check_pixels(name: str, image_size: tuple[int, int], max_pixels: int) -> None:
    width, height = image_size
    if width * height > max_pixels:
        raise PayloadTooLargeError(
            f"{name} is {width}x{height} = {width * height / 1e6:.0f} megapixels, "
            f"over the cap of {max_pixels / 1e6:g} megapixels"
        )


def _decode_heif(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """HEIC/HEIF through pillow-heif directly, not through its global Pillow plugin registration."""
    heif_file = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)  # header only
    _check_pixels(name, heif_file.size, max_pixels)
    return heif_file.to_pillow()


def _draft_for(image: Image.Image, size: tuple[int, int]) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the result still covers the working size.

    A 12 MP photo for a 768x1024 working size decodes at 1/2 scale: a quarter of the pixels, a
    fraction of the time, and no visible loss since it is downscaled afterwards anyway.
    """
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    width, height = size
    stored_size = (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)
    image.draft("RGB", stored_size)


@dataclass
class TryOnImages:
    person_image: Image.Image
    cloth_image: Image.Image
    mask_image: Image.Image | None


async def decode_uploads(
    form: ReceivedForm, *, size: tuple[int, int], max_pixels: int
) -> TryOnImages:
    """Stage 1 of a try-on: every uploaded file -> image (see `decode_image`), in the thread pool.

    One thread-pool task per file: libjpeg and zlib release the GIL, so the person and the garment
    decode on two cores at once.
    """
    names = list(form.files)
    decoded = await asyncio.gather(
        *(
            run_in_threadpool(
                decode_image,
                form.files[name],
                size=size,
                max_pixels=max_pixels,
                rgb=name != "mask_image",
            )
            for name in names
        )
    )
    images = dict(zip(names, decoded, strict=True))
    return TryOnImages(
        person_image=images["person_image"],
        cloth_image=images["cloth_image"],
        mask_image=images.get("mask_image"),
    )


async def fit_to_size(images: TryOnImages, size: tuple[int, int]) -> TryOnImages:
    """Stage 2: fit each image to the working size once, with the pipeline's own rules.

    Done here, in parallel thread-pool tasks (Pillow's resampling releases the GIL), so the device
    worker spends its time on the model; the pipeline's own fitting is then a no-op. The automatic
    mask is computed later, on the fitted person.
    """
    if images.mask_image is not None:
        # On the images as decoded, as the pipeline would (it sees them fitted): a mask of another
        # shape would be cropped onto a different region of the photo. InvalidInputError: 422.
        check_mask_shape(images.person_image, images.mask_image, size)
    fits = [
        run_in_threadpool(fit_person, images.person_image, size),
        run_in_threadpool(fit_cloth, images.cloth_image, size),
    ]
    if images.mask_image is not None:
        fits.append(run_in_threadpool(fit_mask, images.mask_image, size))
    person_image, cloth_image, *mask_image = await asyncio.gather(*fits)
    return TryOnImages(
        person_image=person_image,
        cloth_image=cloth_image,
        mask_image=mask_image[0] if mask_image else None,
    )
