"""Job test helpers: submit over real HTTP, poll, read server-sent events, count UNet calls.

UNet calls are attributed to requests by the request id the device worker runs each job under
(a torch forward pre-hook on the real network reads it), so a test can prove a canceled job
never reached the GPU and in which order the two doors were served.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch
from http_helpers import FAST as FAST  # re-exported: the jobs tests import both from here
from http_helpers import SLOW as SLOW
from http_helpers import post_parts, serve, tiny_settings, try_on_parts, wait_until_ready
from PIL import Image

from app.edge.request_id import current_request_id
from app.inference.worker import InferenceWorker

JOBS = "/api/try-on/jobs"


@contextmanager
def jobs_server(tiny_weights: Path, **overrides: object) -> Iterator[tuple[str, InferenceWorker]]:
    """A loaded server (tiny weights) and its worker, whose UNet the tests may hook."""
    settings = tiny_settings(tiny_weights, **overrides)
    worker = InferenceWorker.from_settings(settings)
    with serve(settings, worker) as base_url:
        assert wait_until_ready(base_url)["status"] == "ok"
        yield base_url, worker


def mask_bytes(size: tuple[int, int] = (120, 160)) -> bytes:
    """A mask with the person's shape (see http_helpers.image_bytes), white over the torso."""
    mask = Image.new("L", size, 0)
    mask.paste(255, (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def masked_parts(**fields: str) -> list:
    """A valid request with a user mask, which skips the AutoMasker."""
    return [*try_on_parts(**fields), ("mask_image", mask_bytes(), "mask.png", "image/png")]


def submit(
    base_url: str, parts: list, headers: dict[str, str] | None = None, path: str = JOBS
) -> httpx.Response:
    return post_parts(f"{base_url}{path}", parts, headers)


def document(base_url: str, job_id: str, headers: dict[str, str] | None = None) -> dict:
    response = httpx.get(f"{base_url}{JOBS}/{job_id}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_job(
    base_url: str,
    job_id: str,
    condition,
    timeout: float = 300,
    headers: dict[str, str] | None = None,
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = document(base_url, job_id, headers)
        if condition(body):
            return body
        time.sleep(0.02)
    raise TimeoutError(f"job never matched: {document(base_url, job_id, headers)}")


def wait_final(
    base_url: str, job_id: str, timeout: float = 300, headers: dict[str, str] | None = None
) -> dict:
    return wait_for_job(
        base_url,
        job_id,
        lambda body: body["status"] in ("succeeded", "failed", "canceled"),
        timeout,
        headers,
    )


def read_events(base_url: str, job_id: str, timeout: float = 300) -> list[tuple[str, str, dict]]:
    """Stream a job's events with a real streaming client: (event, id, data) until it ends."""
    events: list[tuple[str, str, dict]] = []
    fields: dict[str, str] = {}
    with httpx.stream("GET", f"{base_url}{JOBS}/{job_id}/events", timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "data" in fields:
                    events.append(
                        (fields.get("event", ""), fields.get("id", ""), json.loads(fields["data"]))
                    )
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    return events


class UNetCalls:
    """Counts UNet forwards per request id (the worker runs each job in its request's context)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.lock = threading.Lock()
        self.by_request: Counter[str] = Counter()
        self.order: list[str] = []
        self.handle = unet.register_forward_pre_hook(self.count)

    def count(self, module: torch.nn.Module, args: tuple) -> None:
        request_id = current_request_id() or "-"
        with self.lock:
            self.by_request[request_id] += 1
            if not self.order or self.order[-1] != request_id:
                self.order.append(request_id)

    def remove(self) -> None:
        self.handle.remove()


@contextmanager
def counting_unet_calls(worker: InferenceWorker) -> Iterator[UNetCalls]:
    assert worker.device.models is not None
    calls = UNetCalls(worker.device.models.pipeline.unet)
    try:
        yield calls
    finally:
        calls.remove()


class UNetGate:
    """Holds the real UNet at its `hold_at`-th forward call until released (60 s at most)."""

    def __init__(self, unet: torch.nn.Module, hold_at: int) -> None:
        self.hold_at, self.calls = hold_at, 0
        self.reached, self.released = threading.Event(), threading.Event()
        self.handle = unet.register_forward_pre_hook(self.enter)

    def enter(self, module: torch.nn.Module, args: tuple) -> None:
        self.calls += 1
        if self.calls == self.hold_at:
            self.reached.set()
            self.released.wait(60)

    def __enter__(self) -> UNetGate:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.released.set()
        self.handle.remove()
