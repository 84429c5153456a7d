"""Between the job routes and the device worker: a job is a ticket that outlives its request.

`JobRunner.submit` hands the work to the worker's FIFO and starts one small task per job that
writes what the worker reports (queue position, stage, each step, the outcome) into the store, in
order, then encodes the result (stage 4) and stores it. Nothing here waits on the submitting
request: a dropped connection never cancels a job; only `cancel` and `delete` do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.cache.results import ResultCache
from app.edge.errors import JobExpiredError, JobNotFoundError, ServiceError
from app.edge.ids import new_id, short_id
from app.edge.schemas import TryOnOptions
from app.inference.contract import QueuedWork, TryOnJob, Worker
from app.inference.flow import StageTimer, encode_outcome
from app.jobs.records import JobError, JobOutput, JobRecord
from app.jobs.store import JobStore
from app.media.encoding import EncodedResult
from catvton.errors import InferenceCanceledError, InvalidInputError
from catvton.previews import preview_to_jpeg

logger = logging.getLogger(__name__)

CANCELED = JobError(code="canceled", message="The job was canceled.", status_code=409)


def eta_at(eta_s: float | None) -> float | None:
    return None if eta_s is None else time.time() + eta_s


@dataclass(frozen=True)
class Preview:
    """A preview to store: the device's small picture (JPEG-encoded in the thread pool, never on
    the device thread) or, from a cluster replica, its JPEG bytes."""

    step: int
    image: Image.Image | bytes

    def jpeg(self) -> bytes:
        return self.image if isinstance(self.image, bytes) else preview_to_jpeg(self.image)


class JobProgress:
    """A job's `WorkListener`: each report becomes a record change, queued in arrival order.

    The runner's task applies them one at a time, so the store sees them in order even when
    writing takes time (Redis); `None` marks the end of the work.
    """

    def __init__(self) -> None:
        self.changes: asyncio.Queue[dict[str, Any] | Preview | None] = asyncio.Queue()
        self.started = False

    def on_queue(self, position: int, eta_s: float | None) -> None:
        self.changes.put_nowait({"queue_position": position, "eta_at": eta_at(eta_s)})

    def on_stage(self, stage: str, eta_s: float | None) -> None:
        change: dict[str, Any] = {"stage": stage, "eta_at": eta_at(eta_s)}
        if not self.started:
            self.started = True
            change.update(status="running", queue_position=None, started_at=time.time())
        self.changes.put_nowait(change)

    def on_step(self, done: int, total: int, eta_s: float | None) -> None:
        self.changes.put_nowait({"step": done, "total_steps": total, "eta_at": eta_at(eta_s)})

    def on_preview(self, step: int, image: Image.Image | bytes) -> None:
        self.changes.put_nowait(Preview(step, image))


def job_error(exc: BaseException) -> JobError:
    """An inference's exception -> the job's error, with the synchronous route's status."""
    if isinstance(exc, ServiceError):
        return JobError(
            code=exc.code,
            message=exc.message,
            status_code=exc.status_code,
            retry_after_s=exc.retry_after_s,
        )
    if isinstance(exc, InvalidInputError):
        return JobError(code="invalid_field", message=str(exc), status_code=422)
    logger.error("job failed: %r", exc, exc_info=exc)
    return JobError(
        code="internal_error",
        message="Internal server error; the details are in the server log under this requestId.",
        status_code=500,
    )


