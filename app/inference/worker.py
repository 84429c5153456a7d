"""The scheduler: the one device thread's queue, admission, turns, positions, cancel and drain.

One thread owns the device for the life of the process: it loads the models (app/inference/
device.py; meanwhile /health says "loading", and a failed load leaves a reason, not a dead
process), then takes try-ons one at a time from a bounded queue. One thread rather than a lock:
two inferences never overlap, and a request that cannot be served soon is told so at once (503).
Both doors share the queue: a synchronous request awaits its work (`run`), a job hands it in and
leaves (`submit`), hears of it through a `WorkListener` and stops it with `cancel`. This is the
single process's `Worker` (app/inference/contract.py); one try-on itself is `Models.predict`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from app.edge.errors import (
    ClientDisconnectedError,
    GPUBusyError,
    ShuttingDownError,
    WorkerStoppedError,
)
from app.inference.contract import (
    Door,
    InferenceListener,
    QueuedWork,
    TryOnJob,
    TryOnOutcome,
    WorkerStatus,
    WorkListener,
)
from app.inference.device import Device, read_gpu_memory
from app.inference.models import Models, ProgressCallback, load_models
from app.inference.waiting import WaitingLine
from app.settings import Settings
from catvton.errors import InferenceCanceledError

logger = logging.getLogger(__name__)


class InferenceWorker:
    """Loads the models on its own thread, then serves try-ons there, one at a time.

    A synchronous request is refused when `queue_size` synchronous requests wait, and waits at
    most `queue_timeout` s; up to `max_queued_jobs` jobs may wait as long as it takes: each door
    counts its own. Work is taken client by client in turn (app/inference/waiting.py).
    """

    def __init__(
        self,
        load: Callable[[ProgressCallback], Models],
        *,
        queue_size: int,
        queue_timeout: float,
        max_queued_jobs: int,
        preview_every: int,
    ) -> None:
        self.queue_size = queue_size
        self.preview_every = preview_every  # jobs only: the synchronous door never previews
        self.queue_timeout = queue_timeout
        self.max_queued_jobs = max_queued_jobs
        self.device = Device(load)
        self.started_at = time.monotonic()
        self._line = WaitingLine(self.device.step_times)
        # Admitted requests still reading or decoding their uploads, by door.
        self._receiving: dict[Door, int] = {"sync": 0, "job": 0}
        self._stopping = False
        self._draining = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._own_device, name="device-worker", daemon=True)

    @classmethod
    def from_settings(
        cls, settings: Settings, load: Callable[[ProgressCallback], Models] | None = None
    ) -> InferenceWorker:
        """The worker `settings` describe; `load` defaults to loading the models they name."""
        return cls(
            load or partial(load_models, settings),
            queue_size=settings.queue_size,
            queue_timeout=settings.queue_timeout,
            max_queued_jobs=settings.max_queued_jobs,
            preview_every=settings.preview_every,
        )

    # -- lifecycle (lifespan) ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def add_listener(self, listener: InferenceListener) -> None:
        self.device.add_listener(listener)

    def begin_drain(self) -> None:
        """Admit no new request (503 shutting_down); those admitted, queued or running go on."""
        with self._condition:
            self._draining = True

    def stop(self, timeout: float = 5.0) -> None:
        """Fail what waits or runs with shutting_down, then give the thread `timeout` seconds.
        The running inference cannot be interrupted: its client is answered now, and the device
        thread (a daemon) ends with the process. A second call returns at once."""
        with self._condition:
            if self._stopping:
                return
            self._stopping = self._draining = True
            refused, running = self._line.clear(), self._line.running
            self._condition.notify_all()
        for ticket in refused:
            ticket.refuse(ShuttingDownError("the request was still queued"))
        if running is not None:
            running.resolve(running.done, error=ShuttingDownError("the inference did not finish"))
        self._thread.join(timeout)

    def status(self) -> WorkerStatus:
        device, models = self.device, self.device.models
        pipeline = models.pipeline if models else None
        with self._condition:
            queue_depth, running = len(self._line), self._line.running
            receiving = sum(self._receiving.values())
        return WorkerStatus(
            state=device.state,
            draining=self._draining,
            reason=ShuttingDownError() if self._draining else self.device.unavailable(),
            error=device.error,
            model_loaded=models is not None,
            device=str(pipeline.device) if pipeline else None,
            dtype=str(pipeline.dtype).removeprefix("torch.") if pipeline else None,
            size=models.output_size if models else None,
            working_size=pipeline.size if pipeline else None,
            queue_depth=queue_depth,
            receiving=receiving,
            queue_capacity=self.queue_size,
            busy=running is not None,
            idle=running is None and not queue_depth and not receiving,
            inferences_served=device.inferences_served,
            gpu=read_gpu_memory(device.torch_device),
            uptime_s=round(time.monotonic() - self.started_at, 1),
        )

    # -- the event loop's side -----------------------------------------------------------------

    @property
    def model_identity(self) -> str:
        """Weights, precision, device and size of the loaded model ("" before it loaded)."""
        return self.device.identity

    @property
    def size(self) -> tuple[int, int]:
        """The working size (W, H); only once loaded (`check_accepting` passed)."""
        assert self.device.models is not None, "models are not loaded"
        return self.device.models.pipeline.size

    def check_accepting(self, door: Door = "sync") -> None:
        """Raise the 503 a new request would get now (loading, failed, stopping or full)."""
        if self._stopping:
            raise ShuttingDownError()
        if (reason := self.device.unavailable()) is not None:
            raise reason
        # Separate doors: queued jobs never take the synchronous door's places, nor the reverse.
        if door == "job":
            jobs = self._receiving["job"] + self._line.waiting("job")
            if jobs >= self.max_queued_jobs:
                raise GPUBusyError(f"{jobs} jobs are already queued")
            return
        ahead = self._receiving["sync"] + self._line.waiting("sync")
        if ahead + (self._line.running is not None) > self.queue_size:
            raise GPUBusyError(f"{ahead} requests are already waiting")

    @contextmanager
    def admission(self, door: Door = "sync") -> Iterator[None]:
        """Hold a place in the queue while a request reads and decodes its uploads.

        Raises the 503s of `check_accepting` before a byte is read. Requests still receiving count
        toward `queue_size`, so a burst cannot decode dozens of photos at once only to be refused
        at the queue; leaving the block and calling `run` happen in one event-loop step, so the
        place passes to the queued job without a gap.
        """
        with self._condition:
            if self._draining:
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

        `disconnected` resolves when the client goes away: work whose client is gone is refused
        or dropped from the queue, and running work stops at its next step (as a job's cancel),
        so the next one starts at once. Raises the 503s of `check_accepting`, GPUBusyError after
        `queue_timeout` s of waiting, GPUOutOfMemoryError, ClientDisconnectedError, and what the
        pipeline raised (InvalidInputError for a bad input).
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
            if not ticket.done.done():
                await asyncio.wait({ticket.done, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not ticket.done.done():  # the client hung up while its inference ran
                raise ClientDisconnectedError("the client disconnected while its try-on ran")
            return await ticket.done
        finally:
            watcher.cancel()
            if not ticket.started.done():  # cancelled (server shutdown): free the slot
                self._withdraw(ticket)
            elif not ticket.done.done():  # a hang-up, or the caller cancelled (a replica's
                ticket.abandon()  # Serve call the ingress dropped): stop at the next step

    def submit(self, job: TryOnJob, listener: WorkListener) -> QueuedWork:
        """Queue a job's work and return at once (see `Worker.submit`).

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
        ticket = QueuedWork(job, loop, loop.create_future(), loop.create_future(), door, listener)
        ticket.preview_every = self.preview_every if door == "job" else 0
        with self._condition:
            if door == "sync":
                self.check_accepting()
            elif self._stopping or self.device.unavailable() is not None:
                self.check_accepting(door)  # raises the reason
            self._line.add(ticket)
            self._condition.notify()
        return ticket

    def _withdraw(self, ticket: QueuedWork) -> bool:
        """Take a waiting ticket out of the queue; False if the worker already took it."""
        with self._condition:
            return self._line.remove(ticket)

    # -- the device thread -----------------------------------------------------------------------

    def _own_device(self) -> None:
        try:
            if self.device.load():
                self._serve_forever()
        except BaseException as exc:
            # Only a bug, or a load that raised a BaseException, gets here (`Device.serve`
            # settles every ticket). Say so in /health and refuse what waits, rather than report
            # "ok" while requests wait for a dead thread.
            with self._condition:
                reason = self.device.fail(exc)
                refused, running = self._line.clear(), self._line.running
                self._line.running = None
            for ticket in refused:
                ticket.refuse(WorkerStoppedError(reason))
            if running is not None:
                running.resolve(running.done, error=WorkerStoppedError(reason))

    def _serve_forever(self) -> None:
        while True:
            with self._condition:
                while not self._line and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
                ticket = self._line.take_next()
            ticket.context.run(self.device.serve, ticket)
            with self._condition:
                self._line.running = None
