"""A try-on replica: the single process's worker and loading code, inside a Serve deployment.

Each replica is one `InferenceWorker` (one device owner, models loaded once on its own thread by
`app.inference.models.load_models`), so a replica behaves exactly like the single process's
worker: Serve's `max_ongoing_requests: 1` hands it one try-on at a time, the queue in front of it
is Serve's.
A job's progress streams back to the ingress that submitted it (Serve's streaming call); that
ingress writes it into the Redis job store, where every ingress replica reads it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image
from ray import serve

from app.cluster.redis_client import connect
from app.cluster.registry import HEARTBEAT_S, ReplicaGpu, ReplicaRegistry, ReplicaReport
from app.edge.request_id import bind_request_id
from app.inference.contract import TryOnJob, TryOnOutcome
from app.inference.models import Models, ProgressCallback, load_models
from app.inference.worker import InferenceWorker
from app.settings import Settings
from catvton.previews import preview_to_jpeg

logger = logging.getLogger(__name__)

LOAD_POLL_S = 0.1
# ("on_stage", stage, eta_s) / ("on_step", done, total, eta_s) / ("on_preview", step, JPEG bytes)
ProgressEvent = tuple[Any, ...]


async def never() -> None:
    """A replica has no client connection to watch: the ingress cancels the call instead."""
    await asyncio.get_running_loop().create_future()


def load_models_locked(settings: Settings, progress: ProgressCallback) -> Models:
    """`load_models`, one replica of this machine at a time when they share a demo folder:
    `--demo` rewrites the tiny files at each start, and another replica must not read them then.
    One folder keeps one model identity (and so one result cache key) for every replica."""
    if not settings.demo:
        return load_models(settings, progress)
    Path(settings.demo_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(settings.demo_dir) / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return load_models(settings, progress)


class StreamedProgress:
    """A job's `WorkListener` inside the replica: each report becomes an event for the ingress.

    The replica's own queue holds at most the job itself, so its queue positions say nothing; the
    ingress reports positions in front of Serve's queue instead.
    """

    def __init__(self) -> None:
        self.events: asyncio.Queue[ProgressEvent] = asyncio.Queue()

    def on_queue(self, position: int, eta_s: float | None) -> None:
        pass

    def on_stage(self, stage: str, eta_s: float | None) -> None:
        self.events.put_nowait(("on_stage", stage, eta_s))

    def on_step(self, done: int, total: int, eta_s: float | None) -> None:
        self.events.put_nowait(("on_step", done, total, eta_s))

    def on_preview(self, step: int, image: Image.Image | bytes) -> None:
        """Encoded in the loop's thread pool (not on the device thread); queued as a future in
        its place, so the events keep their order and only the small JPEG crosses to Ray."""
        jpeg = image if isinstance(image, bytes) else asyncio.to_thread(preview_to_jpeg, image)
        self.events.put_nowait(("on_preview", step, asyncio.ensure_future(jpeg_of(jpeg))))


async def jpeg_of(jpeg: bytes | Awaitable[bytes]) -> bytes:
    return jpeg if isinstance(jpeg, bytes) else await jpeg


async def ready(event: ProgressEvent) -> ProgressEvent:
    """The event as it crosses to the ingress: a preview's encoding awaited."""
    if event[0] == "on_preview":
        return (event[0], event[1], await event[2])
    return event


class TryOnReplica:
    """Loads the models once, then serves `infer` and `infer_job` calls, one at a time."""

    # Serve awaits an async constructor (the replica takes requests once the models loaded);
    # Python's data model, and so mypy, knows only synchronous ones.
    async def __init__(self, options: dict[str, Any]) -> None:  # type: ignore[misc]
        settings = Settings(**options)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        # Serve's queue is in front of the replica: its own holds the one try-on it runs.
        self.worker = InferenceWorker.from_settings(
            settings.model_copy(update={"queue_size": 1}), partial(load_models_locked, settings)
        )
        self.worker.start()
        self.request_id: str | None = None  # of the try-on this replica runs
        assert settings.redis_url, "the cluster needs --redis-url"
        self.registry = ReplicaRegistry(connect(settings.redis_url))
        self.heartbeat = asyncio.create_task(self.report_forever())
        # Serve routes requests to a replica once its constructor returns: only after the load,
        # so a replica still loading never answers "loading" while another one is ready.
        while self.worker.status().state == "loading":
            await asyncio.sleep(LOAD_POLL_S)

    async def infer(self, job: TryOnJob, request_id: str | None) -> TryOnOutcome:
        """The synchronous door: one try-on; raises what `InferenceWorker.run` raises.
        `request_id` (the ingress's) tags this replica's log lines and its report."""
        with self.serving(request_id):
            return await self.worker.run(job, disconnected=never)

    async def infer_job(
        self, job: TryOnJob, request_id: str | None
    ) -> AsyncIterator[ProgressEvent]:
        """The job door: yields progress events, then ("outcome", TryOnOutcome); raises the
        worker's errors (InferenceCanceledError when stopped). The ingress cancelling the call
        stops the pipeline at its next denoising step, as a cancel does in the single process."""
        with self.serving(request_id):
            async for event in self.run_job(job):
                yield event

    @contextmanager
    def serving(self, request_id: str | None) -> Iterator[None]:
        bind_request_id(request_id)
        self.request_id = request_id
        try:
            yield
        finally:
            self.request_id = None

    async def run_job(self, job: TryOnJob) -> AsyncIterator[ProgressEvent]:
        progress = StreamedProgress()
        work = self.worker.submit(job, progress)
        outcome = asyncio.ensure_future(work.outcome())
        try:
            while not outcome.done():
                event = asyncio.ensure_future(progress.events.get())
                await asyncio.wait({event, outcome}, return_when=asyncio.FIRST_COMPLETED)
                if event.done():
                    yield await ready(event.result())
                else:
                    event.cancel()
            while not progress.events.empty():
                yield await ready(progress.events.get_nowait())
            yield ("outcome", outcome.result())
        except asyncio.CancelledError:
            self.worker.cancel(work)
            outcome.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise

    def check_health(self) -> None:
        """Serve restarts a replica whose models failed to load (or whose device thread died)."""
        status = self.worker.status()
        if status.state == "error":
            raise RuntimeError(f"try-on replica unusable: {status.error}")

    def report(self) -> ReplicaReport:
        status = self.worker.status()
        gpu = status.gpu
        return ReplicaReport(
            id=self.replica_id,
            status=status.state,
            error=status.error,
            inferences_served=status.inferences_served,
            busy=status.busy,
            request_id=self.request_id,
            pid=os.getpid(),
            size=list(status.working_size) if status.working_size else None,
            output_size=list(status.size) if status.size else None,
            device=status.device,
            dtype=status.dtype,
            model_identity=self.worker.model_identity,
            gpu=ReplicaGpu(
                name=gpu.name, allocated=gpu.allocated, reserved=gpu.reserved, total=gpu.total
            )
            if gpu
            else None,
        )

    async def report_forever(self) -> None:
        while True:
            try:
                await self.registry.publish(self.report())
            except Exception as exc:  # Redis down: keep serving, report again when it is back
                logger.warning("could not report to Redis: %s", exc)
            await asyncio.sleep(HEARTBEAT_S)

    def __del__(self) -> None:
        """Serve's graceful stop; a killed process leaves its report to expire by itself."""
        self.heartbeat.cancel()
        self.worker.stop()