class JobRunner:
    """Creates jobs, drives each through the worker into the store, cancels and deletes them."""

    def __init__(self, store: JobStore, worker: Worker, cache: ResultCache | None = None) -> None:
        self.store = store
        self.worker = worker
        self.cache = cache
        self._work: dict[str, QueuedWork] = {}  # jobs of this process not yet final
        self._drivers: dict[str, asyncio.Task[None]] = {}

    @staticmethod
    def new_record(
        *,
        client: str,
        request_id: str,
        options: TryOnOptions,
        idempotency_key: str | None,
        fingerprint: str | None,
    ) -> JobRecord:
        return JobRecord(
            job_id=new_id(),
            client=client,
            request_id=request_id,
            total_steps=options.num_inference_steps,
            return_mask=options.return_mask,
            created_at=time.time(),
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )

    async def submit(
        self,
        record: JobRecord,
        job: TryOnJob,
        *,
        timer: StageTimer,
        cache_key: str | None,
        on_final: Callable[[], None] | None = None,
    ) -> tuple[JobRecord, bool]:
        """Queue the job's work; (record, True), or (an existing job's record, False) when its
        Idempotency-Key was claimed meanwhile. Raises the worker's 503s. `on_final` is called
        once the job's work is over (e.g. to release the client's active-work slot)."""
        progress = JobProgress()
        work = self.worker.submit(job, progress)
        queued = record.model_copy(
            update={"queue_position": work.position, "eta_at": eta_at(work.eta_s)}
        )
        stored, created = await self.store.create(queued)
        if not created:  # the same key, sent twice at once: one job
            self.worker.cancel(work)
            work.abandon()
            if on_final is not None:
                on_final()  # this submission's work is over already
            return stored, False
        self._work[record.job_id] = work
        self._drivers[record.job_id] = asyncio.create_task(
            self._drive(record.job_id, work, progress, timer, cache_key, on_final),
            name=f"job-{short_id(record.job_id)}",
        )
        return stored, True

    async def add_cached(
        self, record: JobRecord, result: EncodedResult, *, timer: StageTimer
    ) -> tuple[JobRecord, bool]:
        """A job answered from the result cache: it is created succeeded, without the GPU."""
        stored, created = await self.store.create(record)
        if not created:
            return stored, False
        return await self._succeed(record.job_id, result, timer, cached=True), True

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The runner's background work for the app's lifespan: none here (the cluster's runner
        hears cancels from other replicas and drains its jobs when it stops)."""
        yield

    async def cancel(self, job_id: str) -> JobRecord:
        """Queued: out of the queue, canceled at once. Running: stops at its next step (the
        returned record says cancel_requested). Final: unchanged."""
        record = await self.store.get(job_id)
        if record.final:
            return record
        record = await self.store.update(job_id, cancel_requested=True)
        work = self._work.get(job_id)
        if work is not None and self.worker.cancel(work):
            await asyncio.shield(self._drivers[job_id])  # records "canceled" at once
            return await self.store.get(job_id)
        return record

    async def delete(self, job_id: str) -> None:
        """Cancel the job if needed and forget it and its result."""
        record = await self.store.get(job_id)
        if not record.final and (work := self._work.get(job_id)) is not None:
            self.worker.cancel(work)
        await self.store.delete(job_id)

    # -- one task per job ------------------------------------------------------------------------

    async def _drive(
        self,
        job_id: str,
        work: QueuedWork,
        progress: JobProgress,
        timer: StageTimer,
        cache_key: str | None,
        on_final: Callable[[], None] | None,
    ) -> None:
        work.done.add_done_callback(lambda _: progress.changes.put_nowait(None))
        try:
            while (change := await progress.changes.get()) is not None:
                if isinstance(change, Preview):
                    jpeg = await run_in_threadpool(change.jpeg)
                    record = await self.store.save_preview(job_id, change.step, jpeg)
                else:
                    record = await self.store.update(job_id, **change)
                if record.cancel_requested and not work.stop.is_set():
                    self.worker.cancel(work)  # asked through another process's store view
            await self._conclude(job_id, work, timer, cache_key)
        except (JobNotFoundError, JobExpiredError):
            work.abandon()  # deleted meanwhile: nobody wants the rest
        finally:
            self._work.pop(job_id, None)
            self._drivers.pop(job_id, None)
            if on_final is not None:
                on_final()

    async def _conclude(
        self, job_id: str, work: QueuedWork, timer: StageTimer, cache_key: str | None
    ) -> None:
        try:
            outcome = work.done.result()
        except InferenceCanceledError:
            await self._cancelled(job_id)
            return
        except Exception as exc:
            await self._failed(job_id, exc)
            return
        if work.stop.is_set():  # a cancel accepted while it ran always ends canceled
            await self._cancelled(job_id)
            return
        await self.store.update(job_id, stage="encoding")
        result = await encode_outcome(outcome, work.job, timer, self.cache, cache_key)
        if work.stop.is_set():
            await self._cancelled(job_id)
            return
        await self._succeed(job_id, result, timer, cached=False)

    async def _succeed(
        self, job_id: str, result: EncodedResult, timer: StageTimer, *, cached: bool
    ) -> JobRecord:
        record = await self.store.get(job_id)
        output = JobOutput(
            mime_type=result.image.mime_type,
            width=result.image.width,
            height=result.image.height,
            seed=result.seed,
            timings_ms=timer.finish(),
        )
        return await self.store.finish(
            job_id,
            result,
            status="succeeded",
            stage=None,
            step=record.total_steps,
            queue_position=None,
            eta_at=None,
            cached=cached,
            output=output,
        )

    async def _failed(self, job_id: str, error: BaseException, **changes: Any) -> None:
        await self.store.finish(
            job_id, status="failed", stage=None, eta_at=None, error=job_error(error), **changes
        )

    async def _cancelled(self, job_id: str) -> None:
        await self.store.finish(
            job_id, status="canceled", stage=None, queue_position=None, eta_at=None, error=CANCELED
        )
