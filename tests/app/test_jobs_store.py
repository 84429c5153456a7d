"""The `JobStore` contract (app/jobs/store.py), kept by the in-memory store and by the Redis one
(app/cluster/redis_jobs.py, on a real redis-server): atomic idempotency claims, watchers,
retention by TTL and caps, also between two store objects on one Redis (two replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from app.edge.errors import JobExpiredError, JobNotFoundError
from app.edge.ids import new_id
from app.jobs.records import JobRecord
from app.jobs.store import TOMBSTONE_S, InMemoryJobStore, JobStore
from app.media.encoding import EncodedImage, EncodedResult

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the service's loop


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


NewStore = Callable[..., JobStore]  # (clock, **caps) -> a replica's store


@pytest.fixture(params=["memory", "redis"])
def new_store(request: pytest.FixtureRequest) -> NewStore:
    """Makes a replica's store: for Redis a new store object and client on this test's (flushed)
    db at each call; in memory the one process's store, the same object at each call."""

    def options(caps: dict[str, int]) -> dict[str, int]:
        return {"ttl_s": 900, "max_bytes": 1000, "max_jobs": 10, "max_jobs_per_client": 10, **caps}

    if request.param == "redis":
        open_client = request.getfixturevalue("redis_clients")
        from app.cluster.redis_jobs import RedisJobStore  # here: collection must not need redis

        return lambda clock, **caps: RedisJobStore(open_client(), clock=clock, **options(caps))
    stores: list[InMemoryJobStore] = []

    def the_process_store(clock: Clock, **caps: int) -> InMemoryJobStore:
        if not stores:
            stores.append(InMemoryJobStore(clock=clock, **options(caps)))
        return stores[0]

    return the_process_store


async def result_bytes(store: JobStore) -> int:
    """The bytes of the results kept (not in the interface: a property in memory)."""
    return store.result_bytes if isinstance(store, InMemoryJobStore) else await store.result_bytes()


async def count(store: JobStore) -> int:
    """The records kept (not in the interface: `len` in memory)."""
    return len(store) if isinstance(store, InMemoryJobStore) else await store.count()


def make_record(clock: Clock, **fields: object) -> JobRecord:
    values: dict[str, object] = {
        "job_id": new_id(),
        "client": "127.0.0.1",
        "request_id": "r1",
        "total_steps": 10,
        "created_at": clock(),
    }
    values.update(fields)
    return JobRecord(**values)


def result_of(size: int, seed: int = 1) -> EncodedResult:
    """`size` bytes; equal sizes and seeds make equal results (kept and counted once)."""
    image = EncodedImage(data=b"i" * size, mime_type="image/png", width=2, height=2)
    mask = EncodedImage(data=b"", mime_type="image/png", width=2, height=2)
    return EncodedResult(image=image, mask=mask, seed=seed)


async def watch_in_background(
    store: JobStore, job_id: str
) -> tuple[asyncio.Task[None], list[JobRecord]]:
    """A task collecting every record `store.watch(job_id)` yields, and that (growing) list;
    returns once the watcher has the current record, so the test's changes all come after it."""
    seen: list[JobRecord] = []
    first_seen = asyncio.Event()

    async def collect() -> None:
        async for current in store.watch(job_id):
            seen.append(current)
            first_seen.set()

    watcher = asyncio.create_task(collect())
    await asyncio.wait_for(first_seen.wait(), 5)
    return watcher, seen


async def test_a_record_is_stored_updated_versioned_and_seen_by_another_replica(
    new_store: NewStore,
) -> None:
    clock = Clock()
    store, other = new_store(clock), new_store(clock)
    record, created = await store.create(make_record(clock))
    assert created
    updated = await other.update(record.job_id, status="running", stage="denoising", step=3)
    assert (updated.status, updated.step, updated.version) == ("running", 3, 1)
    assert await store.get(record.job_id) == updated
    assert record.status == "queued"  # snapshots are never changed in place
    finished = await store.finish(record.job_id, result_of(10), status="succeeded", stage=None)
    assert finished.expires_at == clock.now + 900
    result = await other.result(record.job_id)
    assert result is not None and result.image.data == b"i" * 10 and result.seed == 1
    await store.create(make_record(clock))
    assert await other.counts() == {"succeeded": 1, "queued": 1}


async def test_unknown_ids_raise_not_found(new_store: NewStore) -> None:
    store = new_store(Clock())
    for call in (store.get, store.result, store.delete):
        with pytest.raises(JobNotFoundError):
            await call("nope")
    with pytest.raises(JobNotFoundError):
        await store.update("nope", step=1)


