"""The worker contract: what the app calls on the thing that runs try-ons, and what it reads back.

`Worker` is everything the routes, the job runner, /health, /metrics and the lifecycle use; two
implementations exist and nothing else may be used of them: `InferenceWorker`
(app/inference/worker.py, one device thread in this process) and `RemoteWorker`
(app/cluster/remote_worker.py, try-on replicas behind Ray Serve). `WorkerStatus` is the one snapshot
that /health, /metrics and the page's banners render; the cluster extends it (`ClusterStatus`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from PIL import Image

from app.edge.errors import ServiceError
from app.edge.schemas import TryOnOptions
from app.media.intake import TryOnImages

logger = logging.getLogger(__name__)

Door = Literal["sync", "job"]


@dataclass
class TryOnJob:
    """Images fitted to the working size (`mask_image` None: automatic mask) and the options.

    `client` (app/edge/clients.py `client_id`) names the lane the work waits in: the waiting line
    takes clients in turn (app/inference/waiting.py).
    `on_outcome` (the flow's, e.g. keep the automatic mask of a stored person, app/images) runs
    on the ingress once the outcome is back; it never travels to a try-on replica.
    """

    images: TryOnImages
    options: TryOnOptions
    client: str = ""
    on_outcome: Callable[[TryOnOutcome], Awaitable[None]] | None = field(
        default=None, repr=False, compare=False
    )

    def __getstate__(self) -> dict[str, Any]:
        # Pickled to a Ray Serve replica without the callback (it holds the ingress's stores).
        return {**self.__dict__, "on_outcome": None}


@dataclass
class TryOnOutcome:
    image: Image.Image
    seed: int
    mask: Image.Image  # the mask the model used: L, working size, 255 = repainted
    timings: dict[str, float]  # seconds per stage, queue wait included
    # The masker's own mask (before the pipeline's smoothing) when it ran; None with a given mask.
    # Passed back in as a job's mask_image it gives the same image (app/images keeps it).
    automatic_mask: Image.Image | None = None


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

    def on_preview(self, step: int, image: Image.Image | bytes) -> None:
        """A preview of the result as of denoising step `step` (job door, `--preview-every`): the
        small RGB picture the device made, or (from a cluster replica) its JPEG bytes."""


@dataclass
class QueuedWork:
    """One inference in the waiting line, its way back to the event loop and the request's logging
    context.

    `position` and `eta_s` are its place in the real order (round robin over clients, kept up to
    date by the line); a job's listener hears each change.
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
    preview_every: int = 0  # a preview every N denoising steps (the job door only); 0: none
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    enqueued_at: float = field(default_factory=time.perf_counter)

    @property
    def client(self) -> str:
        return self.job.client

    @property
    def guided(self) -> bool:
        return self.job.options.guidance_scale > 1.0

    @property
    def steps_left(self) -> int:
        return self.job.options.num_inference_steps - self.steps_done

    async def outcome(self) -> TryOnOutcome:
        """The result; raises what `InferenceWorker.run` documents, and InferenceCanceledError."""
        return await self.done

    def abandon(self) -> None:
        """Nobody wants the outcome any more (the client hung up, the job was deleted): stop
        before the next denoising step, and retrieve the outcome so asyncio never logs it as
        never retrieved."""
        self.stop.set()
        self.done.add_done_callback(_retrieve)

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


# Called after each inference (on the device thread, or on the loop for a remote worker): its
# outcome (ok, out_of_memory, canceled, error) and seconds per stage, "total" included
# (app/observe/metrics.py records them).
InferenceListener = Callable[[str, Mapping[str, float]], None]
WorkerState = Literal["loading", "ok", "error"]


@dataclass(frozen=True)
class GpuMemory:
    """A CUDA device's memory, in bytes, as torch's caching allocator sees it."""

    name: str
    allocated: int
    reserved: int
    total: int


@dataclass(frozen=True)
class WorkerStatus:
    """One consistent look at a worker, taken on the event loop without waiting on anything.

    `state` is the worker's own (loading until the models are ready, error once it cannot serve);
    `draining` is set once a stop began. `reason` is why no try-on can be served now (the 503 a
    try-on gets), None when one can. `size` is the size of the answers (demo mode: upscaled),
    `working_size` the model's own; both None before the models are ready.
    """

    state: WorkerState
    draining: bool
    reason: ServiceError | None
    error: str | None
    model_loaded: bool
    device: str | None
    dtype: str | None
    size: tuple[int, int] | None
    working_size: tuple[int, int] | None
    queue_depth: int  # waiting for the device, not counting the one running
    receiving: int  # admitted, still uploading or decoding
    queue_capacity: int  # synchronous requests that may wait
    busy: bool  # an inference is running
    idle: bool  # nothing admitted, queued or running: a drain is complete
    inferences_served: int
    gpu: GpuMemory | None
    uptime_s: float

    @property
    def health(self) -> str:
        """The state word /health answers: draining wins over the worker's own state."""
        return "draining" if self.draining else self.state

    def extensions(self) -> dict[str, Any]:
        """What a kind of worker adds to /health beyond these fields (JSON-ready); none here."""
        return {}


class Worker(Protocol):
    """What the app may use of the thing that runs try-ons (see the module docstring)."""

    def status(self) -> WorkerStatus:
        """The snapshot /health, /metrics and the lifecycle read."""

    @property
    def size(self) -> tuple[int, int]:
        """The working size (W, H) of the loaded model; only once a try-on can be served."""

    @property
    def model_identity(self) -> str:
        """Names the loaded weights, precision, device and size: part of the result cache key."""

    def start(self) -> None:
        """Begin loading (or watching replicas); called once, on the event loop, by the lifespan."""

    def add_listener(self, listener: InferenceListener) -> None:
        """`listener` hears every inference's outcome and stage times."""

    def begin_drain(self) -> None:
        """Admit no new work (503 shutting_down); what is admitted, queued or running goes on."""

    def stop(self, timeout: float = 5.0) -> None:
        """Fail what waits or runs with shutting_down and stop, giving threads `timeout` seconds.
        Called from the thread pool; a second call returns at once."""

    def admission(self, door: Door = "sync") -> AbstractContextManager[None]:
        """Hold a place while a request reads and decodes its uploads (503s before a byte)."""

    async def run(
        self, job: TryOnJob, *, disconnected: Callable[[], Awaitable[Any]]
    ) -> TryOnOutcome:
        """The synchronous door: queue `job` and wait for its result."""

    def submit(self, job: TryOnJob, listener: WorkListener) -> QueuedWork:
        """The job door: queue `job` and return at once; `listener` hears its progress."""

    def cancel(self, work: QueuedWork) -> bool:
        """True: taken out of the queue (its outcome raises InferenceCanceledError). False: it
        runs (it stops before its next denoising step) or is done."""


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
