"""POST /api/try-on through real HTTP on tiny generated weights: success and every error row."""

from __future__ import annotations

import base64
import io
import logging
import socket
from urllib.parse import urlsplit

import httpx
import pillow_heif
import pytest
from http_helpers import (
    FAST,
    TINY_SIZE,
    assert_envelope,
    image_bytes,
    post_parts,
    post_try_on,
    try_on_parts,
)
from PIL import Image

from app.observe.logs import RequestIdLogFilter


def decode_result(body: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(body["imageBase64"], validate=True)))


def test_success_has_the_contract_fields_and_a_working_size_png(
    tiny_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestIdLogFilter())
    response = post_try_on(tiny_server, try_on_parts(**FAST), headers={"X-Request-ID": "app-42"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["message"] == "Try-on completed successfully"
    assert body["mimeType"] == "image/png"
    assert body["seed"] == 42
    assert body["requestId"] == "app-42" == response.headers["X-Request-ID"]
    assert {"decode", "preprocess", "infer", "mask", "pipeline_denoise", "encode", "total"} <= set(
        body["timingsMs"]
    )
    image = decode_result(body)
    assert (image.format, image.size) == ("PNG", TINY_SIZE)
    assert (body["width"], body["height"]) == TINY_SIZE
    # The id reaches the log lines of the request, also those the device thread writes.
    tagged = {record.name for record in caplog.records if record.request_id == "app-42"}
    assert {"app.access", "app.inference.models"} <= tagged


def test_react_native_style_multipart_with_jpeg_output(tiny_server: str) -> None:
    """An iPhone HEIC named .jpg sent as `image/jpg`, a PNG without extension or part type."""
    heic = io.BytesIO()
    pillow_heif.from_pillow(Image.open(io.BytesIO(image_bytes()))).save(heic, quality=90)
    parts = [
        ("person_image", heic.getvalue(), "IMG_0001.jpg", "image/jpg"),
        ("cloth_image", image_bytes((80, 120), image_format="PNG"), "cloth", None),
        ("cloth_type", b"Upper_Body", None, None),
        ("num_inference_steps", b"10", None, "text/plain"),
        ("guidance_scale", b"", None, None),  # blank: the default
        ("seed", b"-1", None, None),
        ("output_format", b"JPG", None, None),
    ]
    response = post_try_on(tiny_server, parts)
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0 <= body["seed"] < 2**32  # -1 asked for a random seed; the used one is reported
    assert len(response.headers["X-Request-ID"]) == 32  # generated when the client sends none
    assert body["mimeType"] == "image/jpeg"
    image = decode_result(body)
    assert (image.format, image.size) == ("JPEG", TINY_SIZE)


def test_user_mask_replaces_the_automatic_one_with_webp_output(tiny_server: str) -> None:
    mask = Image.new("L", (120, 160), 0)
    mask.paste(255, (30, 40, 90, 120))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    parts = [
        *try_on_parts(output_format="webp", **FAST),
        ("mask_image", buffer.getvalue(), "mask.png", "image/png"),
    ]
    body = post_try_on(tiny_server, parts).json()
    assert body["success"] is True
    assert "mask" not in body["timingsMs"]
    image = decode_result(body)
    assert (image.format, image.size, body["mimeType"]) == ("WEBP", TINY_SIZE, "image/webp")


def test_a_mask_of_another_shape_than_the_person_gets_422(tiny_server: str) -> None:
    """The person is 120x160: a square mask cannot be placed on it (the library's own rule)."""
    buffer = io.BytesIO()
    Image.new("L", (100, 100), 255).save(buffer, format="PNG")
    parts = [*try_on_parts(**FAST), ("mask_image", buffer.getvalue(), "mask.png", "image/png")]
    assert_envelope(post_try_on(tiny_server, parts), 422, "invalid_field", "mask_image (100x100)")


def png_bytes(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 200).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("path", ["/api/try-on", "/api/try-on/jobs"])
@pytest.mark.parametrize(
    ("field", "image"),
    [
        ("person_image", image_bytes((1, 1))),  # was "tried on"
        ("cloth_image", png_bytes((63, 200))),
        ("mask_image", png_bytes((48, 64), "L")),  # the person's aspect ratio: placeable
    ],
    ids=["person-1x1", "cloth-63x200", "mask-48x64"],
)
def test_an_image_too_small_to_use_gets_422_naming_the_field_and_the_minimum(
    tiny_server: str, path: str, field: str, image: bytes
) -> None:
    parts = [part for part in try_on_parts(**FAST) if part[0] != field]
    parts.append((field, image, "small.png", None))
    response = post_parts(f"{tiny_server}{path}", parts)
    body = assert_envelope(response, 422, "image_too_small", f"{field} is ")
    assert "at least 64 pixels on each side" in body["message"]


def _valid_files() -> list:
    return try_on_parts()[:2]


@pytest.mark.parametrize(
    ("parts", "says"),
    [
        ([try_on_parts()[1]], "person_image: required"),
        ([try_on_parts()[0]], "cloth_image: required"),
        ([*_valid_files(), ("num_inference_steps", b"many", None, None)], "num_inference_steps"),
        (
            [*_valid_files(), ("num_inference_steps", b"5", None, None)],
            "num_inference_steps 10..100",
        ),
        (
            [*_valid_files(), ("num_inference_steps", b"101", None, None)],
            "less than or equal to 100",
        ),
        ([*_valid_files(), ("guidance_scale", b"9.5", None, None)], "guidance_scale"),
        ([*_valid_files(), ("guidance_scale", b"nan", None, None)], "guidance_scale"),
        ([*_valid_files(), ("seed", b"-2", None, None)], "seed"),
        ([*_valid_files(), ("seed", str(2**32).encode(), None, None)], "seed"),
        ([*_valid_files(), ("cloth_type", b"hat", None, None)], "upper"),
        ([*_valid_files(), ("output_format", b"gif", None, None)], "output_format"),
    ],
    ids=[
        "no-person",
        "no-cloth",
        "steps-not-a-number",
        "steps-too-few",
        "steps-too-many",
        "guidance-too-high",
        "guidance-nan",
        "seed-negative",
        "seed-too-big",
        "unknown-cloth-type",
        "unknown-output-format",
    ],
)
def test_invalid_fields_get_422_naming_the_field(tiny_server: str, parts: list, says: str) -> None:
    assert_envelope(post_try_on(tiny_server, parts), 422, "invalid_field", says)


def test_unknown_cloth_type_lists_the_allowed_values(tiny_server: str) -> None:
    parts = [*_valid_files(), ("cloth_type", b"hat", None, None)]
    body = assert_envelope(post_try_on(tiny_server, parts), 422, "invalid_field", "cloth_type")
    for allowed in ("upper", "lower", "overall"):
        assert allowed in body["message"]


def _jpeg_truncated() -> bytes:
    data = image_bytes((400, 400))
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("content", "filename", "says"),
    [
        (b"", "empty.jpg", "person_image is empty"),
        (b"I am a text file with a photo's name\n", "photo.jpg", "person_image is not a JPEG"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "scan.pdf", "person_image"),
        (_jpeg_truncated(), "cut.jpg", "truncated or corrupt"),
    ],
    ids=["empty", "text-named-jpg", "pdf", "truncated-jpeg"],
)
def test_undecodable_files_get_415_naming_the_field(
    tiny_server: str, content: bytes, filename: str, says: str
) -> None:
    parts = [("person_image", content, filename, "image/jpeg"), try_on_parts()[1]]
    assert_envelope(post_try_on(tiny_server, parts), 415, "unsupported_image", says)


def test_upload_over_the_byte_cap_gets_413(tiny_server: str) -> None:
    oversized = image_bytes() + b"\0" * (1024 * 1024 + 1)  # the fixture's cap is 1 MiB
    parts = [("person_image", oversized, "big.jpg", "image/jpeg"), try_on_parts()[1]]
    assert_envelope(post_try_on(tiny_server, parts), 413, "payload_too_large", "1 MB")


def test_pixel_bomb_gets_413(tiny_server: str) -> None:
    bomb = Image.new("L", (8000, 6000))  # 48 MP of zeros: a 50 KB PNG
    buffer = io.BytesIO()
    bomb.save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 200_000
    parts = [("person_image", buffer.getvalue(), "bomb.png", "image/png"), try_on_parts()[1]]
    assert_envelope(post_try_on(tiny_server, parts), 413, "payload_too_large", "40 megapixels")


def test_a_body_that_is_not_multipart_gets_422(tiny_server: str) -> None:
    response = httpx.post(f"{tiny_server}/api/try-on", json={"person_image": "x"})
    assert_envelope(response, 422, "invalid_field", "multipart/form-data")


def test_unknown_route_uses_the_envelope(tiny_server: str) -> None:
    assert_envelope(httpx.get(f"{tiny_server}/nope"), 404, "not_found", "Not Found")


def test_server_stays_up_and_docs_are_served(tiny_server: str) -> None:
    assert httpx.get(f"{tiny_server}/health").status_code == 200
    assert httpx.get(f"{tiny_server}/docs").status_code == 200
    schema = httpx.get(f"{tiny_server}/openapi.json").json()
    body = schema["paths"]["/api/try-on"]["post"]["requestBody"]["content"]
    assert "person_image" in body["multipart/form-data"]["schema"]["properties"]


def test_cors_preflight_from_the_app(tiny_server: str) -> None:
    response = httpx.options(
        f"{tiny_server}/api/try-on",
        headers={"Origin": "http://localhost:8081", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", "http://localhost:8081")


def test_an_announced_oversize_body_gets_413_before_it_is_sent(tiny_server: str) -> None:
    url = urlsplit(tiny_server)
    with socket.create_connection((url.hostname, url.port), timeout=10) as connection:
        connection.sendall(
            f"POST /api/try-on HTTP/1.1\r\nHost: {url.netloc}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n"
            "Content-Length: 5000000000\r\n\r\n".encode()
        )
        reply = ""
        while "}" not in reply:  # the headers and the JSON body may come in separate reads
            chunk = connection.recv(65536).decode("latin-1")
            if not chunk:
                break
            reply += chunk
    assert reply.startswith("HTTP/1.1 413")
    assert '"error":"payload_too_large"' in reply


def test_huge_request_headers_get_400_and_the_server_stays_up(tiny_server: str) -> None:
    url = urlsplit(tiny_server)
    with socket.create_connection((url.hostname, url.port), timeout=10) as connection:
        # 20 KB of a header that never ends: all of it is read before the server answers and closes.
        connection.sendall(f"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 20_000}".encode())
        reply = connection.recv(65536).decode("latin-1")
    assert reply.startswith("HTTP/1.1 400"), reply[:100]
    assert httpx.get(f"{tiny_server}/health").status_code == 200


def test_wrong_method_uses_the_envelope_and_keeps_allow(tiny_server: str) -> None:
    response = httpx.get(f"{tiny_server}/api/try-on")
    assert_envelope(response, 405, "http_405", "Method Not Allowed")
    assert response.headers["Allow"] == "POST"
