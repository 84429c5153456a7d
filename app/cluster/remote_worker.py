"""What the ingress's routes and job runner use instead of the local worker: try-on replicas
behind Serve, through the same `Worker` contract (app/inference/contract.py), so the routes, the
runner, /health and /metrics are the single process's, unchanged. Its status extends the single
process's with what only the cluster knows: the replicas and Redis (`ClusterStatus`).

- Synchronous door: one Serve call per request; past Serve's queue bound (`max_queued_requests`)
  the 503 `gpu_busy` envelope; a client that leaves cancels the call (a queued one never runs).
- Job door: jobs wait here, in front of Serve, up to `max_queued_jobs` per ingress replica, in
  the single process's fair turns (one lane per client, taken in turn: app/inference/waiting.py),
  and are handed to Serve one per ready try-on replica at a time (a back-pressure refusal means
  "not yet"): a client with 40 jobs delays another client's job here by at most one of its own.
  Each runs as a streaming call whose progress events go to the job's listener (the runner
  writes them into the shared store); cancelling stops it at its next step. A replica that dies
  mid-job: the job runs once more on another replica (its step count never goes back), then
  fails `worker_stopped`.

Which replicas are up comes from their reports in Redis (`registry`), read in the background, so
admission and /health never wait on the network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from app.cluster.call_failures import ReplicaStopped, outcome_name, unwrap
from app.cluster.registry import HEARTBEAT_S, ReplicaRegistry, ReplicaReport, ReplicaView
from app.cluster.status import ClusterStatus, pair, summed_gpu_memory
from app.edge.errors import (
    ClientDisconnectedError,
    GPUBusyError,
    ModelLoadFailedError,
    ModelsLoadingError,
    ServiceError,
    ShuttingDownError,
    WorkerStoppedError,
)
from app.edge.request_id import current_request_id
from app.inference.contract import (
    Door,
    InferenceListener,
    QueuedWork,
    TryOnJob,
    TryOnOutcome,
    WorkerState,
    WorkListener,
)
from app.inference.estimates import StepTimes
from app.inference.waiting import WaitingLine
from catvton.errors import InferenceCanceledError

logger = logging.getLogger(__name__)

BACKPRESSURE_RETRY_S = 0.25  # a job waiting for room in Serve's queue asks again this often
JOB_ATTEMPTS = 2  # a job whose replica died runs once more


class RemoteWorker:
    """Try-on replicas seen as one `Worker`."""

    def __init__(
        self,
        try_on: DeploymentHandle,
        registry: ReplicaRegistry,
        *,
        queue_capacity: int,
        max_queued_jobs: int,
    ) -> None:
        self._try_on = try_on
        self._view = ReplicaView(registry)
        self.queue_capacity = queue_capacity  # Serve's max_queued_requests, per ingress replica
        self.max_queued_jobs = max_queued_jobs
        self._stopping = False  # Serve is stopping this ingress replica (SharedJobRunner.drain)
        self.started_at = time.monotonic()
        self._in_flight = 0  # synchronous calls handed to Serve, not yet answered
        # Jobs not yet handed to Serve, in fair turns. Positions only: the step times are the
        # replicas', so no ETA is told here (it stays None).
        self._waiting_jobs = WaitingLine(StepTimes())
        self._job_tasks: dict[int, asyncio.Task[None]] = {}  # handed to Serve, by id(work)
        self._room_for_jobs = asyncio.Event()  # set when a job may be handed to Serve
        self._watcher: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[InferenceListener] = []
        self._receiving: dict[Door, int] = {"sync": 0, "job": 0}  # admitted, still uploading

    # -- lifecycle (the app's lifespan) ----------------------------------------------------------

    def add_listener(self, listener: InferenceListener) -> None:
        """Hears each inference's outcome as the ingress learns it (its /metrics counts them)."""
        self._listeners.append(listener)

    def _tell(self, outcome: str, stage_seconds: Mapping[str, float]) -> None:
        for listener in self._listeners:
            listener(outcome, stage_seconds)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._watcher = self._loop.create_task(self._watch_replicas())
        self._dispatcher = self._loop.create_task(self._hand_jobs_to_serve())

    def stop(self, timeout: float = 5.0) -> None:
        """Called from the thread pool at shutdown: cancel the replica watcher and the job
        dispatcher on their own loop (nothing here runs on a thread, so there is nothing to wait
        `timeout` for)."""
        if self._loop is not None:
            for task in (self._watcher, self._dispatcher):
                if task is not None:
                    self._loop.call_soon_threadsafe(task.cancel)

    async def _watch_replicas(self) -> None:
        while True:
            await self._view.refresh()
            self._room_for_jobs.set()  # a replica that became ready takes a job
            await asyncio.sleep(HEARTBEAT_S / 2)

    # -- state, for admission, /health and /metrics ------------------------------------------------

    def status(self) -> ClusterStatus:
        replicas = tuple(self.replicas)
        ready = self.ready_replica()
        state = self._state()
        reason = ShuttingDownError() if self.draining else self._unavailable()
        busy = any(replica["busy"] for replica in replicas)
        return ClusterStatus(
            state=state,
            draining=self.draining,
            reason=reason,
            error=reason.message if reason is not None and state == "error" else None,
            model_loaded=ready is not None,
            device=ready["device"] if ready else None,
            dtype=ready["dtype"] if ready else None,
            size=pair(ready["output_size"]) if ready else None,
            working_size=pair(ready["size"]) if ready else None,
            queue_depth=self._queue_depth(),
            receiving=sum(self._receiving.values()),
            queue_capacity=self.queue_capacity,
            busy=busy,
            idle=not (
                self._in_flight
                or self._job_tasks
                or len(self._waiting_jobs)
                or any(self._receiving.values())
            ),
            inferences_served=sum(replica["inferences_served"] for replica in replicas),
            gpu=summed_gpu_memory(replicas),
            uptime_s=round(time.monotonic() - self.started_at, 1),
            replicas=replicas,
            redis=self._view.redis_status,
        )

    def _state(self) -> WorkerState:
        """ok while any replica can serve; error when every replica failed; else loading."""
        statuses = {replica["status"] for replica in self.replicas}
        if "ok" in statuses:
            return "ok"
        if statuses == {"error"}:
            return "error"
        return "loading"

    def _queue_depth(self) -> int:
        """Work of this ingress replica that no replica runs yet (an estimate: Serve does not
        expose its own queue)."""
        handed = self._in_flight + len(self._job_tasks)
        return max(0, handed - self._ready_count()) + len(self._waiting_jobs)

    def _ready_count(self) -> int:
        return sum(replica["status"] == "ok" for replica in self.replicas)

    @property
    def replicas(self) -> list[ReplicaReport]:
        return self._view.replicas

    def ready_replica(self) -> ReplicaReport | None:
        return next((replica for replica in self.replicas if replica["status"] == "ok"), None)

    @property
    def size(self) -> tuple[int, int]:
        """The working size every replica loaded (one config for all); only once one is ready."""
        replica = self.ready_replica()
        assert replica is not None and replica["size"] is not None, "no replica is ready"
        return pair(replica["size"])

    @property
    def model_identity(self) -> str:
        replica = self.ready_replica()
        return replica["model_identity"] if replica else ""

    def _unavailable(self) -> ServiceError | None:
        """Why no try-on can be served at all (no replica ready yet, or all failed), or None."""
        state = self._state()
        if state == "loading":
            return ModelsLoadingError("no try-on replica is ready yet")
        if state == "error":
            reason = next((r["error"] for r in self.replicas if r["error"]), "unknown error")
            return ModelLoadFailedError(reason or "unknown error")
        return None

    @property
    def draining(self) -> bool:
        """Serve stops this ingress replica, or the whole service drains (a signal to
        `python -m app.cluster`, seen in Redis)."""
        return self._stopping or self._view.draining

    def begin_drain(self) -> None:
        """Take no new work (503 shutting_down); what this replica holds goes on."""
        self._stopping = True

    def check_accepting(self, door: Door = "sync") -> None:
        if self.draining:
            raise ShuttingDownError()
        if (reason := self._unavailable()) is not None:
            raise reason
        if door == "job" and (queued := self._waiting_jobs.waiting("job")) >= self.max_queued_jobs:
            raise GPUBusyError(f"{queued} jobs are already queued")

    @contextmanager
    def admission(self, door: Door = "sync") -> Iterator[None]:
        """Refuse before a byte is read when no replica can serve (or, for a job, when this
        ingress's job queue is full). The synchronous bound is Serve's, checked by `run`. While
        admitted, a request counts as `receiving` (this ingress replica's uploads)."""
        self.check_accepting(door)
        self._receiving[door] += 1
        try:
            yield
        finally:
            self._receiving[door] -= 1

    # -- the synchronous door --------------------------------------------------------------------

    async def run(
        self, job: TryOnJob, *, disconnected: Callable[[], Awaitable[Any]]
    ) -> TryOnOutcome:
        """Hand `job` to a free try-on replica (Serve picks it), wait for the outcome.

        Raises GPUBusyError past the queue bound, WorkerStoppedError when the replica died, and
        what the replica's worker raised (GPUOutOfMemoryError, InvalidInputError, ...).
        """
        self.check_accepting()
        self._in_flight += 1
        response = self._try_on.infer.remote(job, current_request_id())
        outcome = asyncio.ensure_future(self._answer(response))
        watcher = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({outcome, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not outcome.done():
                raise ClientDisconnectedError("the client disconnected while its try-on waited")
            return outcome.result()
        finally:
            self._in_flight -= 1
            watcher.cancel()
            if not outcome.done():  # the client left, or this request was cancelled: so is the call
                response.cancel()
                outcome.cancel()

    async def _answer(self, response: Any) -> TryOnOutcome:
        try:
            outcome = await response
        except BackPressureError as exc:
            raise GPUBusyError("every try-on replica is busy and the wait queue is full") from exc
        except Exception as exc:
            error = unwrap(exc)
            self._tell(outcome_name(error), {})
            if isinstance(error, ReplicaStopped):
                logger.warning("a try-on replica stopped during a request: %s", exc)
                raise WorkerStoppedError("the try-on replica stopped during the request") from exc
            raise error from None
        self._tell("ok", outcome.timings)
        return outcome

    # -- the job door ----------------------------------------------------------------------------

    def submit(self, job: TryOnJob, listener: WorkListener) -> QueuedWork:
        """Queue a job here and return at once; it reaches a replica in its client's turn."""
        if (reason := self._unavailable()) is not None:
            raise reason
        loop = asyncio.get_running_loop()
        work = QueuedWork(
            job, loop, loop.create_future(), loop.create_future(), door="job", listener=listener
        )
        self._waiting_jobs.add(work)
        self._room_for_jobs.set()
        return work

    def cancel(self, work: QueuedWork) -> bool:
        """Not yet handed to Serve: withdrawn (True). Handed: the call is cancelled (queued in
        Serve, it never runs; running, the replica stops it at its next step) and its outcome
        raises InferenceCanceledError (False)."""
        work.stop.set()
        if self._waiting_jobs.remove(work):
            work.refuse(InferenceCanceledError("canceled while queued"))
            return True
        task = self._job_tasks.get(id(work))
        if task is not None:
            task.cancel()
        if not work.done.done():
            work.done.set_exception(InferenceCanceledError("canceled while running"))
        return False

    async def _hand_jobs_to_serve(self) -> None:
        """Hand waiting jobs to Serve in their turns, at most one per ready replica at a time, so
        the order is decided here (Serve's own queue is first come, first served)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._room_for_jobs.wait()
            self._room_for_jobs.clear()
            while len(self._waiting_jobs) and len(self._job_tasks) < max(1, self._ready_count()):
                work = self._waiting_jobs.take_next()  # in its submit's context (request id)
                self._job_tasks[id(work)] = loop.create_task(
                    self._drive(work), context=work.context
                )

    async def _drive(self, work: QueuedWork) -> None:
        """Feed the job to Serve (waiting while it is full), stream its progress, settle it."""
        try:
            for attempt in range(1, JOB_ATTEMPTS + 1):
                try:
                    outcome = await self._stream(work)
                except ReplicaStopped as exc:
                    if attempt == JOB_ATTEMPTS:
                        raise WorkerStoppedError(
                            "the try-on replica stopped twice during this job"
                        ) from exc
                    logger.warning("a try-on replica stopped during a job; running it again")
                    continue
                self._tell("ok", outcome.timings)
                if not work.done.done():
                    work.done.set_result(outcome)
                return
        except asyncio.CancelledError:
            return  # `cancel` settled the work
        except Exception as exc:
            self._tell(outcome_name(exc), {})
            if not work.done.done():
                work.done.set_exception(exc)
        finally:
            self._job_tasks.pop(id(work), None)
            self._room_for_jobs.set()

    async def _stream(self, work: QueuedWork) -> TryOnOutcome:
        """One attempt: events until the outcome. Raises ReplicaStopped, the replica's errors."""
        steps_before = work.steps_done  # a second attempt reports steps past these only
        while True:
            call = self._try_on.options(stream=True).infer_job
            response = call.remote(work.job, current_request_id())  # the submit's id
            assert isinstance(response, DeploymentResponseGenerator)  # stream=True asked for one
            try:
                async for name, *args in response:
                    if name == "outcome":
                        return args[0]
                    self._started(work)
                    if name in ("on_step", "on_preview"):
                        done = args[0]
                        if done <= steps_before:
                            continue
                        if name == "on_step":
                            work.steps_done = done
                    if work.listener is not None:
                        getattr(work.listener, name)(*args)
            except BackPressureError:
                await asyncio.sleep(BACKPRESSURE_RETRY_S)  # Serve is full: still queued here
                continue
            except asyncio.CancelledError:
                response.cancel()
                raise
            except Exception as exc:
                raise unwrap(exc) from None
            raise ReplicaStopped("the replica's stream ended without an outcome")

    @staticmethod
    def _started(work: QueuedWork) -> None:
        if not work.started.done():
            work.started.set_result(None)