async def test_one_idempotency_key_makes_one_job_per_client_across_replicas(
    new_store: NewStore,
) -> None:
    clock = Clock()
    store, other = new_store(clock), new_store(clock)
    first = make_record(clock, idempotency_key="k", fingerprint="a")
    second = make_record(clock, idempotency_key="k", fingerprint="b")
    results = await asyncio.gather(store.create(first), other.create(second))
    assert sorted(created for _, created in results) == [False, True]
    winner = next(record for record, created in results if created)
    assert all(record == winner for record, _ in results)  # the caller compares fingerprints
    if isinstance(store, InMemoryJobStore):  # one process: the first call to run claims it
        assert winner == first
    other_client = make_record(clock, idempotency_key="k", client="10.0.0.2")
    assert (await store.create(other_client))[1]  # keys are scoped per client
    assert await other.claimed("127.0.0.1", "k") == winner
    assert await other.claimed("127.0.0.1", "other") is None
    await store.delete(winner.job_id)  # the key lives as long as the record
    assert (await other.create(make_record(clock, idempotency_key="k")))[1]


async def test_finished_jobs_expire_after_the_ttl_then_answer_410_for_a_day_then_404(
    new_store: NewStore,
) -> None:
    clock = Clock()
    store = new_store(clock)
    record, _ = await store.create(make_record(clock))
    await store.finish(record.job_id, result_of(10), status="succeeded")
    clock.now += 899
    await store.get(record.job_id)
    clock.now += 2
    with pytest.raises(JobExpiredError):
        await store.get(record.job_id)
    assert await result_bytes(store) == 0
    clock.now += TOMBSTONE_S
    with pytest.raises(JobNotFoundError):
        await store.get(record.job_id)


async def test_the_byte_cap_evicts_the_oldest_finished_never_an_active_job(
    new_store: NewStore,
) -> None:
    clock = Clock()
    store = new_store(clock, max_bytes=250, max_jobs=5)
    active, _ = await store.create(make_record(clock))
    finished = []
    for seed in range(3):  # three distinct results
        record, _ = await store.create(make_record(clock))
        await store.finish(record.job_id, result_of(100, seed), status="succeeded")
        finished.append(record.job_id)
        clock.now += 1
    with pytest.raises(JobExpiredError):
        await store.get(finished[0])
    assert [(await store.get(job_id)).status for job_id in finished[1:]] == ["succeeded"] * 2
    assert (await store.get(active.job_id)).status == "queued"
    assert await result_bytes(store) == 200
    # A result over the whole cap evicts every other finished job but is itself kept.
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
    assert await count(store) == 6
    assert await store.counts() == {"queued": 6}  # the finished one made room


async def test_the_count_cap_evicts_finished_jobs_only(new_store: NewStore) -> None:
    clock = Clock()
    store = new_store(clock, max_jobs=3)
    done, _ = await store.create(make_record(clock))
    await store.finish(done.job_id, status="failed")
    active = [(await store.create(make_record(clock)))[0] for _ in range(3)]
    with pytest.raises(JobExpiredError):
        await store.get(done.job_id)
    assert await count(store) == 3
    await store.create(make_record(clock))  # nothing finished to evict: active jobs stay
    assert [(await store.get(record.job_id)).status for record in active] == ["queued"] * 3


async def test_deleted_jobs_are_forgotten_at_once(new_store: NewStore) -> None:
    clock = Clock()
    store = new_store(clock)
    record, _ = await store.create(make_record(clock))
    await store.finish(record.job_id, result_of(10), status="succeeded")
    await store.delete(record.job_id)
    with pytest.raises(JobNotFoundError):
        await store.get(record.job_id)
    assert await result_bytes(store) == 0


async def test_watch_on_one_replica_yields_every_change_another_makes_until_final(
    new_store: NewStore,
) -> None:
    clock = Clock()
    store, other = new_store(clock), new_store(clock)
    record, _ = await store.create(make_record(clock))
    watcher, seen = await watch_in_background(store, record.job_id)
    for step in range(1, 4):  # faster than the watcher reads: it still gets every version
        await other.update(record.job_id, step=step)
    await other.finish(record.job_id, status="succeeded")
    await asyncio.wait_for(watcher, 5)
    assert [current.version for current in seen] == [0, 1, 2, 3, 4]
    assert seen[-1].final


async def test_watch_ends_when_the_job_is_forgotten_and_refuses_unknown_ids(
    new_store: NewStore,
) -> None:
    clock = Clock()
    store, other = new_store(clock), new_store(clock)
    record, _ = await store.create(make_record(clock))
    watcher, seen = await watch_in_background(store, record.job_id)
    await other.delete(record.job_id)
    await asyncio.wait_for(watcher, 5)
    assert len(seen) == 1 and not seen[-1].final
    with pytest.raises(JobNotFoundError):
        async for _ in store.watch(record.job_id):
            pass


async def preview_key_exists(store: JobStore, job_id: str) -> bool:
    """Whether the preview's bytes are still held (Redis: its key; in memory: by the store)."""
    if isinstance(store, InMemoryJobStore):
        return job_id in store._previews
    from app.cluster.redis_jobs import preview_key

    return bool(await store._redis.exists(preview_key(job_id)))  # type: ignore[attr-defined]


