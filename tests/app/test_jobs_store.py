"""The in-memory job store: atomic idempotency claims, watchers, retention by TTL and caps."""

from __future__ import annotations

import asyncio

import pytest

from app.encoding import EncodedImage, EncodedResult
from app.errors import JobExpiredError, JobNotFoundError
from app.jobs.records import JobRecord, new_job_id
from app.jobs.store import TOMBSTONE_S, InMemoryJobStore, JobStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the service's loop


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_record(clock: Clock, **fields: object) -> JobRecord:
    values: dict[str, object] = {
        "job_id": new_job_id(),
        "client": "127.0.0.1",
        "request_id": "r1",
        "total_steps": 10,
        "created_at": clock(),
    }
    values.update(fields)
    return JobRecord(**values)


def result_of(size: int) -> EncodedResult:
    image = EncodedImage(data=b"i" * size, mime_type="image/png", width=2, height=2)
    mask = EncodedImage(data=b"", mime_type="image/png", width=2, height=2)
    return EncodedResult(image=image, mask=mask, seed=1)


def new_store(clock: Clock, **caps: int) -> InMemoryJobStore:
    options = {"ttl_s": 900, "max_bytes": 1000, "max_jobs": 10, **caps}
    return InMemoryJobStore(clock=clock, **options)


async def watch_in_background(
    store: JobStore, job_id: str
) -> tuple[asyncio.Task[None], list[JobRecord]]:
    """A task collecting every record `store.watch(job_id)` yields, and that (growing) list;
    the task has had one turn of the loop to start watching before the test changes the job."""
    seen: list[JobRecord] = []

    async def collect() -> None:
        async for current in store.watch(job_id):
            seen.append(current)

    watcher = asyncio.create_task(collect())
    await asyncio.sleep(0)
    return watcher, seen


async def test_a_record_is_stored_updated_and_versioned() -> None:
    clock = Clock()
    store = new_store(clock)
    record, created = await store.create(make_record(clock))
    assert created
    updated = await store.update(record.job_id, status="running", stage="denoising", step=3)
    assert (updated.status, updated.step, updated.version) == ("running", 3, 1)
    assert await store.get(record.job_id) == updated
    assert record.status == "queued"  # snapshots are never changed in place
    finished = await store.finish(record.job_id, result_of(10), status="succeeded", stage=None)
    assert finished.expires_at == clock.now + 900
    assert (await store.result(record.job_id)).image.data == b"i" * 10
    await store.create(make_record(clock))
    assert await store.counts() == {"succeeded": 1, "queued": 1}


async def test_unknown_ids_raise_not_found() -> None:
    store = new_store(Clock())
    for call in (store.get, store.result, store.delete):
        with pytest.raises(JobNotFoundError):
            await call("nope")
    with pytest.raises(JobNotFoundError):
        await store.update("nope", step=1)


async def test_the_same_idempotency_key_makes_one_job_per_client() -> None:
    clock = Clock()
    store = new_store(clock)
    first = make_record(clock, idempotency_key="k", fingerprint="a")
    second = make_record(clock, idempotency_key="k", fingerprint="b")
    other_client = make_record(clock, idempotency_key="k", client="10.0.0.2")
    results = await asyncio.gather(store.create(first), store.create(second))
    assert [created for _, created in results] == [True, False]
    assert results[1][0] == first  # the existing job: the caller compares fingerprints
    assert (await store.create(other_client))[1]  # keys are scoped per client
    assert await store.claimed("127.0.0.1", "k") == first
    assert await store.claimed("127.0.0.1", "other") is None
    await store.delete(first.job_id)  # the key lives as long as the record
    assert (await store.create(make_record(clock, idempotency_key="k")))[1]


async def test_finished_jobs_expire_after_the_ttl_then_answer_410_for_a_day_then_404() -> None:
    clock = Clock()
    store = new_store(clock)
    record, _ = await store.create(make_record(clock))
    await store.finish(record.job_id, result_of(10), status="succeeded")
    clock.now += 899
    await store.get(record.job_id)
    clock.now += 2
    with pytest.raises(JobExpiredError):
        await store.get(record.job_id)
    assert store.result_bytes == 0
    clock.now += TOMBSTONE_S
    with pytest.raises(JobNotFoundError):
        await store.get(record.job_id)


async def test_the_byte_cap_evicts_the_oldest_finished_never_an_active_job() -> None:
    clock = Clock()
    store = new_store(clock, max_bytes=250)
    active, _ = await store.create(make_record(clock))
    finished = []
    for _ in range(3):
        record, _ = await store.create(make_record(clock))
        await store.finish(record.job_id, result_of(100), status="succeeded")
        finished.append(record.job_id)
        clock.now += 1
    with pytest.raises(JobExpiredError):
        await store.get(finished[0])
    assert [(await store.get(job_id)).status for job_id in finished[1:]] == ["succeeded"] * 2
    assert (await store.get(active.job_id)).status == "queued"
    assert store.result_bytes == 200
    # A result over the whole cap evicts every other finished job but is itself kept.
    big, _ = await store.create(make_record(clock))
    await store.finish(big.job_id, result_of(1000), status="succeeded")
    assert (await store.result(big.job_id)).nbytes == 1000
    for job_id in finished[1:]:
        with pytest.raises(JobExpiredError):
            await store.get(job_id)
    assert (await store.get(active.job_id)).status == "queued"


async def test_the_count_cap_evicts_finished_jobs_only() -> None:
    clock = Clock()
    store = new_store(clock, max_jobs=3)
    done, _ = await store.create(make_record(clock))
    await store.finish(done.job_id, status="failed")
    active = [(await store.create(make_record(clock)))[0] for _ in range(3)]
    with pytest.raises(JobExpiredError):
        await store.get(done.job_id)
    assert len(store) == 3
    await store.create(make_record(clock))  # nothing finished to evict: active jobs stay
    assert [(await store.get(record.job_id)).status for record in active] == ["queued"] * 3


async def test_deleted_jobs_are_forgotten_at_once() -> None:
    clock = Clock()
    store = new_store(clock)
    record, _ = await store.create(make_record(clock))
    await store.finish(record.job_id, result_of(10), status="succeeded")
    await store.delete(record.job_id)
    with pytest.raises(JobNotFoundError):
        await store.get(record.job_id)
    assert store.result_bytes == 0


async def test_watch_yields_the_current_record_then_each_change_until_final() -> None:
    clock = Clock()
    store = new_store(clock)
    record, _ = await store.create(make_record(clock))
    watcher, seen = await watch_in_background(store, record.job_id)
    for step in range(1, 4):
        await store.update(record.job_id, step=step)
        await asyncio.sleep(0)
    await store.finish(record.job_id, status="succeeded")
    await asyncio.wait_for(watcher, 1)
    assert [current.version for current in seen] == [0, 1, 2, 3, 4]
    assert seen[-1].final


async def test_watch_ends_when_the_job_is_forgotten_and_refuses_unknown_ids() -> None:
    clock = Clock()
    store = new_store(clock)
    record, _ = await store.create(make_record(clock))
    watcher, seen = await watch_in_background(store, record.job_id)
    await store.delete(record.job_id)
    await asyncio.wait_for(watcher, 1)
    assert len(seen) == 1 and not seen[-1].final
    with pytest.raises(JobNotFoundError):
        async for _ in store.watch(record.job_id):
            pass
