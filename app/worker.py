"""The only service code touching the device: background loading, a bounded queue, one consumer.

One thread owns the device for the life of the process. It first loads the models (meanwhile the
HTTP server answers `/health` with "loading", and a failed load leaves a reason, not a dead
process), then takes try-on jobs one at a time from a bounded FIFO queue. One thread rather than a
lock: two inferences can never overlap, the order is first come first served, and a request that
cannot be served soon is told so at once (503) instead of piling up behind a lock.

Requests hand in a job and await a future; the event loop never runs model code.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
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
from app.intake import TryOnImages
from app.schemas import TryOnOptions
from app.settings import Settings
from catvton import CatVTONPipeline, WeightSources, load_pipeline
from catvton.errors import CatVTONError
from catvton.loading import default_size
from catvton.masking import AutoMasker, load_automasker
from catvton.tiny import TINY_SIZE, write_tiny_weights

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str], None]
WARM_UP_STEPS = 2
# Called on the device thread after each inference: outcome (ok, out_of_memory, error) and seconds
# per stage, "total" included (app.observe.metrics records them).
InferenceListener = Callable[[str, Mapping[str, float]], None]


@dataclass(frozen=True)
class Models:
    pipeline: CatVTONPipeline
    masker: AutoMasker
    # Demo mode: the production size the tiny model's results are upscaled to, so that an app
    # developer sees real image dimensions, byte sizes and aspect ratio. None: the pipeline's size.
    answer_size: tuple[int, int] | None = None

    @property
    def output_size(self) -> tuple[int, int]:
        """(W, H) of every result image."""
        return self.answer_size or self.pipeline.size


def load_models(settings: Settings, progress: ProgressCallback) -> Models:
    """Resolve and load the pipeline and the masker as `settings` says; `progress` names each step.

    Raises WeightsNotFoundError / CheckpointMismatchError (and whatever torch raises) unchanged:
    the worker turns them into the reason /health reports.
    """
    weights_dir, size, answer_size = settings.weights_dir, settings.working_size, None
    if settings.demo:
        progress(f"writing tiny demo weights to {settings.demo_dir}")
        logger.warning("DEMO MODE: tiny random weights in %s; results are noise", settings.demo_dir)
        weights_dir = write_tiny_weights(Path(settings.demo_dir))
        if size is None:
            # The tiny networks' attention is full-resolution: 768x1024 would take minutes on a
            # CPU. They run at 96x128 and the result is upscaled to the production size.
            size, answer_size = TINY_SIZE, default_size(settings.attention_version)
            logger.warning(
                "DEMO MODE: the tiny model runs at %dx%d; answers are upscaled to %dx%d",
                *size,
                *answer_size,
            )
    progress("resolving weights")
    sources = WeightSources(
        weights_dir=weights_dir,
        base_model=settings.base_model,
        vae=settings.vae,
        catvton=settings.catvton,
        attention_version=settings.attention_version,
    )
    resolved = sources.resolve(require_masker=True)  # every missing file named before any load
    progress("loading the diffusion pipeline")
    pipeline = load_pipeline(resolved, device=settings.device, dtype=settings.dtype, size=size)
    progress("loading the AutoMasker")
    masker = load_automasker(
        resolved.catvton_dir,
        device=settings.masker_device or pipeline.device,
        dtype=settings.masker_dtype,
    )
    models = Models(pipeline=pipeline, masker=masker, answer_size=answer_size)
    if settings.warm_up == "on" or (settings.warm_up == "auto" and pipeline.device.type == "cuda"):
        progress("warming up")
        started = time.perf_counter()
        warm_up(models)
        logger.info("warm-up done in %.1f s", time.perf_counter() - started)
    return models


def warm_up(models: Models) -> None:
    """The masker once and a short inference at the working size, on plain synthetic images.

    On CUDA the first call of each kernel pays for lazy initialisation (module loading, cuDNN and
    cuBLAS autotuning, the caching allocator's first blocks): seconds that the first user would
    otherwise wait. Guidance above 1 so the batched (conditional + unconditional) pass runs too.
    """
    size = models.pipeline.size
    person_image = Image.new("RGB", size, (128, 128, 128))
    cloth_image = Image.new("RGB", size, (200, 60, 60))
    mask_image = models.masker(person_image, "upper").mask
    models.pipeline(
        person_image, cloth_image, mask_image, num_inference_steps=WARM_UP_STEPS, guidance_scale=2.5
    )


@dataclass
class TryOnJob:
    """Images fitted to the working size (`mask_image` None: automatic mask) and the options."""

    images: TryOnImages
    options: TryOnOptions


@dataclass
class TryOnOutcome:
    image: Image.Image
    seed: int
    timings: dict[str, float]  # seconds per stage, queue wait included


@dataclass
class _Ticket:
    """A queued job plus its way back to the event loop and the request's logging context."""

    job: TryOnJob
    loop: asyncio.AbstractEventLoop
    started: asyncio.Future[None]
    done: asyncio.Future[TryOnOutcome]
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    enqueued_at: float = field(default_factory=time.perf_counter)

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


class InferenceWorker:
    """Loads the models on its own thread, then serves try-on jobs there, one at a time.

    States: "loading" until `load` returns, then "ok"; "error" if it raised (kept, with the reason,
    for the life of the process). `queue_size` jobs may wait while one runs; a job waits at most
    `queue_timeout` seconds before it gets 503.
    """

    def __init__(
        self,
        load: Callable[[ProgressCallback], Models],
        *,
        queue_size: int = 4,
        queue_timeout: float = 300.0,
    ) -> None:
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.state = "loading"
        self.loading_step = "starting"
        self.error: str | None = None
        self.models: Models | None = None
        self.inferences_served = 0
        self.started_at = time.monotonic()
        self._load = load
        self._waiting: deque[_Ticket] = deque()
        self._running: _Ticket | None = None
        self._receiving = 0  # admitted requests still reading or decoding their uploads
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
            return self._running is None and not self._waiting and not self._receiving

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
            ticket.resolve(ticket.started, error=ShuttingDownError("the request was still queued"))
        if running is not None:
            running.resolve(running.done, error=ShuttingDownError("the inference did not finish"))
        self._thread.join(timeout)

    # -- the event loop's side -----------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def receiving(self) -> int:
        return self._receiving

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

    def check_accepting(self) -> None:
        """Raise the 503 a new request would get now (loading, failed, stopping or full)."""
        if self._stopping:
            raise ShuttingDownError()
        if (reason := self.unavailable()) is not None:
            raise reason
        ahead = self._receiving + len(self._waiting)
        if ahead + (self._running is not None) > self.queue_size:
            raise GPUBusyError(f"{ahead} requests are already waiting")

    @contextmanager
    def admission(self) -> Iterator[None]:
        """Hold a place in the queue while a request reads and decodes its uploads.

        Raises the 503s of `check_accepting` before a byte is read. Requests still receiving count
        toward `queue_size`, so a burst cannot decode dozens of photos at once only to be refused
        at the queue; leaving the block and calling `run` happen in one event-loop step, so the
        place passes to the queued job without a gap.
        """
        with self._condition:
            if self.draining:
                raise ShuttingDownError()
            self.check_accepting()
            self._receiving += 1
        try:
            yield
        finally:
            with self._condition:
                self._receiving -= 1

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
        loop = asyncio.get_running_loop()
        ticket = _Ticket(job, loop, started=loop.create_future(), done=loop.create_future())
        watcher = asyncio.ensure_future(disconnected())
        # One loop step for the watcher: a client that hung up while its uploads decoded is known
        # to the server already, and `receive` says so without waiting. Checked before queueing:
        # an idle worker would take the job at once.
        await asyncio.sleep(0)
        if watcher.done():
            raise ClientDisconnectedError("the client disconnected before its job was queued")
        with self._condition:
            self.check_accepting()
            self._waiting.append(ticket)
            self._condition.notify()
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

    def _withdraw(self, ticket: _Ticket) -> bool:
        """Take a waiting ticket out of the queue; False if the worker already took it."""
        with self._condition:
            if ticket in self._waiting:
                self._waiting.remove(ticket)
                return True
            return False

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
                ticket.resolve(ticket.started, error=WorkerStoppedError(self.error))
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
        self.state = "ok"
        pipeline = self.models.pipeline
        logger.info(
            "models loaded in %.1f s on %s (%s, %dx%d)",
            time.perf_counter() - started,
            pipeline.device,
            pipeline.dtype,
            *pipeline.size,
        )
        return True

    def _serve(self, ticket: _Ticket) -> None:
        """Run one job on this thread, in the request's context (its id is in every log line)."""
        started = time.perf_counter()
        queue_wait = started - ticket.enqueued_at
        ticket.resolve(ticket.started)
        result, stage_seconds = "error", {}
        try:
            outcome = self._infer(ticket.job)
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

    def _infer(self, job: TryOnJob) -> TryOnOutcome:
        assert self.models is not None
        images, options = job.images, job.options
        timings: dict[str, float] = {}
        mask_image = images.mask_image
        if mask_image is None:
            started = time.perf_counter()
            mask_image = self.models.masker(images.person_image, options.cloth_type).mask
            timings["mask"] = time.perf_counter() - started
        result = self.models.pipeline(
            images.person_image,
            images.cloth_image,
            mask_image,
            num_inference_steps=options.num_inference_steps,
            guidance_scale=options.guidance_scale,
            seed=options.seed,
            repaint=options.repaint,
        )
        image = result.image
        if image.size != self.models.output_size:  # demo mode: a cheap upscale, a few ms
            image = image.resize(self.models.output_size, Image.Resampling.BICUBIC)
        # Prefixed: the pipeline's stage names (preprocess, encode, ...) recur in the route's.
        timings.update({f"pipeline_{stage}": seconds for stage, seconds in result.timings.items()})
        logger.info("inference done: seed %d, %d steps", result.seed, options.num_inference_steps)
        return TryOnOutcome(image=image, seed=result.seed, timings=timings)
