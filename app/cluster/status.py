"""The cluster's worker status: the single process's `WorkerStatus` plus what only the cluster
knows (its try-on replicas and Redis), as one ingress replica sees them; /health renders both
through the same route (app/routes/health.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.cluster.registry import ReplicaReport
from app.inference.contract import GpuMemory, WorkerStatus


@dataclass(frozen=True)
class ClusterStatus(WorkerStatus):
    """The single process's status plus the try-on replicas and Redis, as this ingress sees them."""

    replicas: tuple[ReplicaReport, ...]
    redis: str  # ok, or why Redis cannot be read

    def extensions(self) -> dict[str, Any]:
        return {
            "replicas": [
                {key: replica[key] for key in ("id", "status", "error", "inferences_served")}
                for replica in self.replicas
            ],
            "redis": self.redis,
        }


def pair(values: list[int] | None) -> tuple[int, int]:
    """A (width, height) a replica reported as a JSON list."""
    assert values is not None and len(values) == 2
    return values[0], values[1]


def summed_gpu_memory(replicas: tuple[ReplicaReport, ...]) -> GpuMemory | None:
    """The replicas' CUDA memory added up (one name when they share a model of GPU)."""
    memories = [replica["gpu"] for replica in replicas if replica["gpu"] is not None]
    if not memories:
        return None
    names = sorted({memory["name"] for memory in memories})
    return GpuMemory(
        name=", ".join(names) if len(memories) == 1 else f"{len(memories)} x {' / '.join(names)}",
        allocated=sum(memory["allocated"] for memory in memories),
        reserved=sum(memory["reserved"] for memory in memories),
        total=sum(memory["total"] for memory in memories),
    )
