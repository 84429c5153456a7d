"""What only Redis does: rate limits (`limits_storage`) counted once for every replica.

The job store and the result cache keep one contract with their in-memory twins; those tests run
on both (tests/app/test_jobs_store.py, tests/app/test_cache_results.py)."""

from __future__ import annotations

import pytest

from app.access.limits import RateLimits, limits_storage, parse_rate_limit

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.usefixtures("redis_clients")  # on a flushed db
async def test_rate_limits_in_redis_hold_across_replicas(redis_url: str) -> None:
    items = parse_rate_limit("3/minute")
    replicas = [RateLimits(items, limits_storage(redis_url)) for _ in range(2)]
    verdicts = [await replicas[n % 2].hit("phone-app") for n in range(4)]
    assert [verdict.allowed for verdict in verdicts] == [True, True, True, False]
    assert int(verdicts[-1].headers["Retry-After"]) > 0
    assert (await replicas[1].hit("another-client")).allowed
