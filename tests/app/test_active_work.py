"""The `ActiveWork` contract (app/access/limits.py: `--max-active-per-client`), kept by the
in-memory counts and by the Redis ones (app/cluster/redis_active.py, on a real redis-server, shared
by two objects as by two ingress replicas); and what only Redis does: a dead replica's slots."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from app.access.limits import ActiveWork, InMemoryActiveWork
from app.edge.errors import TooManyActiveRequestsError

CAP = 2
NewActiveWork = Callable[[], Awaitable[ActiveWork]]  # a replica's counts, capped at CAP

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", "redis"])
def new_active_work(request: pytest.FixtureRequest) -> NewActiveWork:
    """Makes a replica's counts: for Redis a new object, client and live replica (its lease set
    as its job runner keeps it) on this test's (flushed) db at each call; in memory the one
    process's counts at each call."""
    if request.param == "redis":
        open_client = request.getfixturevalue("redis_clients")
        from app.cluster.redis_active import RedisActiveWork  # collection must not need redis
        from app.cluster.shared_jobs import LEASE_PREFIX

        replicas: list[ActiveWork] = []

        async def new_replica() -> ActiveWork:
            replica_id = f"ingress-{len(replicas)}"
            await open_client().set(LEASE_PREFIX + replica_id, "{}", ex=60)
            replicas.append(RedisActiveWork(open_client(), replica_id, CAP))
            return replicas[-1]

        return new_replica
    active = InMemoryActiveWork(CAP)

    async def the_process_counts() -> ActiveWork:
        return active

    return the_process_counts


async def eventually_admitted(work: ActiveWork, client: str) -> None:
    """A release reaches a shared store a moment later: try again for a while."""
    for _ in range(250):
        try:
            await work.acquire(client)
            return
        except TooManyActiveRequestsError:
            await asyncio.sleep(0.02)
    raise AssertionError(f"{client} was never admitted again")


async def test_the_cap_holds_across_replicas_and_a_release_gives_a_slot_back(
    new_active_work: NewActiveWork,
) -> None:
    first, second = await new_active_work(), await new_active_work()
    slot = await first.acquire("phone-app")
    await second.acquire("phone-app")
    for replica in (first, second):
        with pytest.raises(TooManyActiveRequestsError, match="already has 2 try-ons"):
            await replica.acquire("phone-app")
    await second.acquire("another-client")  # one client's cap only
    slot.release()
    slot.release()  # a slot is given back once
    await eventually_admitted(second, "phone-app")
    with pytest.raises(TooManyActiveRequestsError):
        await first.acquire("phone-app")


async def test_concurrent_acquires_on_one_replica_never_pass_the_cap(
    new_active_work: NewActiveWork,
) -> None:
    replica = await new_active_work()
    outcomes = await asyncio.gather(
        *(replica.acquire("phone-app") for _ in range(6)), return_exceptions=True
    )
    refused = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    assert len(refused) == 6 - CAP
    assert all(isinstance(outcome, TooManyActiveRequestsError) for outcome in refused)


async def test_the_slots_of_a_replica_whose_lease_ran_out_come_back(
    redis_clients: Callable,
) -> None:
    from app.cluster.redis_active import RedisActiveWork
    from app.cluster.shared_jobs import LEASE_PREFIX

    leases = redis_clients()
    await leases.set(LEASE_PREFIX + "alive", "{}", ex=60)
    await leases.set(LEASE_PREFIX + "doomed", "{}", ex=60)
    alive = RedisActiveWork(redis_clients(), "alive", 1)
    doomed = RedisActiveWork(redis_clients(), "doomed", 1)
    await doomed.acquire("phone-app")  # and never released: the replica dies
    with pytest.raises(TooManyActiveRequestsError):
        await alive.acquire("phone-app")
    await leases.delete(LEASE_PREFIX + "doomed")
    await alive.acquire("phone-app")
