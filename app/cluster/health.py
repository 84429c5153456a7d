"""GET /health on the ingress: the single process's body plus each try-on replica and Redis.

It replaces the single process's /health route in the ingress app (`deployments`), because its
facts come from the replicas' reports, not from a local worker. The status code follows the same
rule: 200 while at least one try-on replica can serve.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.cluster.remote_worker import RemoteWorker
from app.dependencies import SettingsDep
from app.errors import health_headers, health_status_code
from app.routes.health import DEMO_NOTE
from app.schemas import HealthResponse, HealthStatus

router = APIRouter(tags=["health"])


class ReplicaHealth(BaseModel):
    id: str
    status: HealthStatus
    error: str | None
    inferences_served: int


class ClusterHealthResponse(HealthResponse):
    replicas: list[ReplicaHealth] = Field(description="each try-on replica, as it last reported")
    redis: str = Field(description="ok, or why Redis cannot be reached")


@router.get(
    "/health", response_model=ClusterHealthResponse, responses={503: {"model": HealthResponse}}
)
async def health(request: Request, settings: SettingsDep) -> JSONResponse:
    """200 with status "ok" while a try-on replica can serve; 503 "loading" or "error" otherwise."""
    worker: RemoteWorker = request.app.state.worker
    ready = worker.ready_replica()
    reason = worker.unavailable()
    body = ClusterHealthResponse(
        status=worker.state,
        model_loaded=ready is not None,
        message=reason.message if reason else (DEMO_NOTE if settings.demo else "Ready"),
        error=reason.message if reason and worker.state == "error" else None,
        demo=settings.demo,
        device=ready["device"] if ready else settings.device,
        dtype=ready["dtype"] if ready else settings.dtype,
        size=tuple(ready["output_size"])
        if ready and ready["output_size"]
        else settings.working_size,
        queue_depth=worker.queue_depth,
        receiving=0,
        queue_capacity=worker.queue_capacity,
        busy=worker.busy,
        inferences_served=worker.inferences_served,
        gpu=None,
        uptime_s=round(time.monotonic() - worker.started_at, 1),
        replicas=[ReplicaHealth.model_validate(replica) for replica in worker.replicas],
        redis=worker.redis_status,
    )
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=health_status_code(worker.state),
        headers=health_headers(worker.state),
    )
