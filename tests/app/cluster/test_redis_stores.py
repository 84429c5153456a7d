"""The Redis job store and result cache keep the in-memory ones' contract (app/jobs/store.py,
app/cache/results.py) on a real redis-server, also between two store objects (two replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from test_cache_results import result_of

from app.access.limits import RateLimits, limits_storage, parse_rate_limit
from app.cluster.redis_client import connect
from app.cluster.redis_results import RedisResultCache

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
