"""The unit of device work that both doors queue, and what the routes may use of the worker.

`InferenceQueue` is the small surface the routes and the job runner use; `app.worker` is the local
implementation (one device thread), and a remote one (app/cluster) can stand in for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from PIL import Image

from app.estimates import StepTimes
from app.intake import TryOnImages
from app.schemas import TryOnOptions
from catvton import CatVTONPipeline, DenoisingStep

logger = logging.getLogger(__name__)

Door = Literal["sync", "job"]


@dataclass
class TryOnJob:
    """Images fitted to the working size (`mask_image` None: automatic mask) and the options."""

    images: TryOnImages
    options: TryOnOptions


@dataclass
class TryOnOutcome:
    image: Image.Image
    seed: int
    mask: Image.Image  # the mask the model used: L, working size, 255 = repainted
    timings: dict[str, float]  # seconds per stage, queue wait included


class WorkListener(Protocol):
    """What a job hears about its work, in order, on the event loop (never on the device thread).

    `eta_s`: seconds until the work should be done, by measured step times, or None before any
    measurement. Stages: "masking" (automatic mask only), "denoising", "decoding".
    """

    def on_queue(self, position: int, eta_s: float | None) -> None:
        """`position` requests (either door) wait ahead of this one; 0 is next."""

    def on_stage(self, stage: str, eta_s: float | None) -> None:
        """The device began `stage`; the first call means the work left the queue."""

    def on_step(self, done: int, total: int, eta_s: float | None) -> None:
        """`done` of `total` denoising steps are finished."""


@dataclass
class QueuedWork:
    """One inference in the FIFO, its way back to the event loop and the request's logging context.

    `position` and `eta_s` are as of the moment it was queued; a job's listener hears later ones.
    """

    job: TryOnJob
    loop: asyncio.AbstractEventLoop
    started: asyncio.Future[None]
    done: asyncio.Future[TryOnOutcome]
    door: Door = "sync"
    listener: WorkListener | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    position: int = 0
    eta_s: float | None = None
    steps_done: int = 0
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    enqueued_at: float = field(default_factory=time.perf_counter)

    @property
    def guided(self) -> bool:
        return self.job.options.guidance_scale > 1.0

    @property
    def steps_left(self) -> int:
        return self.job.options.num_inference_steps - self.steps_done

    async def outcome(self) -> TryOnOutcome:
        """The result; raises what `InferenceWorker.run` documents, and InferenceCanceledError."""
        return await self.done

    def notify(self, event: str, *args: Any) -> None:
        """Call the listener's `event` method on the event loop (from any thread)."""
        if self.listener is not None:
            # A closed loop: the server is gone, nobody listens any more.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(getattr(self.listener, event), *args)

    def refuse(self, error: Exception) -> None:
        """End work that never ran: a request hears it through `started`, a job through `done`."""
        self.resolve(self.started, error=None if self.door == "job" else error)
        if self.door == "job":
            self.resolve(self.done, error=error)

    def resolve(
        self, future: asyncio.Future[Any], result: Any = None, error: Exception | None = None
    ) -> None:
        """Settle `future` from the device thread via the loop (futures are not thread-safe)."""

        def settle() -> None:
            if future.done():  # cancelled: the request is gone
                return
            if error is None:
                future.set_result(result)
            elif isinstance(error, StopIteration):
                # A future refuses StopIteration (TypeError) and would never settle: wrap it.
                wrapped = RuntimeError(f"inference raised StopIteration: {error}")
                future.set_exception(wrapped.with_traceback(error.__traceback__))
            else:
                future.set_exception(error)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: the server is gone, nobody waits
            logger.warning("the event loop closed before a result could be delivered")


class InferenceQueue(Protocol):
    """What the routes and the job runner use of the device worker: the surface a remote worker
    implements. `InferenceWorker` below is the local one."""

    max_queued_jobs: int

    @property
    def size(self) -> tuple[int, int]:
        """The working size (W, H) of the loaded model."""

    @property
    def model_identity(self) -> str:
        """Names the loaded weights, precision, device and size: part of the result cache key."""

    def admission(self, door: Door = "sync") -> AbstractContextManager[None]:
        """Hold a place in the queue while a request reads its uploads (503s before a byte)."""

    async def run(
        self, job: TryOnJob, *, disconnected: Callable[[], Awaitable[Any]]
    ) -> TryOnOutcome:
        """The synchronous door: queue `job` and wait for its result."""

    def submit(self, job: TryOnJob, listener: WorkListener) -> QueuedWork:
        """The job door: queue `job` and return at once; `listener` hears its progress."""

    def cancel(self, work: QueuedWork) -> bool:
        """True: taken out of the queue (its outcome raises InferenceCanceledError). False: it
        runs (it stops before its next denoising step) or is done."""


class StepReporter:
    """The pipeline's step callback for one work item: measures the step, tells the listener.

    The first step's time is not measured (it also holds the VAE encoding and the set-up).
    """

    def __init__(self, times: StepTimes, ticket: QueuedWork) -> None:
        self.times = times
        self.ticket = ticket
        self.last_step_at: float | None = None

    def __call__(self, progress: DenoisingStep) -> None:
        done, total = progress.step, progress.total_steps
        now = time.perf_counter()
        ticket = self.ticket
        if self.last_step_at is not None:
            self.times.observe_step(ticket.guided, now - self.last_step_at)
        self.last_step_at = now
        ticket.steps_done = done
        eta_s = self.times.remaining(ticket.steps_left, ticket.guided)
        ticket.notify("on_step", done, total, eta_s)
        if done == total:
            ticket.notify("on_stage", "decoding", eta_s)


def describe_model(pipeline: CatVTONPipeline) -> str:
    """What makes a fixed-seed image reproducible: the weights, precision, device type and size."""
    unet_config = dict(pipeline.unet.config)
    return json.dumps(
        {
            "unet": unet_config.get("_name_or_path"),
            "vae": dict(pipeline.vae.config).get("_name_or_path"),
            "parameters": sum(parameter.numel() for parameter in pipeline.unet.parameters()),
            "dtype": str(pipeline.dtype),
            "device": pipeline.device.type,
            "size": pipeline.size,
        },
        sort_keys=True,
        default=str,
    )
