"""GET /health and background loading over real HTTP: loading -> ok, failed loads, demo mode."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
from http_helpers import (
    HELD_BACK,
    TINY_SIZE,
    assert_envelope,
    held_back_worker,
    post_try_on,
    serve,
    tiny_settings,
    try_on_parts,
    wait_until_ready,
)

from app.inference.models import Models, ProgressCallback
from app.inference.worker import InferenceWorker
from app.settings import Settings


def timed_health(client: httpx.Client) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = client.get("/health")
    return response, time.perf_counter() - started


def test_health_goes_from_loading_to_ok_and_stays_fast(tiny_weights: Path) -> None:
    settings = tiny_settings(tiny_weights)
    gate = threading.Event()
    worker = held_back_worker(settings, gate)
    with serve(settings, worker) as base_url, httpx.Client(base_url=base_url, timeout=5) as client:
        response, elapsed = timed_health(client)
        assert response.status_code == 503
        assert elapsed < 0.1
        body = response.json()
        assert (body["status"], body["model_loaded"]) == ("loading", False)
        assert HELD_BACK in body["message"]
        assert int(response.headers["Retry-After"]) > 0

        refused = post_try_on(base_url, try_on_parts())
        assert_envelope(refused, 503, "models_loading", "Models are still loading")
        assert "Retry-After" in refused.headers

        gate.set()  # the real load now runs while /health keeps answering
        statuses, slowest = [], 0.0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            response, elapsed = timed_health(client)
            slowest = max(slowest, elapsed)
            statuses.append(response.json()["status"])
            if response.status_code == 200:
                break
        assert slowest < 0.1, f"slowest /health took {slowest * 1000:.0f} ms"
        assert statuses[-1] == "ok"
        body = response.json()
        assert body["model_loaded"] is True
        assert (body["device"], body["dtype"], tuple(body["size"])) == ("cpu", "float32", TINY_SIZE)
        assert (body["queue_depth"], body["queue_capacity"], body["busy"]) == (0, 4, False)
        assert body["demo"] is False and body["gpu"] is None


def test_failed_load_explains_itself_in_health_and_try_on(tmp_path: Path) -> None:
    settings = Settings(weights_dir=tmp_path, device="cpu")  # an empty weights folder
    with serve(settings) as base_url:
        body = wait_until_ready(base_url)
        response = httpx.get(f"{base_url}/health")
        assert response.status_code == 503
        assert (body["status"], body["model_loaded"]) == ("error", False)
        assert "stable-diffusion-inpainting" in body["error"]
        assert str(tmp_path) in body["error"]
        assert "download" in body["error"]  # the fix, not just the symptom

        refused = post_try_on(base_url, try_on_parts())
        message = assert_envelope(refused, 503, "model_load_failed", body["error"])["message"]
        assert message.startswith("Model loading failed")
        assert httpx.get(f"{base_url}/health").json()["status"] == "error"  # still up, explaining


def test_demo_mode_generates_tiny_weights_and_says_so(tmp_path: Path) -> None:
    settings = Settings(demo=True, demo_dir=tmp_path / "demo", device="cpu")
    with serve(settings) as base_url:
        body = wait_until_ready(base_url)
        assert body["status"] == "ok"
        assert body["demo"] is True
        assert "DEMO MODE" in body["message"]
        assert tuple(body["size"]) == (768, 1024)  # answers upscaled to the production size
        assert (tmp_path / "demo" / "CatVTON").is_dir()


def test_a_loader_that_raises_a_base_exception_reports_error_not_loading(tmp_path: Path) -> None:
    settings = Settings(weights_dir=tmp_path, device="cpu")

    def exit_while_loading(progress: ProgressCallback) -> Models:
        raise SystemExit("a library called sys.exit()")

    worker = InferenceWorker.from_settings(settings, exit_while_loading)
    with serve(settings, worker) as base_url:
        body = wait_until_ready(base_url, timeout=10)
        assert (body["status"], body["model_loaded"]) == ("error", False)
        assert "sys.exit()" in body["error"] and "restart the server" in body["error"]
        refused = post_try_on(base_url, try_on_parts(), timeout=10)
        assert_envelope(refused, 503, "model_load_failed", "sys.exit()")
