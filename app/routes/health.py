"""GET /health: a plain state word, answered on the event loop from counters (never waits)."""

from __future__ import annotations

import time

import torch
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.dependencies import SettingsDep, WorkerDep
from app.errors import ShuttingDownError, health_headers, health_status_code
from app.observe.metrics import gpu_memory_bytes
from app.schemas import GpuMemory, HealthResponse
from app.worker import InferenceWorker

router = APIRouter(tags=["health"])

DEMO_NOTE = "DEMO MODE: tiny random weights, results are noise (for integration only)"
UPSCALE_NOTE = "; the tiny model runs at {0}x{1} and its results are upscaled to {2}x{3}"


def read_gpu_memory(worker: InferenceWorker) -> GpuMemory | None:
    device = worker.device
    if (memory := gpu_memory_bytes(device)) is None:
        return None
    mebibyte = 1024 * 1024
    return GpuMemory(
        name=torch.cuda.get_device_name(device),
        allocated_mb=round(memory["allocated"] / mebibyte, 1),
        reserved_mb=round(memory["reserved"] / mebibyte, 1),
        total_mb=round(memory["total"] / mebibyte, 1),
    )


def describe(worker: InferenceWorker, demo: bool) -> str:
    if worker.draining:
        return ShuttingDownError().message
    if (reason := worker.unavailable()) is not None:
        return reason.message
    if not demo:
        return "Ready"
    assert worker.models is not None
    pipeline_size, output_size = worker.models.pipeline.size, worker.models.output_size
    if pipeline_size == output_size:
        return DEMO_NOTE
    return DEMO_NOTE + UPSCALE_NOTE.format(*pipeline_size, *output_size)


HEALTH_503 = {"model": HealthResponse, "description": "loading, failed or draining: the same body"}


@router.get("/health", response_model=HealthResponse, responses={503: HEALTH_503})
async def health(worker: WorkerDep, settings: SettingsDep) -> JSONResponse:
    """200 with status "ok" when a try-on can be served; 503 with "loading", "error" or
    "draining" (shutting down: a load balancer stops sending here) otherwise."""
    models = worker.models
    pipeline = models.pipeline if models else None
    state = "draining" if worker.draining else worker.state
    body = HealthResponse(
        status=state,
        model_loaded=pipeline is not None,
        message=describe(worker, settings.demo),
        error=worker.error,
        demo=settings.demo,
        device=str(pipeline.device) if pipeline else settings.device,
        dtype=str(pipeline.dtype).removeprefix("torch.") if pipeline else settings.dtype,
        size=models.output_size if models else settings.working_size,
        queue_depth=worker.queue_depth,
        receiving=worker.receiving,
        queue_capacity=worker.queue_size,
        busy=worker.busy,
        inferences_served=worker.inferences_served,
        gpu=read_gpu_memory(worker),
        uptime_s=round(time.monotonic() - worker.started_at, 1),
    )
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=health_status_code(state),
        headers=health_headers(state),
    )
