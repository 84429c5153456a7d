"""A try-on replica: the single process's worker and loading code, inside a Serve deployment.

Each replica is one `InferenceWorker` (one device owner, models loaded once on its own thread by
`app.worker.load_models`), so a replica behaves exactly like the single process's worker: Serve's
`max_ongoing_requests: 1` hands it one try-on at a time, the queue in front of it is Serve's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from functools import partial
from typing import Any

from ray import serve

from app.cluster.redis_client import connect
from app.cluster.registry import HEARTBEAT_S, ReplicaRegistry, ReplicaReport
from app.settings import Settings
from app.worker import InferenceWorker, TryOnJob, TryOnOutcome, load_models

logger = logging.getLogger(__name__)

LOAD_POLL_S = 0.1


async def never() -> None:
    """A replica has no client connection to watch: the ingress cancels the call instead."""
    await asyncio.get_running_loop().create_future()


class TryOnReplica:
    """Loads the models once, then serves `infer` calls from the ingress, one at a time."""

    async def __init__(self, options: dict[str, Any]) -> None:
        settings = Settings(**options)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.demo_dir = None
        if settings.demo:
            # Replicas on one machine must not write the same tiny files while another reads them.
            self.demo_dir = settings.demo_dir / f"replica-{self.replica_id}"
            settings = settings.model_copy(update={"demo_dir": self.demo_dir})
        self.worker = InferenceWorker(
            partial(load_models, settings), queue_size=1, queue_timeout=settings.queue_timeout
        )
        self.worker.start()
        assert settings.redis_url, "the cluster needs --redis-url"
        self.registry = ReplicaRegistry(connect(settings.redis_url))
        self.heartbeat = asyncio.create_task(self.report_forever())
        # Serve routes requests to a replica once its constructor returns: only after the load,
        # so a replica still loading never answers "loading" while another one is ready.
        while self.worker.state == "loading":
            await asyncio.sleep(LOAD_POLL_S)

    async def infer(self, job: TryOnJob) -> TryOnOutcome:
        """Run one try-on; raises what `InferenceWorker.run` raises (the ingress maps it)."""
        return await self.worker.run(job, disconnected=never)

    def check_health(self) -> None:
        """Serve restarts a replica whose models failed to load (or whose device thread died)."""
        if self.worker.state == "error":
            raise RuntimeError(f"try-on replica unusable: {self.worker.error}")

    def report(self) -> ReplicaReport:
        models = self.worker.models
        return ReplicaReport(
            id=self.replica_id,
            status=self.worker.state,
            error=self.worker.error,
            inferences_served=self.worker.inferences_served,
            busy=self.worker.busy,
            pid=os.getpid(),
            size=list(models.pipeline.size) if models else None,
            device=str(models.pipeline.device) if models else None,
            dtype=str(models.pipeline.dtype).removeprefix("torch.") if models else None,
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
        if self.demo_dir is not None:
            shutil.rmtree(self.demo_dir, ignore_errors=True)
