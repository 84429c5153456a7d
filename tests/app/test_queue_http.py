"""One inference at a time, a bounded queue, dropped disconnects, OOM recovery: over real HTTP.

The model is slowed by asking for more steps, never by sleeping in it. UNet calls are instrumented
with torch forward hooks (a public seam of the real network) to prove nothing overlaps, and the
out-of-memory error is injected once through the same seam.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import torch
from http_helpers import (
    FAST,
    SLOW,
    assert_envelope,
    health,
    multipart,
    post_try_on,
    send_unread,
    serve,
    tiny_settings,
    try_on_parts,
    wait_for_health,
    wait_until_ready,
)

from app.inference.worker import InferenceWorker


class UNetProbe:
    """Counts UNet forwards running at once, and on which threads, via forward hooks."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self.threads: set[str] = set()
        self.handles = [
            unet.register_forward_pre_hook(self.enter),
            unet.register_forward_hook(self.leave),
        ]

    def enter(self, module: torch.nn.Module, args: tuple) -> None:
        with self.lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)
            self.threads.add(threading.current_thread().name)

    def leave(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        with self.lock:
            self.active -= 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def queue_server(tiny_weights: Path) -> Iterator[tuple[str, InferenceWorker]]:
    # No result cache: these tests send the same fixed-seed request again and need the model to run.
    settings = tiny_settings(tiny_weights, queue_size=2, queue_timeout=120, cache_mb=0)
    worker = InferenceWorker.from_settings(settings)
    with serve(settings, worker) as base_url:
        assert wait_until_ready(base_url)["status"] == "ok"
        yield base_url, worker


def test_queue_full_gets_503_at_once_and_admitted_requests_run_one_at_a_time(
    queue_server: tuple[str, InferenceWorker],
) -> None:
    base_url, worker = queue_server
    assert worker.device.models is not None
    probe = UNetProbe(worker.device.models.pipeline.unet)
    served_before = health(base_url)["inferences_served"]
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        running: Future = pool.submit(post_try_on, base_url, try_on_parts(**SLOW))
        wait_for_health(base_url, lambda body: body["busy"])

        # /health stays fast while the device is busy (one client: no per-call TLS/pool setup).
        with httpx.Client(base_url=base_url, timeout=5) as client:
            for _ in range(10):
                started = time.perf_counter()
                assert client.get("/health").status_code == 200
                assert time.perf_counter() - started < 0.1

        # A client that hangs up while queued is dropped before it costs device time.
        quitter = send_unread(base_url, try_on_parts(**FAST))
        wait_for_health(base_url, lambda body: body["queue_depth"] == 1)
        quitter.close()
        assert wait_for_health(base_url, lambda body: body["queue_depth"] == 0)["busy"]

        # Fill the queue (bound 2), then one more: 503 with Retry-After, at once.
        queued = [pool.submit(post_try_on, base_url, try_on_parts(**FAST)) for _ in range(2)]
        wait_for_health(base_url, lambda body: body["queue_depth"] == 2)
        started = time.perf_counter()
        refused = post_try_on(base_url, try_on_parts(**FAST))
        assert time.perf_counter() - started < 1.0
        assert_envelope(refused, 503, "gpu_busy", "GPU is busy processing another request")
        assert int(refused.headers["Retry-After"]) > 0

        responses = [future.result(timeout=300) for future in [running, *queued]]
    finally:
        pool.shutdown(wait=True)
        probe.remove()
    assert [response.status_code for response in responses] == [200, 200, 200]
    assert probe.max_active == 1
    assert probe.threads == {"device-worker"}
    assert probe.calls == 100 + 10 + 10  # the quitter's 10 steps never ran
    assert health(base_url)["inferences_served"] == served_before + 3


def test_injected_out_of_memory_gives_503_then_the_next_request_succeeds(
    queue_server: tuple[str, InferenceWorker],
) -> None:
    base_url, worker = queue_server
    assert worker.device.models is not None
    unet = worker.device.models.pipeline.unet

    def run_out_of_memory_once(module: torch.nn.Module, args: tuple) -> None:
        handle.remove()
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = unet.register_forward_pre_hook(run_out_of_memory_once)
    response = post_try_on(base_url, try_on_parts(**FAST))
    assert_envelope(response, 503, "gpu_out_of_memory", "GPU out of memory")
    assert post_try_on(base_url, try_on_parts(**FAST)).status_code == 200


def test_a_request_that_waits_past_the_timeout_gets_503(tiny_weights: Path) -> None:
    settings = tiny_settings(tiny_weights, queue_size=1, queue_timeout=0.3)
    with serve(settings) as base_url, ThreadPoolExecutor(max_workers=1) as pool:
        wait_until_ready(base_url)
        running = pool.submit(post_try_on, base_url, try_on_parts(**SLOW))  # outlasts the wait
        wait_for_health(base_url, lambda body: body["busy"])
        started = time.perf_counter()
        response = post_try_on(base_url, try_on_parts(**FAST))
        waited = time.perf_counter() - started
        assert_envelope(response, 503, "gpu_busy", "waited 0.3 s in the queue")
        assert "Retry-After" in response.headers
        assert 0.3 <= waited < 2.0
        assert running.result(timeout=120).status_code == 200


def test_a_job_that_raises_stop_iteration_gets_500_and_the_worker_serves_on(
    queue_server: tuple[str, InferenceWorker], caplog: pytest.LogCaptureFixture
) -> None:
    """An asyncio future refuses StopIteration: unwrapped, the request would hang for good."""
    caplog.set_level(logging.INFO, logger="app.access")
    base_url, worker = queue_server
    assert worker.device.models is not None
    unet = worker.device.models.pipeline.unet

    def raise_stop_iteration_once(module: torch.nn.Module, args: tuple) -> None:
        handle.remove()
        raise StopIteration

    handle = unet.register_forward_pre_hook(raise_stop_iteration_once)
    response = post_try_on(base_url, try_on_parts(**FAST), timeout=30)
    body = assert_envelope(response, 500, "internal_error", "Internal server error")
    assert "StopIteration" not in body["message"]  # details go to the log only
    access = [record.getMessage() for record in caplog.records if record.name == "app.access"]
    assert any(line.startswith("POST /api/try-on -> 500") for line in access), access
    assert post_try_on(base_url, try_on_parts(**FAST)).status_code == 200
    assert health(base_url)["status"] == "ok"


def start_upload_and_stall(base_url: str) -> socket.socket:
    """Send the head and half the body of a valid request, then stall (a slow phone upload)."""
    body, content_type = multipart(try_on_parts(**FAST))
    url = urlsplit(base_url)
    connection = socket.create_connection((url.hostname, url.port))
    head = (
        f"POST /api/try-on HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    connection.sendall(head.encode() + body[: len(body) // 2])
    return connection


def test_requests_still_uploading_count_toward_the_queue_bound(
    queue_server: tuple[str, InferenceWorker],
) -> None:
    """Bound 2 plus the one running: a fourth request is refused before it is read or decoded."""
    base_url, _ = queue_server
    uploads = [start_upload_and_stall(base_url) for _ in range(3)]
    try:
        wait_for_health(base_url, lambda body: body["receiving"] == 3)
        refused = post_try_on(base_url, try_on_parts(**FAST), timeout=10)
        assert_envelope(refused, 503, "gpu_busy", "3 requests are already waiting")
        assert int(refused.headers["Retry-After"]) > 0
    finally:
        for upload in uploads:
            upload.close()
    wait_for_health(base_url, lambda body: body["receiving"] == 0)
    assert post_try_on(base_url, try_on_parts(**FAST)).status_code == 200
