"""GET /health: the worker's status snapshot as a plain state word and what a monitor graphs.

The one /health of both shapes: the single process's worker and the cluster's remote worker
answer the same `status()` (app/inference/contract.py); the cluster's extension adds its replicas
and Redis. Answered on the event loop from counters, never waiting on anything.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.edge.dependencies import SettingsDep, WorkerDep
from app.edge.envelope import health_headers, health_status_code
from app.edge.schemas import GpuMemoryReport, HealthResponse
from app.inference.contract import GpuMemory, WorkerStatus
from app.settings import MEBIBYTE

router = APIRouter(tags=["health"])

DEMO_NOTE = "DEMO MODE: tiny random weights, results are noise (for integration only)"
UPSCALE_NOTE = "; the tiny model runs at {0}x{1} and its results are upscaled to {2}x{3}"


def describe(status: WorkerStatus, demo: bool) -> str:
    """The message: why no try-on can be served, else what a person should know."""
    if status.reason is not None:
        return status.reason.message
    if not demo:
        return "Ready"
    if status.size == status.working_size or status.working_size is None or status.size is None:
        return DEMO_NOTE
    return DEMO_NOTE + UPSCALE_NOTE.format(*status.working_size, *status.size)


def gpu_report(memory: GpuMemory | None) -> GpuMemoryReport | None:
    if memory is None:
        return None
    return GpuMemoryReport(
        name=memory.name,
        allocated_mb=round(memory.allocated / MEBIBYTE, 1),
        reserved_mb=round(memory.reserved / MEBIBYTE, 1),
        total_mb=round(memory.total / MEBIBYTE, 1),
    )


HEALTH_503 = {"model": HealthResponse, "description": "loading, failed or draining: the same body"}


@router.get("/health", response_model=HealthResponse, responses={503: HEALTH_503})
async def health(worker: WorkerDep, settings: SettingsDep) -> JSONResponse:
    """200 with status "ok" when a try-on can be served; 503 with "loading", "error" or
    "draining" (shutting down: a load balancer stops sending here) otherwise."""
    status = worker.status()
    body = HealthResponse(
        status=status.health,
        model_loaded=status.model_loaded,
        message=describe(status, settings.demo),
        error=status.error,
        demo=settings.demo,
        device=status.device or settings.device,
        dtype=status.dtype or settings.dtype,
        size=status.size or settings.working_size,
        queue_depth=status.queue_depth,
        receiving=status.receiving,
        queue_capacity=status.queue_capacity,
        busy=status.busy,
        inferences_served=status.inferences_served,
        gpu=gpu_report(status.gpu),
        uptime_s=status.uptime_s,
        **status.extensions(),
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_unset=True),
        status_code=health_status_code(status.health),
        headers=health_headers(status.health),
    )
