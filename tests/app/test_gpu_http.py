"""The service on a CUDA device (fp16, tiny weights): GPU memory in /health, OOM recovery."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
from http_helpers import (
    assert_envelope,
    post_try_on,
    serve,
    tiny_settings,
    try_on_parts,
    wait_until_ready,
)

from app.inference.worker import InferenceWorker

FAST = {"num_inference_steps": "10"}


def raise_out_of_memory(module: torch.nn.Module, args: tuple) -> None:
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")


@pytest.mark.gpu
def test_cuda_try_on_reports_memory_and_recovers_from_out_of_memory(tiny_weights: Path) -> None:
    settings = tiny_settings(tiny_weights, device="cuda", dtype="fp16")
    worker = InferenceWorker.from_settings(settings)
    with serve(settings, worker) as base_url:
        body = wait_until_ready(base_url)
        assert (body["status"], body["dtype"]) == ("ok", "float16")
        assert body["device"].startswith("cuda")
        assert body["gpu"]["total_mb"] > 0

        assert post_try_on(base_url, try_on_parts(**FAST)).status_code == 200
        gpu = httpx.get(f"{base_url}/health").json()["gpu"]
        # empty_cache() after the inference: little is cached beyond what the tensors hold.
        assert gpu["reserved_mb"] - gpu["allocated_mb"] < 64

        assert worker.device.models is not None
        handle = worker.device.models.pipeline.unet.register_forward_pre_hook(raise_out_of_memory)
        try:
            refused = post_try_on(base_url, try_on_parts(**FAST))
        finally:
            handle.remove()
        assert_envelope(refused, 503, "gpu_out_of_memory", "GPU out of memory")
        assert post_try_on(base_url, try_on_parts(**FAST)).status_code == 200
