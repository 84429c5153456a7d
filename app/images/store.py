"""Where stored images live: the `ImageStore` interface and the in-memory default.

A shopper takes one photo and tries twenty garments: the photo is uploaded once
(POST /api/try-on/images) and each try-on names it by id. The routes and the try-on flow only use
this interface, so the Redis implementation (app/cluster/redis_images.py) stands in for the
scaled-out mode; every method is `async` for that reason.

What is kept is what a try-on needs, never the original file: the image decoded, upright and
FITTED to the working size once for each part it may play (person, garment, drawn mask), as raw
pixels, so a try-on by id decodes nothing and is byte-identical to the same try-on by upload (a
48 MP photo costs its fitted size, not 190 MB). The sha256 of the uploaded bytes is kept too: the
result cache keys on content, never on ids. Derived masks (the automatic mask of the stored person
for a cloth type) live with the image and go with it.

The contract every implementation keeps:

- Ownership (README, "Tenants"): an image belongs to the client that stored it. Lookups
  take the asking client's key name (`owner`); another client's image answers exactly as an
  unknown id (404). `owner` None (keys off): the 128-bit id is the capability.
- Retention: `ttl_s` seconds after the last use; at most `max_images_per_client` per client (its
  own least recently used go first) and `max_bytes` in all (least recently used first). An
  expired or evicted id answers `ImageExpiredError` (410) for `TOMBSTONE_S`, then 404; a deleted
  id is 404 at once.
- Pins: a queued or running try-on pins the images it names (`pin` / `unpin`, counted); a pinned
  image is never evicted nor expired (for at most PIN_LEASE_S after the last pin, so a lost
  unpin cannot keep it forever). Deleting one removes it from view at once (the try-on holds
  its own pixels, so it still runs).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from app.edge.errors import ImageExpiredError, ImageNotFoundError
from app.settings import Settings
from catvton.preprocess import FITTED_MASK_INFO

TOMBSTONE_S = 24 * 3600
# A pin outlives a lost unpin (a crashed ingress, a refused submit) by at most this long.
PIN_LEASE_S = 3 * 3600.0
MAX_TOMBSTONES = 100_000  # ~10 MB of ids; beyond it the oldest answer 404 instead of 410 early
# The parts a stored image may play in a try-on, by the try-on's file field names.
FITTED_PARTS = ("person_image", "cloth_image", "mask_image")


def image_retention(settings: Settings) -> dict[str, Any]:
    """The retention keywords of every image store, as `settings` say (one place for both)."""
    return {
        "ttl_s": settings.image_ttl,
        "max_bytes": settings.image_store_bytes,
        "max_images_per_client": settings.max_images_per_client,
    }


@dataclass(frozen=True)
class Pixels:
    """A fitted image as raw pixels: restored exactly (PNG would cost ~50 ms a write at
    768x1024 for nothing but memory, and any lossy form would break byte-identical results)."""

    mode: str
    width: int
    height: int
    data: bytes = field(repr=False)

    @classmethod
    def from_image(cls, image: Image.Image) -> Pixels:
        return cls(image.mode, image.width, image.height, image.tobytes())

    def to_image(self) -> Image.Image:
        image = Image.frombytes(self.mode, (self.width, self.height), self.data)
        if self.mode == "L":
            # A fitted mask keeps its grey edges; the mark tells `fit_mask` not to binarise it
            # again (catvton/preprocess.py), as for the mask the intake fitted from an upload.
            image.info[FITTED_MASK_INFO] = (self.width, self.height)
        return image

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class StoredImage:
    """One stored image: who owns it, what the upload was, its fitted forms.

    `width`/`height`: upright, as decoded (what the mask-shape rule compares with);
    `size`: the working size the forms were fitted to; `upload_bytes`/`sha256`: the uploaded
    file (the document's `bytes` and `sha256`).
    """

    image_id: str
    client: str
    width: int
    height: int
    upload_bytes: int
    sha256: str
    size: tuple[int, int]
    fitted: dict[str, Pixels] = field(repr=False)  # by FITTED_PARTS
    last_used: float = 0.0
    expires_at: float = 0.0  # set by the store on each answer: last use + ttl

    @property
    def nbytes(self) -> int:
        """What the image costs the store (its masks are counted apart)."""
        return sum(pixels.nbytes for pixels in self.fitted.values())

    def image(self, part: str) -> Image.Image:
        return self.fitted[part].to_image()


class ImageStore(ABC):
    """Stored images, their derived masks, ownership and retention (see the module docstring)."""

    def __init__(
        self,
        *,
        ttl_s: float,
        max_bytes: int,
        max_images_per_client: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.max_images_per_client = max_images_per_client
        self._clock = clock
        self._releasing: set[asyncio.Task[None]] = set()

    def release(self, image_ids: Iterable[str]) -> None:
        """`unpin` each, from synchronous code (a job's end callback); call it on the loop."""
        for image_id in image_ids:
            task = asyncio.get_running_loop().create_task(self.unpin(image_id))
            self._releasing.add(task)  # a task nobody references may be collected mid-flight
            task.add_done_callback(self._releasing.discard)

    @abstractmethod
    async def add(self, image: StoredImage) -> StoredImage:
        """Keep `image` (now its last use), evicting beyond the caps (never `image` itself)."""

    @abstractmethod
    async def get(self, image_id: str, owner: str | None, *, touch: bool = True) -> StoredImage:
        """The image (`touch`: now is its last use); raises ImageNotFoundError (also for another
        owner's) or ImageExpiredError."""

    @abstractmethod
    async def delete(self, image_id: str, owner: str | None) -> None:
        """Forget the image and its masks (404 afterwards); raises as `get`."""

    @abstractmethod
    async def mask(self, image_id: str, cloth_type: str) -> Pixels | None:
        """The automatic mask kept for (image, cloth type), or None."""

    @abstractmethod
    async def put_mask(self, image_id: str, cloth_type: str, mask: Pixels) -> None:
        """Keep the automatic mask of (image, cloth type); a no-op once the image is gone."""

    @abstractmethod
    async def pin(self, image_id: str) -> None:
        """A try-on naming the image was queued: no eviction or expiry until `unpin`."""

    @abstractmethod
    async def unpin(self, image_id: str) -> None:
        """The try-on ended (done, failed or canceled)."""

    @abstractmethod
    async def nbytes(self) -> int:
        """Bytes kept: fitted pixels and masks."""


@dataclass
class _Entry:
    image: StoredImage
    masks: dict[str, Pixels] = field(default_factory=dict)
    pins: int = 0
    pinned_until: float = 0.0

    def pinned(self, now: float) -> bool:
        return self.pins > 0 and self.pinned_until > now

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + sum(mask.nbytes for mask in self.masks.values())


class InMemoryImageStore(ImageStore):
    """The single-process default: ordered dicts in least-recently-used order, expiry lazy (each
    call first drops what expired, oldest first, so no background task is needed)."""

    def __init__(self, **retention: object) -> None:
        super().__init__(**retention)  # type: ignore[arg-type]
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._by_client: dict[str, OrderedDict[str, None]] = {}
        self._tombstones: OrderedDict[str, str] = OrderedDict()  # id -> client; when: below
        self._tombstoned_at: dict[str, float] = {}
        self._nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def add(self, image: StoredImage) -> StoredImage:
        self._expire()
        image = replace(image, last_used=self._clock())
        self._entries[image.image_id] = _Entry(image)
        self._by_client.setdefault(image.client, OrderedDict())[image.image_id] = None
        self._nbytes += image.nbytes
        self._evict(image)
        return self._answer(image)

    async def get(self, image_id: str, owner: str | None, *, touch: bool = True) -> StoredImage:
        self._expire()
        entry = self._lookup(image_id, owner)
        if touch:
            entry.image = replace(entry.image, last_used=self._clock())
            self._entries.move_to_end(image_id)
            self._by_client[entry.image.client].move_to_end(image_id)
        return self._answer(entry.image)

    async def delete(self, image_id: str, owner: str | None) -> None:
        self._expire()
        self._lookup(image_id, owner)
        self._forget(image_id, tombstone=False)

    async def mask(self, image_id: str, cloth_type: str) -> Pixels | None:
        entry = self._entries.get(image_id)
        return None if entry is None else entry.masks.get(cloth_type)

    async def put_mask(self, image_id: str, cloth_type: str, mask: Pixels) -> None:
        entry = self._entries.get(image_id)
        if entry is None:
            return
        if (previous := entry.masks.get(cloth_type)) is not None:
            self._nbytes -= previous.nbytes
        entry.masks[cloth_type] = mask
        self._nbytes += mask.nbytes
        self._evict(entry.image)

    async def pin(self, image_id: str) -> None:
        if (entry := self._entries.get(image_id)) is not None:
            entry.pins += 1
            entry.pinned_until = self._clock() + PIN_LEASE_S

    async def unpin(self, image_id: str) -> None:
        if (entry := self._entries.get(image_id)) is not None:
            entry.pins = max(entry.pins - 1, 0)

    async def nbytes(self) -> int:
        return self._nbytes

    # -- internals -------------------------------------------------------------------------------

    def _answer(self, image: StoredImage) -> StoredImage:
        return replace(image, expires_at=image.last_used + self.ttl_s)

    def _lookup(self, image_id: str, owner: str | None) -> _Entry:
        entry = self._entries.get(image_id)
        if entry is not None:
            if owner in (None, entry.image.client):
                return entry
            raise ImageNotFoundError()
        if image_id in self._tombstones and owner in (None, self._tombstones[image_id]):
            raise ImageExpiredError()
        raise ImageNotFoundError()

    def _forget(self, image_id: str, *, tombstone: bool) -> None:
        entry = self._entries.pop(image_id)
        client = entry.image.client
        self._nbytes -= entry.nbytes
        own = self._by_client[client]
        own.pop(image_id, None)
        if not own:
            del self._by_client[client]
        if tombstone:
            self._tombstones[image_id] = client
            self._tombstoned_at[image_id] = self._clock()
            while len(self._tombstones) > MAX_TOMBSTONES:
                oldest, _ = self._tombstones.popitem(last=False)
                self._tombstoned_at.pop(oldest, None)

    def _expire(self) -> None:
        now = self._clock()
        for image_id, entry in list(self._entries.items()):
            if entry.image.last_used + self.ttl_s > now:
                break  # least recently used first: the rest are younger
            if not entry.pinned(now):
                self._forget(image_id, tombstone=True)
        while self._tombstones:
            oldest = next(iter(self._tombstones))
            if self._tombstoned_at[oldest] + TOMBSTONE_S > now:
                break
            del self._tombstones[oldest], self._tombstoned_at[oldest]

    def _evict(self, keep: StoredImage) -> None:
        """The client's own least recently used beyond its count, then anyone's beyond the
        bytes; never `keep` (the image just stored or used) nor a pinned one."""
        now = self._clock()
        own = self._by_client.get(keep.client, OrderedDict())
        for image_id in list(own):
            if len(own) <= self.max_images_per_client:
                break
            if image_id != keep.image_id and not self._entries[image_id].pinned(now):
                self._forget(image_id, tombstone=True)
        for image_id, entry in list(self._entries.items()):
            if self._nbytes <= self.max_bytes:
                break
            if image_id != keep.image_id and not entry.pinned(now):
                self._forget(image_id, tombstone=True)
