"""Options of the scaled-out service: every option of the single process plus the Serve shape.

One pydantic-settings class again (flags, `CATVTON_*` variables, defaults), so `python -m
app.cluster --help` lists both kinds and the Serve YAML's `args` use the same names.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from app.settings import Settings


class ClusterSettings(Settings):
    """The service's own options plus the Serve deployment's shape."""

    # Required here (the replicas share state), optional in the single process.
    redis_url: str = Field(
        description="Redis that the replicas share (job records, idempotency keys, result cache, "
        "limits, replica reports), e.g. redis://127.0.0.1:6380/0"
    )
    ray_address: str = Field("auto", description="Ray cluster to join (auto: the local head)")
    replicas: int = Field(1, ge=1, description="try-on replicas (without autoscaling)")
    min_replicas: int | None = Field(
        None, ge=0, description="autoscaling lower bound; set with --max-replicas to autoscale"
    )
    max_replicas: int | None = Field(None, ge=1, description="autoscaling upper bound")
    gpus_per_replica: float = Field(
        1.0, ge=0, description="GPUs each try-on replica reserves (0 on a CPU-only cluster)"
    )
    cpus_per_replica: float = Field(1.0, ge=0, description="CPUs each try-on replica reserves")
    ingress_replicas: int = Field(1, ge=1, description="replicas of the HTTP ingress (CPU)")
    max_queued_requests: int = Field(
        4,
        ge=0,
        description="requests that may wait for a try-on replica, per ingress replica; "
        "past it: 503 gpu_busy",
    )
    health_check_period_s: float = Field(
        2.0, gt=0, description="how often Serve asks each try-on replica whether it is healthy"
    )

    def service_options(self) -> dict[str, Any]:
        """The single process's options only (what `Settings` accepts), for the replicas."""
        return self.model_dump(include=set(Settings.model_fields))