async def test_the_latest_preview_lives_beside_the_record_and_is_forgotten_with_it(
    new_store: NewStore,
) -> None:
    clock = Clock()
    store, other = new_store(clock), new_store(clock)
    record, _ = await store.create(make_record(clock))
    assert await other.preview(record.job_id) is None
    updated = await store.save_preview(record.job_id, 3, b"jpeg-3")
    assert (updated.preview_step, updated.version) == (3, 1)  # one change, seen by watchers
    await other.save_preview(record.job_id, 6, b"jpeg-6")  # replaces the one before
    assert await store.preview(record.job_id) == (6, b"jpeg-6")
    assert (await store.get(record.job_id)).preview_step == 6
    await store.finish(record.job_id, status="canceled")
    assert await other.preview(record.job_id) == (6, b"jpeg-6")  # kept after the end
    assert await result_bytes(store) == 0  # counts toward no cap
    clock.now += 901
    with pytest.raises(JobExpiredError):
        await other.preview(record.job_id)
    assert not await preview_key_exists(store, record.job_id)
    deleted, _ = await store.create(make_record(clock))
    await store.save_preview(deleted.job_id, 1, b"jpeg-1")
    await other.delete(deleted.job_id)
    with pytest.raises(JobNotFoundError):
        await store.preview(deleted.job_id)
    assert not await preview_key_exists(store, deleted.job_id)
    with pytest.raises(JobNotFoundError):
        await store.save_preview("nope", 1, b"jpeg-1")


async def finish_jobs(
    store: JobStore, clock: Clock, client: str, results: list[EncodedResult | None]
) -> list[str]:
    """One finished job of `client` per entry of `results`, a second apart, oldest first."""
    ids = []
    for result in results:
        record, _ = await store.create(make_record(clock, client=client))
        await store.finish(record.job_id, result, status="succeeded")
        ids.append(record.job_id)
        clock.now += 1
    return ids


async def test_a_client_over_its_share_loses_its_own_oldest_finished_jobs_first(
    new_store: NewStore,
) -> None:
    clock = Clock()
    caps = {"max_jobs_per_client": 3, "max_jobs": 100}
    store, other = new_store(clock, **caps), new_store(clock, **caps)
    bobs = await finish_jobs(store, clock, "bob", [result_of(10)])
    active, _ = await store.create(make_record(clock, client="alice"))  # never evicted
    alices = await finish_jobs(other, clock, "alice", [result_of(i) for i in range(20, 26)])
    for job_id in alices[:3]:  # six finished, three kept: her own oldest went first
        with pytest.raises(JobExpiredError):
            await store.get(job_id)
    assert [(await other.get(job_id)).status for job_id in alices[3:]] == ["succeeded"] * 3
    # Bob's result is older than all of hers and younger than the TTL: untouched.
    assert (await other.result(bobs[0])).image.data == b"i" * 10
    assert (await store.get(active.job_id)).status == "queued"
    assert await count(store) == 5  # Bob's, Alice's active one and her three newest
    assert await result_bytes(store) == 10 + 23 + 24 + 25
    # A forgotten job frees its place in its client's share: Bob's next ones keep his first.
    await store.delete(alices[-1])
    more_bobs = await finish_jobs(store, clock, "bob", [None, None])
    assert [(await store.get(job_id)).status for job_id in bobs + more_bobs] == ["succeeded"] * 3


async def test_a_result_shared_by_several_jobs_counts_once_and_goes_with_its_last_holder(
    new_store: NewStore,
) -> None:
    clock = Clock()
    store, other = new_store(clock, max_bytes=250), new_store(clock, max_bytes=250)
    shared = result_of(200)
    ids = await finish_jobs(store, clock, "alice", [shared] * 3)
    ids += await finish_jobs(other, clock, "bob", [result_of(200)])  # equal bytes, another object
    assert await result_bytes(store) == 200  # under the 250-byte cap: none was evicted
    assert await count(store) == 4
    for job_id in ids:
        assert (await other.result(job_id)).image.data == b"i" * 200
    await store.delete(ids[0])
    clock.now += 900 - 4 + 2.5  # finished a second apart: the next two expire, not the last
    for job_id in ids[1:3]:
        with pytest.raises(JobExpiredError):
            await other.result(job_id)
    assert await result_bytes(store) == 200  # still held by the last two
    assert (await store.result(ids[3])).nbytes == 200
    await other.delete(ids[3])
    assert await result_bytes(store) == 0  # the last holder forgotten frees the bytes
    if not isinstance(store, InMemoryJobStore):
        from app.cluster.redis_jobs import RESULT_PREFIX

        redis = store._redis  # type: ignore[attr-defined]
        assert not await redis.keys(RESULT_PREFIX + "*")  # the stored copy is gone too
    # A distinct result still counts on its own.
    await finish_jobs(store, clock, "alice", [shared, result_of(30)])
    assert await result_bytes(store) == 230
