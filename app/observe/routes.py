"""GET /metrics: the Prometheus text format of this app's registry.

A plain route on purpose: access control decides who may scrape it (loopback clients always;
others with a key unless --metrics-public), like any other route.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.observe.metrics import metrics_of

router = APIRouter(tags=["observe"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Rendered on the event loop: a few dozen series, well under a millisecond."""
    metrics = metrics_of(request)
    await metrics.refresh()
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
