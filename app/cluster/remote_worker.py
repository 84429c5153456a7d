"""What the ingress's routes call instead of the local worker: try-on replicas behind Serve.

The routes ask a worker for three things: `admission()` (refuse at once when nothing can serve),
`size` (the working size uploads are fitted to) and `run(job, disconnected=...)`. This class gives
the same three over a Serve handle, so the routes are the single process's, unchanged. It learns
which replicas are up from their reports in Redis (`registry`), polled in the background so that
/health and admission never wait on the network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from app.cluster.redis_client import describe_failure
from app.cluster.registry import HEARTBEAT_S, ReplicaRegistry, ReplicaReport
from app.errors import (
    ClientDisconnectedError,
    GPUBusyError,
    ModelLoadFailedError,
    ModelsLoadingError,
    ServiceError,
    WorkerStoppedError,
)
from app.worker import TryOnJob, TryOnOutcome

logger = logging.getLogger(__name__)

REPLICA_GONE = (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError)


class RemoteWorker:
    """Try-on replicas seen as one worker: same admission, size and run as `InferenceWorker`."""

    def __init__(
        self, try_on: DeploymentHandle, registry: ReplicaRegistry, *, queue_capacity: int
    ) -> None:
        self._try_on = try_on
        self._registry = registry
        self.queue_capacity = queue_capacity  # Serve's max_queued_requests, per ingress replica
        self._in_flight = 0  # try-ons this ingress replica has handed to Serve, not yet answered
        self.replicas: list[ReplicaReport] = []
        self.redis_status = "connecting"
        self.started_at = time.monotonic()
        self._watcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle (the app's lifespan) ----------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._watcher = self._loop.create_task(self._watch_replicas())

    def stop(self) -> None:
        """Called from the thread pool at shutdown: cancel the watcher on its own loop."""
        if self._loop is not None and self._watcher is not None:
            self._loop.call_soon_threadsafe(self._watcher.cancel)

    async def _watch_replicas(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(HEARTBEAT_S / 2)

    async def refresh(self) -> None:
        """Read the replicas' reports; while Redis is down keep the last ones and say why."""
        try:
            self.replicas = await self._registry.read()
        except Exception as exc:
            self.redis_status = describe_failure(exc)
        else:
            self.redis_status = "ok"

    # -- what the routes use ---------------------------------------------------------------------

    @property
    def state(self) -> str:
        """ok while any replica can serve; error when every replica failed; else loading."""
        statuses = {replica["status"] for replica in self.replicas}
        if "ok" in statuses:
            return "ok"
        if statuses == {"error"}:
            return "error"
        return "loading"

    @property
    def inferences_served(self) -> int:
        return sum(replica["inferences_served"] for replica in self.replicas)

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    @property
    def queue_depth(self) -> int:
        """This ingress replica's calls that no ready replica can be running (an estimate:
        Serve does not expose its queue)."""
        ready = sum(replica["status"] == "ok" for replica in self.replicas)
        return max(0, self._in_flight - ready)

    def ready_replica(self) -> ReplicaReport | None:
        return next((replica for replica in self.replicas if replica["status"] == "ok"), None)

    @property
    def size(self) -> tuple[int, int]:
        """The working size every replica loaded (one config for all); only once one is ready."""
        replica = self.ready_replica()
        assert replica is not None and replica["size"] is not None, "no replica is ready"
        width, height = replica["size"]
        return width, height

    def unavailable(self) -> ServiceError | None:
        """Why no try-on can be served at all (no replica ready yet, or all failed), or None."""
        state = self.state
        if state == "loading":
            return ModelsLoadingError("no try-on replica is ready yet")
        if state == "error":
            reason = next(r["error"] for r in self.replicas if r["error"]) or "unknown error"
            return ModelLoadFailedError(reason)
        return None

    def check_accepting(self) -> None:
        if (reason := self.unavailable()) is not None:
            raise reason

    @contextmanager
    def admission(self) -> Iterator[None]:
        """Refuse before a byte is read when no replica can serve. The queue bound itself is
        Serve's `max_queued_requests`, checked when `run` hands the job over."""
        self.check_accepting()
        yield

    async def run(
        self, job: TryOnJob, *, disconnected: Callable[[], Awaitable[Any]]
    ) -> TryOnOutcome:
        """Hand `job` to a free try-on replica (Serve picks it), wait for the outcome.

        A client that goes away cancels the call (a queued job never reaches a replica). Raises
        GPUBusyError past the queue bound, WorkerStoppedError when the replica died mid-call, and
        what the replica's worker raised (GPUOutOfMemoryError, InvalidInputError, ...).
        """
        self.check_accepting()
        self._in_flight += 1
        response = self._try_on.infer.remote(job)
        outcome = asyncio.ensure_future(unwrap(response))
        watcher = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({outcome, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not outcome.done():
                response.cancel()
                outcome.cancel()
                raise ClientDisconnectedError("the client disconnected while its try-on waited")
            return outcome.result()
        finally:
            self._in_flight -= 1
            watcher.cancel()
            if not outcome.done():  # this request was cancelled (shutdown): so is the call
                response.cancel()
                outcome.cancel()


async def unwrap(response: Any) -> TryOnOutcome:
    """Await a replica's answer; turn Serve's and Ray's failures into the service's errors."""
    try:
        return await response
    except BackPressureError as exc:
        raise GPUBusyError("every try-on replica is busy and the wait queue is full") from exc
    except RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, Exception) and not isinstance(cause, RayActorError):
            raise cause from None  # the replica's own error (503 out of memory, 422, ...)
        raise WorkerStoppedError("the try-on replica failed during the request") from exc
    except REPLICA_GONE as exc:
        logger.warning("a try-on replica stopped during a request: %s", exc)
        raise WorkerStoppedError("the try-on replica stopped during the request") from exc
