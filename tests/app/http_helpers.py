"""Helpers for the real-HTTP tests: uvicorn on a free port in a thread, hand-written multipart."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pillow_heif
import uvicorn
from fastapi import FastAPI
from PIL import Image

from app.__main__ import server_options
from app.inference.models import Models, ProgressCallback, load_models
from app.inference.worker import InferenceWorker
from app.main import create_app
from app.settings import Settings
from catvton.tiny import TINY_SIZE

TINY_SIZE_TEXT = f"{TINY_SIZE[0]}x{TINY_SIZE[1]}"
# Ten steps without guidance: the API's minimum, the cheapest valid try-on (seconds on CPU).
FAST = {"num_inference_steps": "10", "guidance_scale": "1.0"}
# A hundred steps: a try-on that keeps the device busy long enough to fill a queue behind it.
SLOW = {"num_inference_steps": "100", "guidance_scale": "1.0"}
HELD_BACK = "waiting for the test"  # the loading message of held_back_worker


@contextmanager
def serve(
    settings: Settings, worker: InferenceWorker | None = None, app: FastAPI | None = None
) -> Iterator[str]:
    """Run `app` (default: `create_app(settings, worker)`) under uvicorn on 127.0.0.1:<free port>;
    yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app or create_app(settings, worker),
        log_config=None,
        access_log=False,
        lifespan="on",
        **server_options(settings),  # as `python -m app` serves
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def held_back_worker(settings: Settings, released: threading.Event) -> InferenceWorker:
    """A worker whose real loader reports `HELD_BACK` and waits for `released` (60 s at most)
    before loading: the "loading" state lasts until the test has seen what it wants of it."""

    def load_when_released(progress: ProgressCallback) -> Models:
        progress(HELD_BACK)
        released.wait(60)
        return load_models(settings, progress)

    return InferenceWorker.from_settings(settings, load_when_released)


def wait_until_ready(base_url: str, timeout: float = 120.0) -> dict:
    """Poll /health until it leaves "loading"; return its body."""
    # Polled less often than wait_for_health's default: the load runs in this process too.
    return wait_for_health(base_url, lambda body: body["status"] != "loading", timeout, 0.05)


def health(base_url: str) -> dict:
    """The /health body, whatever its status code (503 while loading, draining or failed)."""
    return httpx.get(f"{base_url}/health", timeout=10).json()


def wait_for_health(
    base_url: str, condition: Callable[[dict], bool], timeout: float = 60, interval: float = 0.02
) -> dict:
    """Poll /health every `interval` seconds until `condition(body)`; return that body."""
    deadline = time.monotonic() + timeout
    while True:
        body = health(base_url)
        if condition(body):
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"/health never matched in {timeout} s: {body}")
        time.sleep(interval)


def tiny_settings(weights_dir: Path, **overrides: object) -> Settings:
    options: dict[str, object] = {
        "weights_dir": weights_dir,
        "device": "cpu",
        "dtype": "fp32",
        "size": TINY_SIZE_TEXT,
    }
    options.update(overrides)
    return Settings(**options)


def image_bytes(size: tuple[int, int] = (120, 160), image_format: str = "JPEG") -> bytes:
    """A smooth synthetic photo (a gradient with a block), encoded."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    image.paste((200, 40, 40), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def heic_bytes(image: Image.Image) -> bytes:
    """`image` as an iPhone sends photos: HEIC."""
    buffer = io.BytesIO()
    pillow_heif.from_pillow(image).save(buffer, quality=90)
    return buffer.getvalue()


Part = tuple[str, bytes, str | None, str | None]  # name, content, filename, content type


def multipart(parts: list[Part], boundary: str = "----RNFormBoundary7MA4YWxk") -> tuple[bytes, str]:
    """A multipart/form-data body written by hand, so tests control every part header exactly
    (React Native sends `image/jpg`, filenames without extension, or no part type at all)."""
    chunks = []
    for name, content, filename, content_type in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        header = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if content_type is not None:
            header += f"Content-Type: {content_type}\r\n"
        chunks.append(header.encode() + b"\r\n" + content + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def try_on_parts(**fields: str) -> list[Part]:
    """A valid request: two JPEG files plus `fields` as text parts."""
    parts: list[Part] = [
        ("person_image", image_bytes(), "person.jpg", "image/jpeg"),
        ("cloth_image", image_bytes((100, 100)), "cloth.jpg", "image/jpeg"),
    ]
    parts += [(name, value.encode(), None, None) for name, value in fields.items()]
    return parts


def post_parts(
    url: str, parts: list[Part], headers: dict[str, str] | None = None, timeout: float = 120
) -> httpx.Response:
    """POST `parts` to `url` as the hand-written multipart body, with `headers` added."""
    body, content_type = multipart(parts)
    return httpx.post(
        url,
        content=body,
        headers={"Content-Type": content_type, **(headers or {})},
        timeout=timeout,
    )


def post_try_on(
    base_url: str, parts: list[Part], headers: dict[str, str] | None = None, timeout: float = 120
) -> httpx.Response:
    return post_parts(f"{base_url}/api/try-on", parts, headers, timeout)


def assert_envelope(response: httpx.Response, status: int, code: str, says: str) -> dict:
    """The error envelope (README, "Errors"): status, stable code, message, request id in the
    body and the header."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"] == code
    assert says in body["message"], body["message"]
    assert body["requestId"] == response.headers["X-Request-ID"]
    return body


def send_unread(base_url: str, parts: list, headers: dict[str, str] | None = None) -> socket.socket:
    """A complete synchronous try-on on a raw socket, left unread: the test hangs up by closing
    it (httpx gives no way to drop a request at a chosen moment)."""
    body, content_type = multipart(parts)
    url = urlsplit(base_url)
    connection = socket.create_connection((url.hostname, url.port))
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"POST /api/try-on HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: {content_type}\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    connection.sendall(head.encode() + body)
    return connection
