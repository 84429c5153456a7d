"""An ingress replica's job runner when Serve stops the replica (a rolling update, a scale-down):
its jobs finish within the drain timeout, or fail `shutting_down`, recorded in the shared store.

The real parts, in one process: the single process's `InferenceWorker` on tiny weights (the same
`Worker` contract the ingress's remote worker has), the Redis job store on a real
redis-server, and the runner's lifespan (`running()`) entered and left as Serve's would be.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from http_helpers import tiny_settings
from PIL import Image
from redis.asyncio import Redis

from app.cluster.redis_jobs import RedisJobStore
from app.cluster.shared_jobs import LEASE_PREFIX, SharedJobRunner
from app.edge.errors import ShuttingDownError
from app.edge.schemas import TryOnOptions
from app.inference.contract import TryOnJob
from app.inference.flow import StageTimer
from app.inference.worker import InferenceWorker
from app.jobs.records import JobRecord
from app.media.intake import TryOnImages

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def worker(tiny_weights: Path) -> AsyncIterator[InferenceWorker]:
    settings = tiny_settings(tiny_weights, queue_size=4, max_queued_jobs=4)
    loaded = InferenceWorker.from_settings(settings)
    loaded.start()
    while loaded.status().state == "loading":
        await asyncio.sleep(0.05)
    assert loaded.status().state == "ok", loaded.status().error
    yield loaded
    await asyncio.to_thread(loaded.stop)


def try_on(worker: InferenceWorker, steps: int) -> TryOnJob:
    width, height = worker.size
    person = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    options = TryOnOptions(num_inference_steps=steps, guidance_scale=1.0, seed=1)
    return TryOnJob(images=TryOnImages(person, person.copy(), mask), options=options)


async def submit(runner: SharedJobRunner, worker: InferenceWorker, steps: int) -> JobRecord:
    record = runner.new_record(
        client="phone-app",
        request_id=f"drain-{steps}",
        options=TryOnOptions(num_inference_steps=steps),
        idempotency_key=None,
        fingerprint=None,
    )
    stored, created = await runner.submit(
        record, try_on(worker, steps), timer=StageTimer(), cache_key=None
    )
    assert created
    return stored


def new_runner(
    redis: Redis, worker: InferenceWorker, replica_id: str, drain_timeout: float
) -> tuple[SharedJobRunner, RedisJobStore]:
    store = RedisJobStore(redis, ttl_s=900, max_bytes=10**8, max_jobs=100, max_jobs_per_client=100)
    return SharedJobRunner(redis, replica_id, store, worker, drain_timeout=drain_timeout), store


async def test_a_stopping_replica_finishes_its_jobs_within_the_drain_timeout(
    worker: InferenceWorker, redis_clients: Callable[[], Redis]
) -> None:
    runner, store = new_runner(redis_clients(), worker, "ingress-a", drain_timeout=120)
    async with runner.running():
        jobs = [await submit(runner, worker, steps) for steps in (10, 12)]  # one runs, one waits
    for job in jobs:
        assert (await store.get(job.job_id)).status == "succeeded"
    with pytest.raises(ShuttingDownError), worker.admission("job"):
        pass  # the drain takes no new work


async def test_what_the_drain_timeout_does_not_cover_fails_shutting_down(
    worker: InferenceWorker, redis_clients: Callable[[], Redis]
) -> None:
    redis = redis_clients()
    runner, store = new_runner(redis, worker, "ingress-b", drain_timeout=0.2)
    async with runner.running():
        job = await submit(runner, worker, 100)
        while (await store.get(job.job_id)).status != "running":
            await asyncio.sleep(0.02)
    final = await store.get(job.job_id)
    assert final.status == "failed" and final.error is not None, final
    assert final.error.code == "shutting_down"
    assert await redis.exists(LEASE_PREFIX + "ingress-b") == 0  # its lease went with it
