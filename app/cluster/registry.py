"""Where try-on replicas say how they are, so that any ingress replica can tell /health.

Each replica writes its report (status, error, inferences served, working size) under its own key
every `HEARTBEAT_S` seconds with a short expiry: a replica whose process died drops out of the
list by itself within `REPORT_TTL_S`, and the replica Serve starts in its place appears under a new
id. A set of ids lets readers fetch all reports with one MGET instead of scanning the keyspace.
"""

from __future__ import annotations

import json
from typing import Any, TypedDict

from redis.asyncio import Redis

HEARTBEAT_S = 1.0
REPORT_TTL_S = 4
KEY_PREFIX = "catvton:replica:"
IDS_KEY = "catvton:replicas"


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


class ReplicaRegistry:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def publish(self, report: ReplicaReport) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(KEY_PREFIX + report["id"], json.dumps(report), ex=REPORT_TTL_S)
            pipe.sadd(IDS_KEY, report["id"])
            await pipe.execute()

    async def withdraw(self, replica_id: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(KEY_PREFIX + replica_id)
            pipe.srem(IDS_KEY, replica_id)
            await pipe.execute()

    async def read(self) -> list[ReplicaReport]:
        """Every live replica's latest report, sorted by id; forgets ids whose report expired."""
        ids = sorted(member.decode() for member in await self._redis.smembers(IDS_KEY))
        if not ids:
            return []
        values: list[Any] = await self._redis.mget([KEY_PREFIX + replica_id for replica_id in ids])
        expired = [name for name, value in zip(ids, values, strict=True) if value is None]
        if expired:
            await self._redis.srem(IDS_KEY, *expired)
        return [json.loads(value) for value in values if value is not None]
