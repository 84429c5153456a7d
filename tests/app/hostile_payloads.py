"""Hostile uploads generated in code, and raw-socket clients, for the hostile-client tests and
`scripts/hostile_mix.py`: each payload is one finding of issue 8, small on the wire."""

from __future__ import annotations

import io
import socket
import struct
import time
import zlib
from urllib.parse import urlsplit

from http_helpers import try_on_parts
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def deep_png(size: tuple[int, int]) -> bytes:
    """A 16-bit RGBA PNG of transparent black: 40 megapixels is 1.4 MB on the wire, 160 MB decoded
    (Pillow keeps 8 bits per channel) and seconds of decoding."""
    width, height = size
    rows = (b"\x00" * (1 + 8 * width)) * 64  # filter byte + 8 bytes a pixel, 64 rows at a time
    compressor = zlib.compressobj(1)
    data = b"".join(compressor.compress(rows) for _ in range(height // 64))
    data += compressor.compress(b"\x00" * (1 + 8 * width) * (height % 64)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        [_png_chunk(b"IHDR", header), _png_chunk(b"IDAT", data), _png_chunk(b"IEND", b"")]
    )


def corrupt_png(size: tuple[int, int] = (64, 64)) -> bytes:
    """A PNG whose header is valid and whose pixel data is not zlib: it fails fast in decoding."""
    header = struct.pack(">IIBBBBB", *size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        [_png_chunk(b"IHDR", header), _png_chunk(b"IDAT", b"junk" * 16), _png_chunk(b"IEND", b"")]
    )


def many_scan_jpeg(size: tuple[int, int], scans: int) -> bytes:
    """A flat grey progressive JPEG whose last (AC refinement) scan is repeated `scans` times.

    Each repeat is a few dozen bytes but makes libjpeg visit every coefficient of every block
    again: 6000x6000 with 100 repeats is 0.15 MB and took 22 s to decode on a 2-core CPU.
    """
    buffer = io.BytesIO()
    Image.new("L", size, 128).save(buffer, format="JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last_scan = data.rfind(b"\xff\xda")
    end = data.rfind(b"\xff\xd9")
    return data[:end] + data[last_scan:end] * scans + data[end:]


def near_boundary_part_data(boundary: str, size: int) -> bytes:
    """Part data made of whole delimiters each followed by a wrong byte: python-multipart steps
    through every one of them in Python (0.23 us a byte: 8 s of event loop for 60 MB)."""
    unit = f"\r\n--{boundary}Q".encode()
    return unit * (size // len(unit))


def try_on_parts_with(**files: bytes) -> list:
    """A valid 10-step request (`try_on_parts`) whose files are replaced or added by `files`."""
    parts = try_on_parts(num_inference_steps="10", guidance_scale="1.0")
    named = {name: (name, data, f"{name}.bin", None) for name, data in files.items()}
    return [named.pop(part[0], part) for part in parts] + list(named.values())


def open_post(base_url: str, content_type: str, content_length: int | None) -> socket.socket:
    """Send only the head of `POST /api/try-on`; the caller sends (or withholds) the body."""
    url = urlsplit(base_url)
    connection = socket.create_connection((url.hostname, url.port))
    head = f"POST /api/try-on HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: {content_type}\r\n"
    if content_length is None:
        head += "Transfer-Encoding: chunked\r\n"
    else:
        head += f"Content-Length: {content_length}\r\n"
    connection.sendall(head.encode() + b"\r\n")
    return connection


def read_response(connection: socket.socket, timeout: float) -> tuple[int, bytes, bool]:
    """(status, raw response, whether the server closed the connection) read within `timeout`."""
    connection.settimeout(timeout)
    deadline = time.monotonic() + timeout
    received = b""
    closed = False
    while time.monotonic() < deadline:
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            closed = True
            break
        received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            ),
            None,
        )
        if length is not None and len(body) >= length and b"connection: close" not in head.lower():
            break
    status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.1 ") else 0
    return status, received, closed
