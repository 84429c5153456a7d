"""Results in Redis: how an `EncodedResult` is stored (a hash of bytes and numbers), and the
Redis `ResultCache`, an LRU bounded by bytes like the in-memory one but shared by every replica.

Redis' own eviction (`maxmemory-policy allkeys-lru`) would also evict job records sharing the
server, so the bound is kept here: entries, a sorted set by last use and a byte counter, changed
together in one server-side script so that two replicas storing at once keep the count exact.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from app.cache.results import ResultCache
from app.media.encoding import EncodedImage, EncodedResult

PREFIX = "catvton:cache:"
LRU_KEY = PREFIX + "lru"  # key -> last use (Unix seconds)
BYTES_KEY = PREFIX + "bytes"
ENTRY_PREFIX = PREFIX + "entry:"

# KEYS: entry, lru, bytes. ARGV: key, now, nbytes, max bytes, entry prefix, field, value, ...
PUT_SCRIPT = """
local previous = redis.call('HGET', KEYS[1], 'nbytes')
if previous then redis.call('DECRBY', KEYS[3], previous) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('INCRBY', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
while tonumber(redis.call('GET', KEYS[3])) > tonumber(ARGV[4]) do
  local oldest = redis.call('ZPOPMIN', KEYS[2])
  if #oldest == 0 then break end
  local entry = ARGV[5] .. oldest[1]
  local size = redis.call('HGET', entry, 'nbytes')
  if size then redis.call('DECRBY', KEYS[3], size) end
  redis.call('DEL', entry)
end
"""


def result_fields(result: EncodedResult) -> dict[str, bytes | str | int]:
    """An `EncodedResult` as the fields of one Redis hash (bytes stay bytes, never base64)."""
    fields: dict[str, bytes | str | int] = {"seed": result.seed, "nbytes": result.nbytes}
    for name, image in (("image", result.image), ("mask", result.mask)):
        fields[name] = image.data
        fields[f"{name}_mime"] = image.mime_type
        fields[f"{name}_width"] = image.width
        fields[f"{name}_height"] = image.height
    return fields


def result_from_fields(fields: dict[bytes, bytes]) -> EncodedResult | None:
    """The inverse of `result_fields`; None for an empty hash (a missing key)."""
    if not fields:
        return None

    def image(name: str) -> EncodedImage:
        return EncodedImage(
            data=fields[name.encode()],
            mime_type=fields[f"{name}_mime".encode()].decode(),
            width=int(fields[f"{name}_width".encode()]),
            height=int(fields[f"{name}_height".encode()]),
        )

    return EncodedResult(image=image("image"), mask=image("mask"), seed=int(fields[b"seed"]))


class RedisResultCache(ResultCache):
    """LRU bounded by the bytes of the stored results (`max_bytes` > 0), in Redis."""

    def __init__(self, redis: Redis, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive; got {max_bytes} (no cache: pass None)")
        self.max_bytes = max_bytes
        self._redis = redis
        self._put = redis.register_script(PUT_SCRIPT)

    async def get(self, key: str) -> EncodedResult | None:
        result = result_from_fields(await self._redis.hgetall(ENTRY_PREFIX + key))
        if result is not None:
            await self._redis.zadd(LRU_KEY, {key: time.time()}, xx=True)
        return result

    async def put(self, key: str, result: EncodedResult) -> None:
        if result.nbytes > self.max_bytes:
            return  # would evict everything else and still not fit
        flat = [item for pair in result_fields(result).items() for item in pair]
        await self._put(
            keys=[ENTRY_PREFIX + key, LRU_KEY, BYTES_KEY],
            args=[key, time.time(), result.nbytes, self.max_bytes, ENTRY_PREFIX, *flat],
        )

    async def nbytes(self) -> int:
        return int(await self._redis.get(BYTES_KEY) or 0)
