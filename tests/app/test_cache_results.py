"""The `ResultCache` contract (app/cache/results.py: an LRU bounded by bytes), kept by the
in-memory cache and by the Redis one (app/cluster/redis_results.py, on a real redis-server, shared
by two cache objects as by two replicas); and the request digests that key it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from app.cache.keys import cache_key, hash_files, request_fingerprint
from app.cache.results import InMemoryResultCache, ResultCache
from app.edge.schemas import TryOnOptions
from app.media.encoding import EncodedImage, EncodedResult
from app.media.uploads import ReceivedForm, Upload

MAX_BYTES = 300

NewCache = Callable[[], ResultCache]  # a replica's cache, bounded by MAX_BYTES


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the service's loop


@pytest.fixture(params=["memory", "redis"])
def new_cache(request: pytest.FixtureRequest) -> NewCache:
    """Makes a replica's cache: for Redis a new cache object and client on this test's (flushed)
    db at each call; in memory the one process's cache, the same object at each call."""
    if request.param == "redis":
        open_client = request.getfixturevalue("redis_clients")
        from app.cluster.redis_results import RedisResultCache  # collection must not need redis

        return lambda: RedisResultCache(open_client(), max_bytes=MAX_BYTES)
    cache = InMemoryResultCache(max_bytes=MAX_BYTES)
    return lambda: cache


async def nbytes(cache: ResultCache) -> int:
    """The bytes kept (not in the interface: an attribute in memory)."""
    return cache.nbytes if isinstance(cache, InMemoryResultCache) else await cache.nbytes()


def result_of(size: int, seed: int = 1) -> EncodedResult:
    image = EncodedImage(data=b"i" * size, mime_type="image/png", width=2, height=2)
    mask = EncodedImage(data=b"", mime_type="image/png", width=2, height=2)
    return EncodedResult(image=image, mask=mask, seed=seed)


@pytest.mark.anyio
async def test_least_recently_used_entries_go_first_across_replicas(new_cache: NewCache) -> None:
    cache, other = new_cache(), new_cache()
    for key in "abc":
        await cache.put(key, result_of(100))
        await asyncio.sleep(0.01)  # Redis orders by the clock: distinct times of last use
    assert await other.get("a") is not None  # now the most recently used
    await other.put("d", result_of(100))
    assert await cache.get("b") is None
    assert [await cache.get(key) is not None for key in "acd"] == [True] * 3
    assert await nbytes(other) == 300


@pytest.mark.anyio
async def test_an_entry_over_the_bound_is_not_stored_and_replacing_counts_once(
    new_cache: NewCache,
) -> None:
    cache, other = new_cache(), new_cache()
    await cache.put("a", result_of(100))
    await cache.put("b", result_of(100))
    await other.put("huge", result_of(301))
    assert await cache.get("huge") is None
    assert await cache.get("a") is not None and await cache.get("b") is not None
    await other.put("a", result_of(50, seed=2))
    assert await nbytes(cache) == 150 and (await cache.get("a")).seed == 2


def form_of(person: bytes, cloth: bytes, **fields: str) -> ReceivedForm:
    files = {
        "person_image": Upload("person_image", person),
        "cloth_image": Upload("cloth_image", cloth),
    }
    return ReceivedForm(files=files, fields=fields)


def test_the_cache_key_follows_files_options_and_model_but_not_random_seeds() -> None:
    hashes = hash_files(form_of(b"p", b"c"))
    options = TryOnOptions(cloth_type="upper", seed=3)
    key = cache_key(hashes, options, "model-a")
    assert key is not None
    assert cache_key(hashes, TryOnOptions(cloth_type="upper_body", seed=3), "model-a") == key
    assert cache_key(hashes, TryOnOptions(seed=3, return_mask=True), "model-a") == key
    assert cache_key(hashes, options, "model-b") != key
    assert cache_key(hash_files(form_of(b"p", b"C")), options, "model-a") != key
    assert cache_key(hashes, TryOnOptions(seed=4), "model-a") != key
    assert cache_key(hashes, TryOnOptions(seed=-1), "model-a") is None


def test_the_fingerprint_covers_every_field_as_sent_and_every_file_byte() -> None:
    base = request_fingerprint(hash_files(form_of(b"p", b"c")), {"seed": "3"})
    assert request_fingerprint(hash_files(form_of(b"p", b"c")), {"seed": "3"}) == base
    assert request_fingerprint(hash_files(form_of(b"p", b"c")), {"seed": "03"}) != base
    assert request_fingerprint(hash_files(form_of(b"p", b"c!")), {"seed": "3"}) != base
