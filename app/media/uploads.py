"""The multipart body of a try-on, read as it streams in, with every cap a hostile client meets.

Read on the event loop (it only copies bytes), file by file, stopping at the first cap passed:
- bytes: per file, per text field, per part header, for the whole body, so a 2 GB upload costs
  20 MB of memory; no temporary file is written (FastAPI's own form parsing spools to disk);
- time: the whole body within `upload_timeout`, and never `upload_idle_timeout` without a byte, so a
  stalled or trickling client cannot hold its queue place (408, connection closed);
- parser work: python-multipart steps through a whole delimiter followed by a wrong byte in Python
  (0.23 us a byte: 8 s of event loop for 60 MB of them). A form has at most `MAX_PARTS` parts, so
  a body holding more delimiters than that is refused after a C-speed count, before it is parsed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

if TYPE_CHECKING:  # a typed dict python-multipart declares for type checkers only
    from python_multipart.multipart import MultipartCallbacks

from app.edge.errors import (
    ClientDisconnectedError,
    InvalidFieldError,
    PayloadTooLargeError,
    UploadTimeoutError,
)

FILE_FIELDS = ("person_image", "cloth_image", "mask_image")
REQUIRED_FILE_FIELDS = ("person_image", "cloth_image")
ACCEPTED_FORMATS = "JPEG, PNG, WebP or HEIC/HEIF"
# Text fields are short numbers and words; the caps bound what a malformed client can make us hold.
MAX_TEXT_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16
MAX_PART_HEADER_BYTES = 16 * 1024  # Content-Disposition with a long filename is well under 1 KiB
# A body of MAX_PARTS parts holds MAX_PARTS delimiters ("\r\n--" + boundary), the closing one
# included, plus one when a preamble precedes the first.
MAX_DELIMITERS = MAX_PARTS + 1


@dataclass(frozen=True)
class UploadLimits:
    """What one request body may cost: bytes per file, seconds in whole and without a byte."""

    max_file_bytes: int
    timeout: float
    idle_timeout: float

    @property
    def max_body_bytes(self) -> int:
        """Every file at its cap plus the text parts. Counted also without Content-Length, so
        bytes outside the parts (an endless epilogue after the closing boundary) are bounded."""
        return len(FILE_FIELDS) * self.max_file_bytes + MAX_PARTS * MAX_TEXT_FIELD_BYTES


@dataclass
class Upload:
    """One file part as received; `content_type` and `filename` are only what the client claimed."""

    field: str
    data: bytes = dataclasses.field(repr=False)  # megabytes: keep them out of logs and tracebacks
    filename: str | None = None
    content_type: str | None = None


@dataclass
class ReceivedForm:
    files: dict[str, Upload] = dataclasses.field(default_factory=dict)
    fields: dict[str, str] = dataclasses.field(default_factory=dict)


class _FormCollector:
    """Callbacks for python-multipart's streaming parser, enforcing the caps as bytes arrive."""

    def __init__(self, max_file_bytes: int, file_fields: tuple[str, ...] = FILE_FIELDS) -> None:
        self.max_file_bytes = max_file_bytes
        self.file_fields = file_fields
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

    def callbacks(self) -> MultipartCallbacks:
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
        if self._name in self.file_fields:
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
        if self._name in self.file_fields:
            content_type = self._headers.get(b"content-type")
            self.form.files[self._name] = Upload(
                field=self._name,
                # bytes, not the bytearray: io.BytesIO shares a bytes object but copies a bytearray,
                # so each decode would copy the whole file; this copy lives one line (the buffer
                # is replaced below).
                data=bytes(self._buffer),
                filename=self._filename,
                content_type=content_type.decode("latin-1") if content_type else None,
            )
        elif self._name:
            self.form.fields[self._name] = self._buffer.decode("utf-8", "replace")
        self._buffer = bytearray()

    def on_end(self) -> None:
        self.finished = True


