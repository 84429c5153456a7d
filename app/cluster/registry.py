"""Where try-on replicas say how they are, so that any ingress replica can tell /health.

Each replica writes its report (status, error, inferences served, working size) under its own key
every `HEARTBEAT_S` seconds with a short expiry: a replica whose process died drops out of the
list by itself within `REPORT_TTL_S`, and the replica Serve starts in its place appears under a new
id. A set of ids lets readers fetch all reports with one MGET instead of scanning the keyspace.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any, TypedDict

from redis.asyncio import Redis

from app.cluster.redis_client import describe_failure

HEARTBEAT_S = 1.0
REPORT_TTL_S = 4
KEY_PREFIX = "catvton:replica:"
IDS_KEY = "catvton:replicas"
# Set while the whole service drains (`python -m app.cluster` got SIGTERM/SIGINT): every ingress
# replica answers /health 503 "draining" and new try-ons 503 shutting_down, as the single process
# does on a signal. It expires by itself, so a stopper that dies cannot leave the service drained.
DRAIN_KEY = "catvton:draining"


class ReplicaGpu(TypedDict):
    """A replica's CUDA memory in bytes (app/inference/contract.py's GpuMemory, as JSON)."""

    name: str
    allocated: int
    reserved: int
    total: int


class ReplicaReport(TypedDict):
    """One try-on replica, as /health lists it."""

    id: str
    status: str  # loading / ok / error
    error: str | None
    inferences_served: int
    busy: bool  # an inference is running
    request_id: str | None  # the request (or job's submit) it runs for
    pid: int  # the replica's process, for operators (and the test that kills one)
    size: list[int] | None  # working size (width, height) once loaded
    output_size: list[int] | None  # of the answers (demo mode: upscaled to the production size)
    device: str | None
    dtype: str | None
    model_identity: str  # weights, precision, device, size: part of the result cache key
    gpu: ReplicaGpu | None  # None on the CPU


class ReplicaRegistry:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def publish(self, report: ReplicaReport) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(KEY_PREFIX + report["id"], json.dumps(report), ex=REPORT_TTL_S)
            pipe.sadd(IDS_KEY, report["id"])
            await pipe.execute()

    async def read(self) -> list[ReplicaReport]:
        """Every live replica's latest report, sorted by id; forgets ids whose report expired."""
        reports, _ = await self.read_with_drain()
        return reports

    async def read_with_drain(self) -> tuple[list[ReplicaReport], bool]:
        """`read`, and whether the whole service drains (DRAIN_KEY), in the same round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.smembers(IDS_KEY)
            pipe.exists(DRAIN_KEY)
            members, drain_flag = await pipe.execute()
        ids = sorted(member.decode() for member in members)
        if not ids:
            return [], bool(drain_flag)
        values: list[Any] = await self._redis.mget([KEY_PREFIX + replica_id for replica_id in ids])
        expired = [name for name, value in zip(ids, values, strict=True) if value is None]
        if expired:
            await self._redis.srem(IDS_KEY, *expired)
        return [json.loads(value) for value in values if value is not None], bool(drain_flag)


async def announce_drain(redis: Redis, seconds: float) -> None:
    """Every ingress replica drains (within a heartbeat) for `seconds` or until `end_drain`."""
    await redis.set(DRAIN_KEY, "1", ex=max(1, math.ceil(seconds)))


async def end_drain(redis: Redis) -> None:
    await redis.delete(DRAIN_KEY)


class ReplicaView:
    """What one ingress replica knows of the try-on replicas: the reports it last read.

    A report counts until `REPORT_TTL_S` after this view last read it, and a Redis outage does not
    age it: after Redis restarts (with the reports expired meanwhile) the replicas report again
    within a heartbeat, and until then the view keeps them instead of answering "no try-on replica
    is ready" to every client. A dead replica leaves the view `REPORT_TTL_S` after its last
    report expired in Redis.
    """

    def __init__(
        self, registry: ReplicaRegistry, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._seen: dict[str, tuple[ReplicaReport, float]] = {}  # id -> report, when read
        self.replicas: list[ReplicaReport] = []  # sorted by id
        self.redis_status = "connecting"  # ok, or why Redis could not be read
        self.draining = False  # the whole service drains (DRAIN_KEY), as last read

    async def refresh(self) -> None:
        """Read the reports; while Redis is down keep the last ones and say why."""
        try:
            reports, self.draining = await self._registry.read_with_drain()
        except Exception as exc:
            self.unreadable(exc)
        else:
            self.read(reports)

    def unreadable(self, exc: Exception) -> None:
        self.redis_status = describe_failure(exc)

    def read(self, reports: list[ReplicaReport]) -> None:
        now = self._clock()
        if self.redis_status != "ok":  # back from an outage: what it knew did not age meanwhile
            self._seen = {key: (report, now) for key, (report, _) in self._seen.items()}
        self.redis_status = "ok"
        self._seen.update((report["id"], (report, now)) for report in reports)
        self._seen = {
            key: seen for key, seen in self._seen.items() if now - seen[1] <= REPORT_TTL_S
        }
        self.replicas = [self._seen[key][0] for key in sorted(self._seen)]
