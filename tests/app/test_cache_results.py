"""The in-memory result cache (an LRU bounded by bytes) and the request digests that key it."""

from __future__ import annotations

import pytest

from app.cache.keys import cache_key, hash_files, request_fingerprint
from app.cache.results import InMemoryResultCache
from app.encoding import EncodedImage, EncodedResult
from app.schemas import TryOnOptions
from app.uploads import ReceivedForm, Upload

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the service's loop


def result_of(size: int, seed: int = 1) -> EncodedResult:
    image = EncodedImage(data=b"i" * size, mime_type="image/png", width=2, height=2)
    mask = EncodedImage(data=b"", mime_type="image/png", width=2, height=2)
    return EncodedResult(image=image, mask=mask, seed=seed)


async def test_least_recently_used_entries_go_first() -> None:
    cache = InMemoryResultCache(max_bytes=300)
    for key in "abc":
        await cache.put(key, result_of(100))
    assert await cache.get("a") is not None  # now the most recently used
    await cache.put("d", result_of(100))
    assert await cache.get("b") is None
    assert [await cache.get(key) is not None for key in "acd"] == [True] * 3
    assert cache.nbytes == 300


async def test_an_entry_over_the_bound_is_not_stored_and_replacing_counts_once() -> None:
    cache = InMemoryResultCache(max_bytes=300)
    await cache.put("a", result_of(100))
    await cache.put("huge", result_of(301))
    assert await cache.get("huge") is None and await cache.get("a") is not None
    await cache.put("a", result_of(50, seed=2))
    assert cache.nbytes == 50 and (await cache.get("a")).seed == 2


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