class _DelimiterCounter:
    """Counts "\r\n--boundary" across chunk edges with bytes.count (C speed) and refuses a body
    holding more than MAX_DELIMITERS."""

    def __init__(self, boundary: bytes) -> None:
        self.delimiter = b"\r\n--" + boundary
        self.count = 0
        self._tail = b""  # the previous chunk's last bytes: a delimiter may straddle two chunks

    def feed(self, chunk: bytes) -> None:
        window = self._tail + chunk
        self.count += window.count(self.delimiter)
        self._tail = window[-(len(self.delimiter) - 1) :]
        if self.count > MAX_DELIMITERS:
            raise InvalidFieldError(
                f"malformed multipart body: more than {MAX_DELIMITERS} boundaries "
                f"(a form has at most {MAX_PARTS} parts)"
            )


async def receive_upload(
    request: Request,
    limits: UploadLimits,
    *,
    file_fields: tuple[str, ...] = FILE_FIELDS,
    required: tuple[str, ...] = REQUIRED_FILE_FIELDS,
) -> ReceivedForm:
    """Stream the multipart body into memory, file by file, within `limits`.

    `file_fields` are read as files (every other part as text), `required` must be among them
    (a try-on naming stored images checks its own pairs, app/images/resolve.py).

    Raises InvalidFieldError (not multipart, malformed, required file missing),
    PayloadTooLargeError, UploadTimeoutError, ClientDisconnectedError.
    """
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidFieldError(
            "send multipart/form-data with the files person_image and cloth_image "
            f"(got Content-Type {request.headers.get('content-type')!r})"
        )
    # An announced oversize body is refused before a byte of it is read.
    declared_length = request.headers.get("content-length", "")
    if declared_length.isdigit() and int(declared_length) > limits.max_body_bytes:
        raise _body_too_large(f"{int(declared_length) / 1024 / 1024:.1f} MB", limits)
    collector = _FormCollector(limits.max_file_bytes, file_fields)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
    except ValueError as exc:  # e.g. a boundary over python-multipart's 256 characters
        raise InvalidFieldError(f"malformed multipart boundary: {exc}") from exc
    delimiters = _DelimiterCounter(boundary)
    received = 0
    try:
        async for chunk in _body_chunks(request, limits):
            received += len(chunk)
            if received > limits.max_body_bytes:
                raise _body_too_large(f"over {limits.max_body_bytes / 1024 / 1024:.1f} MB", limits)
            delimiters.feed(chunk)
            parser.write(chunk)
    except ValueError as exc:  # python-multipart's MultipartParseError is a ValueError
        raise InvalidFieldError(f"malformed multipart body: {exc}") from exc
    parser.finalize()
    if not collector.finished:
        raise InvalidFieldError("the multipart body ended before its closing boundary")
    missing = [name for name in required if name not in collector.form.files]
    if missing:
        raise InvalidFieldError(
            f"{', '.join(missing)}: required (a {ACCEPTED_FORMATS} file in a multipart form part)"
        )
    return collector.form


async def _body_chunks(request: Request, limits: UploadLimits) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, within the whole-body and the idle deadline.

    Read from `request.receive` directly: `request.stream()` cannot be resumed once a timeout
    cancelled it mid-read.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.timeout
    while True:
        left = deadline - loop.time()
        wait = min(limits.idle_timeout, left)
        try:
            message = await asyncio.wait_for(request.receive(), timeout=max(wait, 0))
        except TimeoutError:
            if wait < limits.idle_timeout:
                raise UploadTimeoutError(
                    f"the upload took longer than {limits.timeout:g} s; "
                    "try again on a faster connection or with smaller photos"
                ) from None
            raise UploadTimeoutError(
                f"the upload sent nothing for {limits.idle_timeout:g} s; "
                "try again on a steadier connection"
            ) from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError("the client disconnected during the upload")
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return


def _body_too_large(size: str, limits: UploadLimits) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body ({size}) is larger than the upload cap of "
        f"{limits.max_file_bytes / 1024 / 1024:g} MB per file"
    )
