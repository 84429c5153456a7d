"""What happens on the thread that owns the device: the models' load, then one ticket at a time.

`Device` is the worker's other half (app/inference/worker.py decides the order; this runs what it
picks): it loads the models once, keeps the state /health reports, runs a ticket's prediction and
turns every way it can end into the ticket's outcome, so the device thread never dies of a try-on.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

import torch

from app.edge.errors import (
    GPUOutOfMemoryError,
    ModelLoadFailedError,
    ModelsLoadingError,
    ServiceError,
    WorkerStoppedError,
)
from app.inference.contract import GpuMemory, InferenceListener, QueuedWork, WorkerState
from app.inference.estimates import StepTimes
from app.inference.models import Models, ProgressCallback
from catvton import DenoisingStep
from catvton.errors import CatVTONError, InferenceCanceledError
from catvton.previews import latents_to_preview, should_preview

logger = logging.getLogger(__name__)


def read_gpu_memory(device: torch.device | None) -> GpuMemory | None:
    """The memory of a CUDA device; None for any other device (or none)."""
    if device is None or device.type != "cuda":
        return None
    return GpuMemory(
        name=torch.cuda.get_device_name(device),
        allocated=torch.cuda.memory_allocated(device),
        reserved=torch.cuda.memory_reserved(device),
        total=torch.cuda.get_device_properties(device).total_memory,
    )


class StepReporter:
    """The pipeline's step callback for one ticket: measures the step, tells the listener.

    The first step's time is not measured (it also holds the VAE encoding and the set-up). At the
    steps `should_preview` picks for `ticket.preview_every`, the predicted clean latents become a
    small RGB picture here, on the device (no VAE, no UNet call); JPEG encoding is the listener's,
    off this thread. The preview's time counts in the step's: its cost shows in the ETA.
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
        if should_preview(done, total, ticket.preview_every):
            ticket.notify("on_preview", done, latents_to_preview(progress.predicted_latents))
        if done == total:
            ticket.notify("on_stage", "decoding", eta_s)


class Device:
    """The loaded models and their state: "loading" until `load` returns, then "ok"; "error" if it
    raised or the thread died (kept, with the reason, for the life of the process)."""

    def __init__(self, load: Callable[[ProgressCallback], Models]) -> None:
        self.state: WorkerState = "loading"
        self.loading_step = "starting"
        self.error: str | None = None
        self.models: Models | None = None
        self.identity = ""
        self.inferences_served = 0
        self.step_times = StepTimes()
        self._load = load
        self._listeners: list[InferenceListener] = []

    def add_listener(self, listener: InferenceListener) -> None:
        self._listeners.append(listener)

    @property
    def torch_device(self) -> torch.device | None:
        return self.models.pipeline.device if self.models else None

    def unavailable(self) -> ServiceError | None:
        """Why no try-on can be served at all (loading, failed load, dead thread), or None."""
        if self.state == "loading":
            return ModelsLoadingError(self.loading_step)
        if self.state == "error":
            if self.models is not None:
                return WorkerStoppedError(self.error or "unknown error")
            return ModelLoadFailedError(self.error or "unknown error")
        return None

    def load(self) -> bool:
        """Load the models; False (state "error", the reason kept) if that raised."""

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
        self.identity = self.models.identity
        self.state = "ok"
        logger.info(
            "models loaded in %.1f s on %s (%s, %dx%d)",
            time.perf_counter() - started,
            pipeline.device,
            pipeline.dtype,
            *pipeline.size,
        )
        return True

    def fail(self, exc: BaseException) -> str:
        """The device thread died of `exc` (a bug): say so for good; returns the reason."""
        logger.critical("the device worker stopped: %r", exc, exc_info=True)
        self.error = f"{exc!r}; restart the server"
        self.state = "error"
        return self.error

    def serve(self, ticket: QueuedWork) -> None:
        """Run one ticket on this thread and settle it, whatever happens."""
        assert self.models is not None
        started = time.perf_counter()
        queue_wait = started - ticket.enqueued_at
        ticket.resolve(ticket.started)
        result, stage_seconds = "error", {}
        try:
            outcome = self.models.predict(
                ticket.job,
                on_stage=lambda stage: ticket.notify("on_stage", stage, self._eta_of(ticket)),
                on_step=StepReporter(self.step_times, ticket),
                stop=ticket.stop,
            )
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
            denoise_s = outcome.timings.get("pipeline_denoise", 0.0)
            self.step_times.observe_overhead(time.perf_counter() - started - denoise_s)
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
        device = self.torch_device
        if device is None or device.type != "cuda":
            return
        try:
            torch.cuda.empty_cache()
        except Exception:  # a broken CUDA context: the job's own error already says why
            logger.exception("torch.cuda.empty_cache() failed")

    def _eta_of(self, ticket: QueuedWork) -> float | None:
        return self.step_times.remaining(ticket.steps_left, ticket.guided)
