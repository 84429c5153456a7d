"""Previews over real HTTP on the tiny weights (README, "Try-on jobs" and "Previews"):
the steps the rule picks, the route's ETag / 304 / Preview-Step, 404 preview_not_ready, 410 for a
forgotten job, the last preview kept after a cancel, none for the synchronous door, and a final
image bit-identical with previews on and off."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from http_helpers import assert_envelope, post_try_on, serve, tiny_settings, wait_until_ready
from jobs_helpers import (
    JOBS,
    UNetGate,
    document,
    masked_parts,
    read_events,
    submit,
    wait_final,
)
from PIL import Image

import app.inference.device as device_module
import app.jobs.runner as runner_module
from app.inference.worker import InferenceWorker
from app.jobs.store import InMemoryJobStore
from app.main import create_app
from catvton.tiny import TINY_SIZE

PREVIEW_SIZE = (TINY_SIZE[0] // 8 * 2, TINY_SIZE[1] // 8 * 2)  # latent size x 2


class ShiftedClock:
    """time.time(), plus what a test adds: moves the store past a job's expiry."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Server:
    def __init__(self, base_url: str, worker: InferenceWorker, clock: ShiftedClock) -> None:
        self.base_url = base_url
        self.worker = worker
        self.clock = clock

    @property
    def unet(self) -> torch.nn.Module:
        assert self.worker.device.models is not None
        return self.worker.device.models.pipeline.unet


@pytest.fixture(scope="module")
def server(tiny_weights: Path) -> Iterator[Server]:
    """A preview every 3 steps; no result cache (a fixed seed twice must run twice)."""
    settings = tiny_settings(tiny_weights, preview_every=3, cache_mb=0)
    worker = InferenceWorker.from_settings(settings)
    clock = ShiftedClock()
    store = InMemoryJobStore(
        ttl_s=900, max_bytes=10**8, max_jobs=100, max_jobs_per_client=100, clock=clock
    )
    with serve(settings, app=create_app(settings, worker, job_store=store)) as base_url:
        assert wait_until_ready(base_url)["status"] == "ok"
        yield Server(base_url, worker, clock)


