"""The job runner of an ingress replica: the single process's, plus what crosses replicas.

A job is driven by the ingress replica that accepted it (it holds the Serve call), but a cancel
or a delete may arrive at any replica. That replica records the request in the shared store, as
the single process does, and announces it on a Redis channel; the replica driving the job hears
it and cancels its work there (a queued job leaves the queue at once, a running one stops at its
next step). The announcing replica waits a moment for a queued job to end, so that a cancel
answers 200 `canceled` as in the single process.

A job outlives its request but not the ingress process driving it (the inputs and the Serve call
live there). So each ingress replica renews a lease in Redis while it lives, and notes which jobs
it drives; every ingress replica sweeps now and then, and a job whose driver's lease ran out ends
`failed` with `worker_stopped` (its client submits it again) instead of staying `running` forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from app.edge.errors import JobExpiredError, JobNotFoundError, ShuttingDownError, WorkerStoppedError
from app.edge.ids import short_id
from app.jobs.records import JobRecord
from app.jobs.runner import JobRunner

logger = logging.getLogger(__name__)

CANCEL_CHANNEL = "catvton:jobs:cancel"
DRIVERS_KEY = "catvton:jobs:drivers"  # hash: job id -> the ingress replica driving it
LEASE_PREFIX = "catvton:ingress:"  # + replica id: its lease (its pid, for operators)
LEASE_S = 10  # an ingress replica silent this long is gone
RENEW_S = 1.0  # how often a live one renews its lease and sweeps
QUEUED_CANCEL_WAIT_S = 2.0
DRAIN_POLL_S = 0.1
LISTEN_RETRY_S = 1.0


class SharedJobRunner(JobRunner):
    """`JobRunner` whose cancels and deletes reach the replica driving the job, via Redis, and
    whose jobs end `failed` if that replica dies (see the module docstring)."""

    def __init__(
        self,
        redis: Redis,
        replica_id: str,
        *args: object,
        drain_timeout: float,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._redis = redis
        self.replica_id = replica_id
        self.drain_timeout = drain_timeout
        self._renewing_since: float | None = None  # monotonic time of the first renewal in a row

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """For the app's lifespan: hear cancels, renew the lease and sweep; at the end (Serve
        stops this replica: a rolling update, a scale-down) drain this replica's jobs."""
        tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._keep_lease())]
        try:
            yield
            await self.drain()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):  # a graceful stop: sweepers need not wait
                await self._redis.delete(LEASE_PREFIX + self.replica_id)

    async def drain(self) -> None:
        """As the single process on SIGTERM: no new work; this replica's queued and running jobs
        get `drain_timeout` seconds; what is left then fails `shutting_down`."""
        self.worker.begin_drain()
        deadline = time.monotonic() + self.drain_timeout
        while self._drivers and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        for job_id, driver in list(self._drivers.items()):
            driver.cancel()  # it records nothing more: the job's end is written here
            work = self._work[job_id]
            self.worker.cancel(work)  # a replica running it stops at its next step
            work.abandon()
            stopped = ShuttingDownError("the job did not finish before this replica stopped")
            with contextlib.suppress(JobNotFoundError, JobExpiredError):
                await self._failed(job_id, stopped, queue_position=None)

    async def submit(self, *args: Any, **kwargs: Any) -> tuple[JobRecord, bool]:
        """As `JobRunner.submit`, noting this replica as the job's driver."""
        record, created = await super().submit(*args, **kwargs)
        if created:
            await self._redis.hset(DRIVERS_KEY, record.job_id, self.replica_id)
        return record, created

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
            logger.info("job %s canceled through another ingress replica", short_id(job_id))
            self.worker.cancel(work)

    # -- leases: jobs of a dead ingress replica end instead of running forever --------------------

    async def _keep_lease(self) -> None:
        lease = json.dumps({"pid": os.getpid()})
        while True:
            try:
                await self._redis.set(LEASE_PREFIX + self.replica_id, lease, ex=LEASE_S)
                if self._renewing_since is None:
                    self._renewing_since = time.monotonic()
                await self.sweep()
            except Exception as exc:  # Redis down: the jobs wait for it like everything else
                self._renewing_since = None
                logger.warning("could not renew this ingress replica's lease: %s", exc)
            await asyncio.sleep(RENEW_S)

    async def sweep(self) -> None:
        """Forget the drivers of this replica's finished jobs; fail the jobs of dead drivers.

        Only once this replica has renewed its own lease for a whole lease period: after Redis
        was down, every live replica has renewed by then, so no live driver is taken for dead.
        """
        drivers = {
            job_id.decode(): driver.decode()
            for job_id, driver in (await self._redis.hgetall(DRIVERS_KEY)).items()
        }
        alive = await self._live(set(drivers.values()))
        settled = (
            self._renewing_since is not None and time.monotonic() - self._renewing_since >= LEASE_S
        )
        for job_id, driver in drivers.items():
            if driver == self.replica_id and job_id not in self._work:
                await self._redis.hdel(DRIVERS_KEY, job_id)  # it ended here
            elif settled and driver not in alive and await self._redis.hdel(DRIVERS_KEY, job_id):
                await self._fail_orphan(job_id)  # HDEL answered 1 to one sweeper only

    async def _live(self, drivers: set[str]) -> set[str]:
        """Which of `drivers` hold a lease (this replica always does)."""
        others = sorted(drivers - {self.replica_id})
        leases = (
            await self._redis.mget([LEASE_PREFIX + driver for driver in others]) if others else []
        )
        return {self.replica_id} | {
            driver for driver, lease in zip(others, leases, strict=True) if lease is not None
        }

    async def _fail_orphan(self, job_id: str) -> None:
        try:
            record = await self.store.get(job_id)
            if record.final:
                return
            stopped = WorkerStoppedError("the ingress replica holding this job stopped")
            await self._failed(job_id, stopped, queue_position=None)
        except (JobNotFoundError, JobExpiredError):
            return
        logger.warning("job %s failed: the ingress replica driving it stopped", short_id(job_id))
