"""The only service code touching the device: background loading, a bounded queue, one consumer.

One thread owns the device for the life of the process. It first loads the models (app/models.py
says what and how; meanwhile the HTTP server answers `/health` with "loading", and a failed load
leaves a reason, not a dead process), then takes try-on jobs one at a time from a bounded FIFO
queue. One thread rather than a lock: two inferences can never overlap, the order is first come
first served, and a request that cannot be served soon is told so at once (503) instead of piling
up behind a lock.

Both doors share this one FIFO: a synchronous request awaits its work (`run`), a job hands its
work in and leaves (`submit`), hearing about it through a `WorkListener` and stopping it with
`cancel`. The event loop never runs model code. `InferenceQueue` is what the routes and the job
runner may use, so that a remote worker (app/cluster) can stand in.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image

from app.errors import (
    ClientDisconnectedError,
    GPUBusyError,
    GPUOutOfMemoryError,
    ModelLoadFailedError,
    ModelsLoadingError,
    ServiceError,
    ShuttingDownError,
    WorkerStoppedError,
)
from app.estimates import StepTimes
from app.models import Models, ProgressCallback
from app.work import (
    Door,
    QueuedWork,
    StepReporter,
    TryOnJob,
    TryOnOutcome,
    WorkListener,
    describe_model,
)
from catvton.errors import CatVTONError, InferenceCanceledError

logger = logging.getLogger(__name__)

# Called on the device thread after each inference: outcome (ok, out_of_memory, error) and seconds
# per stage, "total" included (app.observe.metrics records them).
InferenceListener = Callable[[str, Mapping[str, float]], None]


class InferenceWorker:
    """Loads the models on its own thread, then serves try-on jobs there, one at a time.

    States: "loading" until `load` returns, then "ok"; "error" if it raised (kept, with the reason,
    for the life of the process). A synchronous request is refused when `queue_size` requests
    (either door) wait ahead of it, and waits at most `queue_timeout` seconds; jobs may queue
    deeper, up to `max_queued_jobs` jobs, and wait as long as it takes.
    """

    def __init__(
        self,
        load: Callable[[ProgressCallback], Models],
        *,
        queue_size: int = 4,
        queue_timeout: float = 300.0,
        max_queued_jobs: int = 32,
    ) -> None:
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.max_queued_jobs = max_queued_jobs
        self.state = "loading"
        self.loading_step = "starting"
        self.error: str | None = None
        self.models: Models | None = None
        self.inferences_served = 0
        self.started_at = time.monotonic()
        self._load = load
        self._waiting: deque[QueuedWork] = deque()
        self._running: QueuedWork | None = None
        # Admitted requests still reading or decoding their uploads, by door.
        self._receiving: dict[Door, int] = {"sync": 0, "job": 0}
        self._step_times = StepTimes()
        self._identity = ""
        self._stopping = False
        self.draining = False
        self._listeners: list[InferenceListener] = []
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._own_device, name="device-worker", daemon=True)

    # -- lifecycle (lifespan) ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def add_listener(self, listener: InferenceListener) -> None:
        self._listeners.append(listener)

    def begin_drain(self) -> None:
        """Admit no new request (503 shutting_down); those admitted, queued or running go on."""
        with self._condition:
            self.draining = True

    @property
    def idle(self) -> bool:
        """Nothing admitted, queued or running: a drain is complete."""
        with self._condition:  # the device thread moves a ticket from queue to running under it
            return self._running is None and not self._waiting and not any(self._receiving.values())

    def stop(self, timeout: float = 5.0) -> None:
        """Fail what waits or runs with shutting_down, then give the thread `timeout` seconds.

        The running inference cannot be interrupted: its client is answered now, and the device
        thread (a daemon) ends with the process. A second call returns at once.
        """
        with self._condition:
            if self._stopping:
                return
            self._stopping = True
            refused = list(self._waiting)
            self._waiting.clear()
            running = self._running
            self._condition.notify_all()
        for ticket in refused:
            ticket.refuse(ShuttingDownError("the request was still queued"))
        if running is not None:
            running.resolve(running.done, error=ShuttingDownError("the inference did not finish"))
        self._thread.join(timeout)

    # -- the event loop's side -----------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def receiving(self) -> int:
        return sum(self._receiving.values())

    @property
    def model_identity(self) -> str:
        """Weights, precision, device and size of the loaded model ("" before it loaded)."""
        return self._identity

    @property
    def busy(self) -> bool:
        return self._running is not None

    @property
    def device(self) -> torch.device | None:
        return torch.device(self.models.pipeline.device) if self.models else None

    @property
    def size(self) -> tuple[int, int]:
        """The working size (W, H); only once loaded (`check_accepting` passed)."""
        assert self.models is not None, "models are not loaded"
        return self.models.pipeline.size

    def unavailable(self) -> ServiceError | None:
        """Why no try-on can be served at all (loading, failed load, dead worker), or None.

        One wording for /health's message and for the 503 a try-on gets.
        """
        if self.state == "loading":
            return ModelsLoadingError(self.loading_step)
        if self.state == "error":
            if self.models is not None:
                return WorkerStoppedError(self.error or "unknown error")
            return ModelLoadFailedError(self.error or "unknown error")
        return None

    def check_accepting(self, door: Door = "sync") -> None:
        """Raise the 503 a new request would get now (loading, failed, stopping or full)."""
        if self._stopping:
            raise ShuttingDownError()
        if (reason := self.unavailable()) is not None:
            raise reason
        if door == "job":
            jobs = self._receiving["job"] + self._waiting_jobs()
            if jobs >= self.max_queued_jobs:
                raise GPUBusyError(f"{jobs} jobs are already queued")
            return
        ahead = self._receiving["sync"] + len(self._waiting)
        if ahead + (self._running is not None) > self.queue_size:
            raise GPUBusyError(f"{ahead} requests are already waiting")

    def _waiting_jobs(self) -> int:
        return sum(ticket.door == "job" for ticket in self._waiting)

    @contextmanager
    def admission(self, door: Door = "sync") -> Iterator[None]:
        """Hold a place in the queue while a request reads and decodes its uploads.

        Raises the 503s of `check_accepting` before a byte is read. Requests still receiving count
        toward `queue_size`, so a burst cannot decode dozens of photos at once only to be refused
        at the queue; leaving the block and calling `run` happen in one event-loop step, so the
        place passes to the queued job without a gap.
        """
        with self._condition:
            if self.draining:
                raise ShuttingDownError()
            self.check_accepting(door)
            self._receiving[door] += 1
        try:
            yield
        finally:
            with self._condition:
                self._receiving[door] -= 1

    async def run(
        self, job: TryOnJob, *, disconnected: Callable[[], Awaitable[Any]]
    ) -> TryOnOutcome:
        """Queue `job`, wait for its turn and result.

        `disconnected` resolves when the client goes away: a job whose client is already gone is
        refused, one still waiting is dropped, before it costs device time. Raises the 503s of
        `check_accepting`, GPUBusyError after `queue_timeout` seconds of waiting,
        GPUOutOfMemoryError, ClientDisconnectedError, and whatever the pipeline raised
        (InvalidInputError for a bad input).
        """
        watcher = asyncio.ensure_future(disconnected())
        # One loop step for the watcher: a client that hung up while its uploads decoded is known
        # to the server already, and `receive` says so without waiting. Checked before queueing:
        # an idle worker would take the job at once.
        await asyncio.sleep(0)
        if watcher.done():
            raise ClientDisconnectedError("the client disconnected before its job was queued")
        ticket = self._enqueue(job, "sync", listener=None)
        try:
            await asyncio.wait(
                {ticket.started, watcher},
                timeout=self.queue_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not ticket.started.done() and self._withdraw(ticket):
                if watcher.done():
                    raise ClientDisconnectedError("the client disconnected while queued")
                raise GPUBusyError(f"waited {self.queue_timeout:g} s in the queue")
            await ticket.started  # re-raises a refusal at shutdown
            return await ticket.done
        finally:
            watcher.cancel()
            if not ticket.started.done():  # cancelled (server shutdown): free the slot
                self._withdraw(ticket)

    def submit(self, job: TryOnJob, listener: WorkListener) -> QueuedWork:
        """Queue a job's work and return at once (see `InferenceQueue.submit`).

        Raises the 503s of `check_accepting` except the place count: `admission("job")` held it.
        """
        return self._enqueue(job, "job", listener=listener)

    def cancel(self, work: QueuedWork) -> bool:
        """Withdraw waiting work (True), or ask running work to stop at its next step (False)."""
        work.stop.set()
        if self._withdraw(work):
            work.refuse(InferenceCanceledError("canceled while queued"))
            return True
        return False

    def _enqueue(self, job: TryOnJob, door: Door, listener: WorkListener | None) -> QueuedWork:
        loop = asyncio.get_running_loop()
        ticket = QueuedWork(
            job, loop, loop.create_future(), loop.create_future(), door=door, listener=listener
        )
        with self._condition:
            if door == "sync":
                self.check_accepting()
            elif self._stopping or self.unavailable() is not None:
                self.check_accepting(door)  # raises the reason
            self._waiting.append(ticket)
            ticket.position = len(self._waiting) - 1
            ticket.eta_s = self._eta_through(ticket.position)
            self._condition.notify()
        return ticket

    def _withdraw(self, ticket: QueuedWork) -> bool:
        """Take a waiting ticket out of the queue; False if the worker already took it."""
        with self._condition:
            if ticket not in self._waiting:
                return False
            index = self._waiting.index(ticket)
            del self._waiting[index]
            self._announce_positions(start=index)
            return True

    # -- positions and estimates (under the condition's lock) ----------------------------------

    def _eta_through(self, index: int) -> float | None:
        """Seconds until the work at `index` of the queue is done: the running job's rest, then
        each waiting job up to and including it. None before any step was measured."""
        times = self._step_times
        if times.step_seconds(guided=False) is None:
            return None
        running = [] if self._running is None else [self._running]
        return sum(
            times.remaining(*self._left(ticket)) or 0.0
            for ticket in [*running, *list(self._waiting)[: index + 1]]
        )

    @staticmethod
    def _left(ticket: QueuedWork) -> tuple[int, bool]:
        return ticket.steps_left, ticket.guided

    def _announce_positions(self, start: int = 0) -> None:
        """Tell each waiting job from `start` on its position and ETA (the queue moved)."""
        for index, ticket in enumerate(self._waiting):
            if index >= start and ticket.listener is not None:
                ticket.notify("on_queue", index, self._eta_through(index))

    # -- the device thread -----------------------------------------------------------------------

    def _own_device(self) -> None:
        try:
            if self._load_models():
                self._serve_forever()
        except BaseException as exc:
            # Only a bug, or a load that raised a BaseException, gets here (`_serve` settles
            # every job). Say so in /health and refuse what waits, rather than report "ok" while
            # requests wait for a dead thread.
            logger.critical("the device worker stopped: %r", exc, exc_info=True)
            with self._condition:
                self.error = f"{exc!r}; restart the server"
                self.state = "error"
                refused, running = list(self._waiting), self._running
                self._waiting.clear()
                self._running = None
            for ticket in refused:
                ticket.refuse(WorkerStoppedError(self.error))
            if running is not None:
                running.resolve(running.done, error=WorkerStoppedError(self.error))

    def _serve_forever(self) -> None:
        while True:
            with self._condition:
                while not self._waiting and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
                ticket = self._running = self._waiting.popleft()
                self._announce_positions()
            ticket.context.run(self._serve, ticket)
            with self._condition:
                self._running = None

    def _load_models(self) -> bool:
        def progress(step: str) -> None:
            self.loading_step = step
            logger.info("loading: %s", step)

        started = time.perf_counter()
        try:
            self.models = self._load(progress)
        except Exception as exc:
            # The library's own errors carry the reason and the fix; anything else is a bug.
            expected = isinstance(exc, CatVTONError)
            self.error = str(exc) if expected else repr(exc)
            self.state = "error"
            logger.error(
                "model loading failed (the server keeps running to explain why): %s",
                self.error,
                exc_info=not expected,
            )
            return False
        gc.freeze()  # the models live as long as the process, like the imports (see app.main)
        pipeline = self.models.pipeline
        self._identity = describe_model(pipeline)
        self.state = "ok"
        logger.info(
            "models loaded in %.1f s on %s (%s, %dx%d)",
            time.perf_counter() - started,
            pipeline.device,
            pipeline.dtype,
            *pipeline.size,
        )
        return True

    def _serve(self, ticket: QueuedWork) -> None:
        """Run one job on this thread, in the request's context (its id is in every log line)."""
        started = time.perf_counter()
        queue_wait = started - ticket.enqueued_at
        ticket.resolve(ticket.started)
        result, stage_seconds = "error", {}
        try:
            outcome = self._infer(ticket)
        except InferenceCanceledError as exc:
            result = "canceled"
            ticket.resolve(ticket.done, error=exc)
        except torch.cuda.OutOfMemoryError:
            result = "out_of_memory"
            logger.warning("CUDA out of memory; emptying the cache, the next request may proceed")
            ticket.resolve(ticket.done, error=GPUOutOfMemoryError())
        except Exception as exc:
            ticket.resolve(ticket.done, error=exc)
        except BaseException as exc:  # e.g. SystemExit from a library: this thread must live on
            error = RuntimeError(f"inference raised {type(exc).__name__}: {exc}")
            ticket.resolve(ticket.done, error=error.with_traceback(exc.__traceback__))
        else:
            result = "ok"
            stage_seconds = {
                name.removeprefix("pipeline_"): seconds for name, seconds in outcome.timings.items()
            }
            self.inferences_served += 1
            outcome.timings["queue_wait"] = queue_wait
            ticket.resolve(ticket.done, outcome)
        finally:
            # Outside the except blocks, so the OOM traceback's tensors are already released.
            self._empty_cache()
        stage_seconds["total"] = time.perf_counter() - started
        for listener in self._listeners:
            listener(result, stage_seconds)

    def _empty_cache(self) -> None:
        device = self.device
        if device is None or device.type != "cuda":
            return
        try:
            torch.cuda.empty_cache()
        except Exception:  # a broken CUDA context: the job's own error already says why
            logger.exception("torch.cuda.empty_cache() failed")

    def _infer(self, ticket: QueuedWork) -> TryOnOutcome:
        assert self.models is not None
        images, options = ticket.job.images, ticket.job.options
        if ticket.stop.is_set():  # canceled just as the worker took it: no device time at all
            raise InferenceCanceledError("canceled before it started")
        started = time.perf_counter()
        timings: dict[str, float] = {}
        mask_image = images.mask_image
        if mask_image is None:
            ticket.notify("on_stage", "masking", self._eta_of(ticket))
            mask_image = self.models.masker(images.person_image, options.cloth_type).mask
            timings["mask"] = time.perf_counter() - started
        ticket.notify("on_stage", "denoising", self._eta_of(ticket))
        result = self.models.pipeline(
            images.person_image,
            images.cloth_image,
            mask_image,
            num_inference_steps=options.num_inference_steps,
            guidance_scale=options.guidance_scale,
            seed=options.seed,
            repaint=options.repaint,
            on_step=StepReporter(self._step_times, ticket),
            stop=ticket.stop,
        )
        denoise_s = result.timings.get("denoise", 0.0)
        self._step_times.observe_overhead(time.perf_counter() - started - denoise_s)
        image = result.image
        if image.size != self.models.output_size:  # demo mode: a cheap upscale, a few ms
            image = image.resize(self.models.output_size, Image.Resampling.BICUBIC)
        # Prefixed: the pipeline's stage names (preprocess, encode, ...) recur in the route's.
        timings.update({f"pipeline_{stage}": seconds for stage, seconds in result.timings.items()})
        logger.info("inference done: seed %d, %d steps", result.seed, options.num_inference_steps)
        return TryOnOutcome(image=image, seed=result.seed, mask=result.mask, timings=timings)

    def _eta_of(self, ticket: QueuedWork) -> float | None:
        return self._step_times.remaining(ticket.steps_left, ticket.guided)
