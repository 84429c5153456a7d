"""The job runner of an ingress replica: the single process's, plus cancels that cross replicas.

A job is driven by the ingress replica that accepted it (it holds the Serve call), but a cancel
or a delete may arrive at any replica. That replica records the request in the shared store, as
the single process does, and announces it on a Redis channel; the replica driving the job hears
it and cancels its work there (a queued job leaves the queue at once, a running one stops at its
next step). The announcing replica waits a moment for a queued job to end, so that a cancel
answers 200 `canceled` as in the single process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis

from app.jobs.records import JobRecord
from app.jobs.runner import JobRunner

logger = logging.getLogger(__name__)

CANCEL_CHANNEL = "catvton:jobs:cancel"
QUEUED_CANCEL_WAIT_S = 2.0
LISTEN_RETRY_S = 1.0


class SharedJobRunner(JobRunner):
    """`JobRunner` whose cancels and deletes reach the replica driving the job, via Redis."""

    def __init__(self, redis: Redis, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._redis = redis
        self._listener: asyncio.Task[None] | None = None

    async def submit(self, *args: Any, **kwargs: Any) -> tuple[JobRecord, bool]:
        """As `JobRunner.submit`; from the first job on, this replica hears cancels for its jobs."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        return await super().submit(*args, **kwargs)

    async def cancel(self, job_id: str) -> JobRecord:
        record = await super().cancel(job_id)
        if record.final or job_id in self._work:
            return record
        await self._redis.publish(CANCEL_CHANNEL, job_id)
        if record.status == "queued":  # its driver withdraws it at once: answer with the end
            with contextlib.suppress(asyncio.TimeoutError):
                record = await asyncio.wait_for(self._last_record(job_id), QUEUED_CANCEL_WAIT_S)
        return record

    async def _last_record(self, job_id: str) -> JobRecord:
        async for record in self.store.watch(job_id):
            last = record
        return last

    async def delete(self, job_id: str) -> None:
        local = job_id in self._work
        await super().delete(job_id)
        if not local:
            await self._redis.publish(CANCEL_CHANNEL, job_id)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CANCEL_CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._cancel_here(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarting: listen again when it is back
                logger.warning("cancel channel lost (%s); listening again", exc)
                await asyncio.sleep(LISTEN_RETRY_S)

    def _cancel_here(self, job_id: str) -> None:
        work = self._work.get(job_id)
        if work is not None:
            logger.info("job %s canceled through another ingress replica", job_id)
            self.worker.cancel(work)
