"""Warm-up (README, "Warm-up, draining, restarts"): on CUDA by default, skipped on the CPU,
forced with `--warm-up on` (how its code path runs here, on the tiny model, through the real
loader)."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from http_helpers import serve, tiny_settings, wait_until_ready


@pytest.mark.parametrize(("warm_up", "warms"), [("on", True), ("auto", False), ("off", False)])
def test_warm_up_runs_before_health_says_ok_and_auto_skips_it_on_the_cpu(
    tiny_weights: Path, caplog: pytest.LogCaptureFixture, warm_up: str, warms: bool
) -> None:
    caplog.set_level(logging.INFO, logger="app")
    with serve(tiny_settings(tiny_weights, warm_up=warm_up)) as base_url:
        body = wait_until_ready(base_url)
        metrics = httpx.get(f"{base_url}/metrics").text
    assert body["status"] == "ok"
    # The worker logs its loading steps and "models loaded"; the loader logs the warm-up's time.
    loggers = {"app.inference.device", "app.inference.models"}
    messages = [record.getMessage() for record in caplog.records if record.name in loggers]
    loaded = next(i for i, message in enumerate(messages) if message.startswith("models loaded"))
    warmed = [i for i, message in enumerate(messages) if message.startswith("warm-up done in")]
    assert ("loading: warming up" in messages) is warms
    assert len(warmed) == int(warms)
    if warms:  # finished (and its time logged) before the state became "ok"
        assert warmed[0] < loaded
    # Not a user's inference: neither served nor counted.
    assert body["inferences_served"] == 0
    assert 'catvton_inferences_total{outcome="ok"} 0.0' in metrics


@pytest.mark.gpu
def test_auto_warms_up_on_cuda_and_metrics_report_gpu_memory(
    tiny_weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.inference.models")
    settings = tiny_settings(tiny_weights, device="cuda", dtype="fp16")
    with serve(settings) as base_url:
        assert wait_until_ready(base_url)["status"] == "ok"
        metrics = httpx.get(f"{base_url}/metrics").text
    assert any(r.getMessage().startswith("warm-up done in") for r in caplog.records)
    total = next(line for line in metrics.splitlines() if 'gpu_memory_bytes{kind="total"}' in line)
    assert float(total.split()[-1]) > 0
