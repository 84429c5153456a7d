"""The Redis job store and result cache keep the in-memory ones' contract (app/jobs/store.py,
app/cache/results.py) on a real redis-server, also between two store objects (two replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from test_jobs_store import Clock, make_record, result_of

from app.access.limits import RateLimits, limits_storage, parse_rate_limit
from app.cluster.redis_client import connect
from app.cluster.redis_jobs import RedisJobStore
from app.cluster.redis_results import RedisResultCache
from app.errors import JobExpiredError, JobNotFoundError
from app.jobs.records import JobRecord
from app.jobs.store import TOMBSTONE_S

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


def new_store(redis: Redis, clock: Clock, **caps: int) -> RedisJobStore:
    options = {"ttl_s": 900, "max_bytes": 1000, "max_jobs": 10, **caps}
    return RedisJobStore(redis, clock=clock, **options)


async def test_a_record_is_stored_updated_and_seen_by_another_replica(redis: Redis) -> None:
    clock = Clock()
    store, other = new_store(redis, clock), new_store(redis, clock)
    record, created = await store.create(make_record(clock))
    assert created
    updated = await other.update(record.job_id, status="running", stage="denoising", step=3)
    assert (updated.status, updated.step, updated.version) == ("running", 3, 1)
    assert await store.get(record.job_id) == updated
    finished = await store.finish(record.job_id, result_of(10), status="succeeded", stage=None)
    assert finished.expires_at == clock.now + 900
    result = await other.result(record.job_id)
    assert result is not None and result.image.data == b"i" * 10 and result.seed == 1


async def test_unknown_ids_raise_not_found(redis: Redis) -> None:
    store = new_store(redis, Clock())
    for call in (store.get, store.result, store.delete):
        with pytest.raises(JobNotFoundError):
            await call("nope")
    with pytest.raises(JobNotFoundError):
        await store.update("nope", step=1)


async def test_one_idempotency_key_makes_one_job_per_client_across_replicas(redis: Redis) -> None:
    clock = Clock()
    store, other = new_store(redis, clock), new_store(redis, clock)
    first = make_record(clock, idempotency_key="k", fingerprint="a")
    second = make_record(clock, idempotency_key="k", fingerprint="b")
    results = await asyncio.gather(store.create(first), other.create(second))
    assert sorted(created for _, created in results) == [False, True]
    winner = next(record for record, created in results if created)
    assert all(record == winner for record, _ in results)
    assert (await store.create(make_record(clock, idempotency_key="k", client="10.0.0.2")))[1]
    await store.delete(winner.job_id)  # the key lives as long as the record
    assert (await other.create(make_record(clock, idempotency_key="k")))[1]


async def test_finished_jobs_expire_then_answer_410_for_a_day_then_404(redis: Redis) -> None:
    clock = Clock()
    store = new_store(redis, clock)
    record, _ = await store.create(make_record(clock))
    await store.finish(record.job_id, result_of(10), status="succeeded")
    clock.now += 899
    await store.get(record.job_id)
    clock.now += 2
    with pytest.raises(JobExpiredError):
        await store.get(record.job_id)
    assert await store.result_bytes() == 0
    clock.now += TOMBSTONE_S
    with pytest.raises(JobNotFoundError):
        await store.get(record.job_id)


async def test_the_caps_evict_the_oldest_finished_never_an_active_job(redis: Redis) -> None:
    clock = Clock()
    store = new_store(redis, clock, max_bytes=250, max_jobs=5)
    active, _ = await store.create(make_record(clock))
    finished = []
    for _ in range(3):
        record, _ = await store.create(make_record(clock))
        await store.finish(record.job_id, result_of(100), status="succeeded")
        finished.append(record.job_id)
        clock.now += 1
    with pytest.raises(JobExpiredError):
        await store.get(finished[0])
    assert await store.result_bytes() == 200
    big, _ = await store.create(make_record(clock))
    await store.finish(big.job_id, result_of(1000), status="succeeded")
    assert (await store.result(big.job_id)).nbytes == 1000
    for job_id in finished[1:]:
        with pytest.raises(JobExpiredError):
            await store.get(job_id)
    assert (await store.get(active.job_id)).status == "queued"
    for _ in range(5):  # the count cap: only finished jobs go, so active ones pile up past it
        await store.create(make_record(clock))
    assert (await store.get(active.job_id)).status == "queued"
    assert await store.count() == 6
    assert await store.counts() == {"queued": 6}  # the finished one made room


async def test_deleted_jobs_are_forgotten_at_once(redis: Redis) -> None:
    clock = Clock()
    store = new_store(redis, clock)
    record, _ = await store.create(make_record(clock))
    await store.finish(record.job_id, result_of(10), status="succeeded")
    await store.delete(record.job_id)
    with pytest.raises(JobNotFoundError):
        await store.get(record.job_id)
    assert await store.result_bytes() == 0


async def test_watch_on_one_replica_sees_the_changes_another_makes(redis: Redis) -> None:
    clock = Clock()
    store, other = new_store(redis, clock), new_store(redis, clock)
    record, _ = await store.create(make_record(clock))
    seen: list[JobRecord] = []
    first_seen = asyncio.Event()

    async def watch() -> None:
        async for current in store.watch(record.job_id):
            seen.append(current)
            first_seen.set()

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(first_seen.wait(), 5)
    for step in range(1, 4):  # faster than the watcher reads: it still gets every version
        await other.update(record.job_id, step=step)
    await other.finish(record.job_id, status="succeeded")
    await asyncio.wait_for(watcher, 5)
    assert [current.version for current in seen] == [0, 1, 2, 3, 4]
    assert seen[-1].final


async def test_watch_ends_when_the_job_is_forgotten_and_refuses_unknown_ids(redis: Redis) -> None:
    clock = Clock()
    store = new_store(redis, clock)
    record, _ = await store.create(make_record(clock))
    seen: list[JobRecord] = []

    async def watch() -> None:
        async for current in store.watch(record.job_id):
            seen.append(current)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    await store.delete(record.job_id)
    await asyncio.wait_for(watcher, 5)
    assert len(seen) == 1 and not seen[-1].final
    with pytest.raises(JobNotFoundError):
        async for _ in store.watch(record.job_id):
            pass


async def test_the_result_cache_is_a_byte_bounded_lru_shared_by_replicas(redis: Redis) -> None:
    cache, other = RedisResultCache(redis, max_bytes=300), RedisResultCache(redis, max_bytes=300)
    for key in "abc":
        await cache.put(key, result_of(100))
        await asyncio.sleep(0.01)
    assert await other.get("a") is not None  # now the most recently used
    await other.put("d", result_of(100))
    assert await cache.get("b") is None
    assert [await cache.get(key) is not None for key in "acd"] == [True] * 3
    assert await cache.nbytes() == 300
    await cache.put("huge", result_of(301))
    assert await cache.get("huge") is None
    await cache.put("a", result_of(50))
    assert await cache.nbytes() == 250


async def test_rate_limits_in_redis_hold_across_replicas(redis: Redis, redis_url: str) -> None:
    items = parse_rate_limit("3/minute")
    replicas = [RateLimits(items, limits_storage(redis_url)) for _ in range(2)]
    verdicts = [await replicas[n % 2].hit("phone-app") for n in range(4)]
    assert [verdict.allowed for verdict in verdicts] == [True, True, True, False]
    assert int(verdicts[-1].headers["Retry-After"]) > 0
    assert (await replicas[1].hit("another-client")).allowed
