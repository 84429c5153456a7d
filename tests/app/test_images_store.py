"""The `ImageStore` contract (app/images/store.py), kept by the in-memory store and by the Redis
one (app/cluster/redis_images.py, on a real redis-server): ownership, TTL after the last use,
per-client and byte caps (least recently used first), tombstones, pins, masks; for Redis also
between two store objects (two ingress replicas)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.edge.errors import ImageExpiredError, ImageNotFoundError
from app.edge.ids import new_id
from app.images.store import TOMBSTONE_S, ImageStore, InMemoryImageStore, Pixels, StoredImage

pytestmark = pytest.mark.anyio
SIZE = (4, 2)
IMAGE_BYTES = 3 * 8 * 2 + 8  # two RGB forms and one L form at SIZE


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


NewStore = Callable[..., ImageStore]


@pytest.fixture(params=["memory", "redis"])
def new_store(request: pytest.FixtureRequest) -> NewStore:
    """A replica's store: for Redis a new object and client on this test's flushed db at each
    call; in memory the one process's store."""

    def options(caps: dict[str, int]) -> dict[str, int]:
        return {"ttl_s": 3600, "max_bytes": 10_000, "max_images_per_client": 5, **caps}

    if request.param == "redis":
        open_client = request.getfixturevalue("redis_clients")
        from app.cluster.redis_images import RedisImageStore  # collection must not need redis

        return lambda clock, **caps: RedisImageStore(open_client(), clock=clock, **options(caps))
    stores: list[InMemoryImageStore] = []

    def the_process_store(clock: Clock, **caps: int) -> InMemoryImageStore:
        if not stores:
            stores.append(InMemoryImageStore(clock=clock, **options(caps)))
        return stores[0]

    return the_process_store


def make_image(client: str = "alice", fill: int = 1) -> StoredImage:
    rgb = Pixels("RGB", *SIZE, bytes([fill]) * 24)
    return StoredImage(
        image_id=new_id(),
        client=client,
        width=40,
        height=20,
        upload_bytes=1234,
        sha256="ab" * 32,
        size=SIZE,
        fitted={
            "person_image": rgb,
            "cloth_image": rgb,
            "mask_image": Pixels("L", *SIZE, bytes([255]) * 8),
        },
    )


async def test_an_image_comes_back_as_stored_to_its_owner_only(new_store: NewStore) -> None:
    clock = Clock()
    image = await new_store(clock).add(make_image(fill=7))
    assert image.expires_at == clock.now + 3600
    other_replica = new_store(clock)
    got = await other_replica.get(image.image_id, "alice")
    assert got.fitted == image.fitted and got.sha256 == image.sha256
    assert (got.width, got.height, got.size, got.upload_bytes) == (40, 20, SIZE, 1234)
    assert got.image("mask_image").info  # marked fitted: never binarised again
    assert (await other_replica.get(image.image_id, None)).image_id == image.image_id
    with pytest.raises(ImageNotFoundError):
        await other_replica.get(image.image_id, "bob")
    with pytest.raises(ImageNotFoundError):
        await other_replica.delete(image.image_id, "bob")
    with pytest.raises(ImageNotFoundError):
        await other_replica.get(new_id(), "alice")
    await other_replica.delete(image.image_id, "alice")
    with pytest.raises(ImageNotFoundError):  # deleted: 404 at once, no tombstone
        await new_store(clock).get(image.image_id, "alice")


async def test_ttl_counts_from_the_last_use_then_410_for_a_day_then_404(
    new_store: NewStore,
) -> None:
    clock = Clock()
    store = new_store(clock)
    used, unused = await store.add(make_image()), await store.add(make_image())
    clock.now += 3000
    assert (await store.get(used.image_id, "alice")).expires_at == clock.now + 3600
    await store.get(unused.image_id, "alice", touch=False)  # a GET of the document is no use
    clock.now += 1000
    with pytest.raises(ImageExpiredError):
        await new_store(clock).get(unused.image_id, "alice")
    with pytest.raises(ImageNotFoundError):  # another client learns nothing from a tombstone
        await store.get(unused.image_id, "bob")
    await store.get(used.image_id, "alice")
    clock.now += TOMBSTONE_S
    with pytest.raises(ImageNotFoundError):
        await store.get(unused.image_id, "alice")


async def test_a_client_over_its_count_loses_its_own_least_recently_used_first(
    new_store: NewStore,
) -> None:
    clock = Clock()
    store = new_store(clock, max_images_per_client=3)
    bobs = await store.add(make_image("bob"))
    images = []
    for _ in range(3):
        clock.now += 1
        images.append(await store.add(make_image()))
    clock.now += 1
    await store.get(images[0].image_id, "alice")  # used: now the most recent
    for _ in range(2):
        clock.now += 1
        await store.add(make_image())
    for evicted in images[1:]:
        with pytest.raises(ImageExpiredError):
            await store.get(evicted.image_id, "alice")
    await store.get(images[0].image_id, "alice")
    await store.get(bobs.image_id, "bob")  # never another client's


async def test_bytes_are_bounded_least_recently_used_first_and_masks_count(
    new_store: NewStore,
) -> None:
    clock = Clock()
    store = new_store(clock, max_bytes=3 * IMAGE_BYTES)
    first = await store.add(make_image("bob"))
    clock.now += 1
    second = await store.add(make_image())
    clock.now += 1
    third = await store.add(make_image())
    assert await store.nbytes() == 3 * IMAGE_BYTES
    mask = Pixels("L", *SIZE, bytes(8))
    await store.put_mask(third.image_id, "upper", mask)  # over by 8 bytes: the oldest goes
    assert await store.mask(third.image_id, "upper") == mask
    with pytest.raises(ImageExpiredError):
        await store.get(first.image_id, "bob")
    await store.get(second.image_id, "alice")
    assert await store.nbytes() == 2 * IMAGE_BYTES + 8
    await store.delete(third.image_id, "alice")  # its masks go with it
    assert await store.mask(third.image_id, "upper") is None
    assert await store.nbytes() == IMAGE_BYTES
    await store.put_mask(third.image_id, "upper", mask)  # gone: a no-op
    assert await store.nbytes() == IMAGE_BYTES


async def test_a_pinned_image_is_neither_evicted_nor_expired_until_unpinned(
    new_store: NewStore,
) -> None:
    clock = Clock()
    store = new_store(clock, max_images_per_client=1)
    pinned = await store.add(make_image())
    await store.pin(pinned.image_id)
    clock.now += 1
    newer = await store.add(make_image())  # over the count, but the older one is pinned
    clock.now += 4000  # past the TTL of both
    await store.get(pinned.image_id, "alice")
    with pytest.raises(ImageExpiredError):
        await store.get(newer.image_id, "alice")
    await store.unpin(pinned.image_id)
    clock.now += 4000
    with pytest.raises(ImageExpiredError):
        await store.get(pinned.image_id, "alice")