class Counted:
    """Wraps a module function, counting its calls from any thread (and which thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> None:
        self.function = getattr(module, name)
        self.threads: list[str] = []
        monkeypatch.setattr(module, name, self)

    def __call__(self, *args: object) -> object:
        self.threads.append(threading.current_thread().name)
        return self.function(*args)


def job_parts(steps: int, seed: str = "7") -> list:
    return masked_parts(num_inference_steps=str(steps), guidance_scale="1.0", seed=seed)


def start_job(base_url: str, steps: int, seed: str = "7") -> str:
    response = submit(base_url, job_parts(steps, seed))
    assert response.status_code == 202, response.text
    return response.json()["jobId"]


def preview_url(base_url: str, job_id: str) -> str:
    return f"{base_url}{JOBS}/{job_id}/preview"


def test_previews_come_at_the_steps_the_rule_says_and_poll_with_etag(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = Counted(monkeypatch, device_module, "latents_to_preview")
    encoded = Counted(monkeypatch, runner_module, "preview_to_jpeg")
    job_id = start_job(server.base_url, steps=10)
    events = read_events(server.base_url, job_id)
    previews = [data for name, _, data in events if name == "preview"]
    url = f"{JOBS}/{job_id}/preview"
    assert previews == [{"url": url, "step": step} for step in (3, 6, 9, 10)]
    final = [data for name, _, data in events if name == "job"][-1]
    assert final["status"] == "succeeded"
    assert final["preview"] == {"url": url, "step": 10}  # stays after the end
    # Made on the device thread, encoded off it (the thread pool), once each.
    assert made.threads == ["device-worker"] * 4
    assert len(encoded.threads) == 4 and "device-worker" not in encoded.threads

    response = httpx.get(preview_url(server.base_url, job_id), timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert (response.headers["etag"], response.headers["preview-step"]) == ('"10"', "10")
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", PREVIEW_SIZE)

    # A client polling 50 times a second: 304s without a body, nothing encoded again.
    with httpx.Client(timeout=10) as client:
        for _ in range(50):
            again = client.get(
                preview_url(server.base_url, job_id), headers={"If-None-Match": '"10"'}
            )
            assert again.status_code == 304 and again.content == b""
            assert (again.headers["etag"], again.headers["preview-step"]) == ('"10"', "10")
            time.sleep(0.02)
    assert len(encoded.threads) == 4
    older = httpx.get(preview_url(server.base_url, job_id), headers={"If-None-Match": '"9"'})
    assert older.status_code == 200 and older.content == response.content


def test_the_synchronous_route_never_makes_previews(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = Counted(monkeypatch, device_module, "latents_to_preview")
    response = post_try_on(server.base_url, job_parts(10))
    assert response.status_code == 200, response.text
    assert made.threads == []


def test_no_preview_before_the_first_then_the_last_one_outlives_a_cancel_until_the_record(
    server: Server,
) -> None:
    base_url = server.base_url
    with UNetGate(server.unet, hold_at=1) as gate:
        job_id = start_job(base_url, steps=10)
        assert gate.reached.wait(60)
        early = httpx.get(preview_url(base_url, job_id), timeout=10)
        assert_envelope(early, 404, "preview_not_ready", "No preview yet")
        assert document(base_url, job_id)["preview"] is None
        httpx.post(f"{base_url}{JOBS}/{job_id}/cancel", timeout=10)
    assert wait_final(base_url, job_id)["preview"] is None  # canceled before its first
    # Held between two previews (step 3 made, step 6 not): cancel there.
    with UNetGate(server.unet, hold_at=5) as gate:
        job_id = start_job(base_url, steps=10)
        assert gate.reached.wait(60)
        canceled = httpx.post(f"{base_url}{JOBS}/{job_id}/cancel", timeout=10)
        assert canceled.status_code == 202
    body = wait_final(base_url, job_id)
    assert body["status"] == "canceled"
    assert body["preview"]["step"] == 3
    kept = httpx.get(preview_url(base_url, job_id), timeout=10)
    assert kept.status_code == 200 and kept.headers["preview-step"] == "3"
    # The record goes (expired): 410 like the other routes.
    server.clock.offset += 901
    try:
        gone = httpx.get(preview_url(base_url, job_id), timeout=10)
        assert_envelope(gone, 410, "job_expired", "forgotten")
    finally:
        server.clock.offset -= 901
    unknown = httpx.get(preview_url(base_url, "A" * 22), timeout=10)
    assert_envelope(unknown, 404, "job_not_found", "No such job")


def one_job(tiny_weights: Path, **overrides: object) -> tuple[bytes, list[int], dict]:
    """On a fresh server: a 10-step job's result bytes, its events' preview steps, its document."""
    settings = tiny_settings(tiny_weights, cache_mb=0, **overrides)
    with serve(settings) as base_url:
        assert wait_until_ready(base_url)["status"] == "ok"
        job_id = start_job(base_url, steps=10, seed="1234")
        events = read_events(base_url, job_id)
        body = wait_final(base_url, job_id)
        assert body["status"] == "succeeded"
        result = httpx.get(f"{base_url}{JOBS}/{job_id}/result", timeout=10).content
        return result, [data["step"] for name, _, data in events if name == "preview"], body


def test_the_final_image_is_bit_identical_with_previews_on_and_off(tiny_weights: Path) -> None:
    with_previews, steps_on, on = one_job(tiny_weights)  # the default: every 5 steps
    without, steps_off, off = one_job(tiny_weights, preview_every=0)
    assert (steps_on, on["preview"]["step"]) == ([5, 10], 10)
    assert (steps_off, off["preview"]) == ([], None)
    assert with_previews == without


def test_an_every_larger_than_the_steps_gives_one_preview_at_the_last_step(
    tiny_weights: Path,
) -> None:
    _, steps, body = one_job(tiny_weights, preview_every=25)
    assert steps == [10] and body["preview"]["step"] == 10
