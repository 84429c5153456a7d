"""Stored images in Redis: the `ImageStore` contract (app/images/store.py) shared by every ingress
replica, so an image stored through one is tried on through any other.

Layout (prefix `catvton:images:`): one hash per image (`img:<id>`: the metadata as JSON, each
fitted form's raw pixels, each kept mask, the pin count and lease), sorted sets by last use (all
images, and one per client), a hash of each image's bytes and one of its owner, a byte counter,
and tombstones (`gone:<id>`, the owner, expiring after TOMBSTONE_S). Retention and eviction run
in server-side scripts, so two replicas storing at once keep the counts exact. Expiry is lazy, as
in memory (each call first forgets what expired); each image hash also carries a Redis expiry of
the TTL plus the pin lease, a safety net that never fires before the lazy pass would.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from app.edge.errors import ImageExpiredError, ImageNotFoundError
from app.images.store import FITTED_PARTS, PIN_LEASE_S, TOMBSTONE_S, ImageStore, Pixels, StoredImage

PREFIX = "catvton:images:"

# Functions every script starts with. P: the prefix (the first argument), NOW: the store's clock
# (the last argument), in seconds since the epoch.
COMMON = """
local P = ARGV[1]
local NOW = tonumber(ARGV[#ARGV])
local function pinned(id, now)
  local pins, untl = unpack(redis.call('HMGET', P .. 'img:' .. id, 'pins', 'pinned_until'))
  return tonumber(pins or '0') > 0 and tonumber(untl or '0') > now
end
local function forget(id, tombstone)
  local client = redis.call('HGET', P .. 'owners', id)
  local size = redis.call('HGET', P .. 'sizes', id)
  if size then redis.call('DECRBY', P .. 'bytes', size) end
  redis.call('HDEL', P .. 'sizes', id)
  redis.call('HDEL', P .. 'owners', id)
  redis.call('ZREM', P .. 'lru', id)
  if client then redis.call('ZREM', P .. 'client:' .. client, id) end
  redis.call('DEL', P .. 'img:' .. id)
  if tombstone and client then
    -- The time too (the store's clock decides), the expiry only tidies up.
    redis.call('SET', P .. 'gone:' .. id, client .. '|' .. NOW, 'EX', TOMBSTONE_S)
  end
end
local function sweep(now, ttl)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'lru', '-inf', now - ttl)) do
    if not pinned(id, now) then forget(id, true) end
  end
end
local function evict(keep, client, now, max_bytes, max_per_client)
  if client then
    local own = P .. 'client:' .. client
    for _, id in ipairs(redis.call('ZRANGE', own, 0, -1)) do
      if redis.call('ZCARD', own) <= max_per_client then break end
      if id ~= keep and not pinned(id, now) then forget(id, true) end
    end
  end
  for _, id in ipairs(redis.call('ZRANGE', P .. 'lru', 0, -1)) do
    if tonumber(redis.call('GET', P .. 'bytes') or '0') <= max_bytes then break end
    if id ~= keep and not pinned(id, now) then forget(id, true) end
  end
end
-- 'ok', 'missing' (unknown or another owner's) or 'expired'; forgets a natively expired one.
local function lookup(id, owner)
  local client = redis.call('HGET', P .. 'owners', id)
  if client and redis.call('EXISTS', P .. 'img:' .. id) == 0 then
    forget(id, true)
    client = nil
  end
  if client then
    if owner ~= '' and owner ~= client then return 'missing' end
    return 'ok'
  end
  local gone = redis.call('GET', P .. 'gone:' .. id)
  if not gone then return 'missing' end
  local sep = string.find(gone, '|', 1, true)
  local client, at = string.sub(gone, 1, sep - 1), tonumber(string.sub(gone, sep + 1))
  if (owner == '' or owner == client) and at + TOMBSTONE_S > NOW then return 'expired' end
  return 'missing'
end
""".replace("TOMBSTONE_S", str(TOMBSTONE_S))

# ARGV: prefix, id, client, now, ttl, max bytes, max per client, nbytes, expire s, field, value,
# ..., now (every script but PIN ends with the clock)
ADD_SCRIPT = (
    COMMON
    + """
local id, client, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
sweep(now, tonumber(ARGV[5]))
redis.call('HSET', P .. 'img:' .. id, unpack(ARGV, 10, #ARGV - 1))
redis.call('EXPIRE', P .. 'img:' .. id, ARGV[9])
redis.call('ZADD', P .. 'lru', now, id)
redis.call('ZADD', P .. 'client:' .. client, now, id)
redis.call('HSET', P .. 'sizes', id, ARGV[8])
redis.call('HSET', P .. 'owners', id, client)
redis.call('INCRBY', P .. 'bytes', ARGV[8])
evict(id, client, now, tonumber(ARGV[6]), tonumber(ARGV[7]))
"""
)

# ARGV: prefix, id, owner ('' = any), now, ttl, touch (0/1), expire s. -> {state, last used}
GET_SCRIPT = (
    COMMON
    + """
local id, owner, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
sweep(now, tonumber(ARGV[5]))
local state = lookup(id, owner)
if state ~= 'ok' then return {state, '0'} end
if ARGV[6] == '1' then
  local client = redis.call('HGET', P .. 'owners', id)
  redis.call('ZADD', P .. 'lru', now, id)
  redis.call('ZADD', P .. 'client:' .. client, now, id)
  if redis.call('TTL', P .. 'img:' .. id) < tonumber(ARGV[7]) then
    redis.call('EXPIRE', P .. 'img:' .. id, ARGV[7])
  end
end
return {state, redis.call('ZSCORE', P .. 'lru', id)}
"""
)

# ARGV: prefix, id, owner. -> state
DELETE_SCRIPT = (
    COMMON
    + """
local state = lookup(ARGV[2], ARGV[3])
if state == 'ok' then forget(ARGV[2], false) end
return state
"""
)

# ARGV: prefix, id, field, data, now, max bytes, max per client
PUT_MASK_SCRIPT = (
    COMMON
    + """
local id, key = ARGV[2], P .. 'img:' .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return 0 end
local delta = string.len(ARGV[4]) - redis.call('HSTRLEN', key, ARGV[3])
redis.call('HSET', key, ARGV[3], ARGV[4])
redis.call('HINCRBY', P .. 'sizes', id, delta)
redis.call('INCRBY', P .. 'bytes', delta)
evict(id, nil, tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
return 1
"""
)

# ARGV: prefix, id, +1 or -1, lease end, lease s
PIN_SCRIPT = """
local key = ARGV[1] .. 'img:' .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return 0 end
local pins = redis.call('HINCRBY', key, 'pins', ARGV[3])
if pins < 0 then redis.call('HSET', key, 'pins', 0) end
if tonumber(ARGV[3]) > 0 then
  redis.call('HSET', key, 'pinned_until', ARGV[4])
  if redis.call('TTL', key) < tonumber(ARGV[5]) then redis.call('EXPIRE', key, ARGV[5]) end
end
return 1
"""


def _raw(value: bytes | str | None) -> bytes:
    """A pixel field as read (the client does not decode responses)."""
    assert isinstance(value, bytes), "pixels are stored with their image"
    return value


def _raise(state: str) -> None:
    if state == "expired":
        raise ImageExpiredError()
    if state != "ok":
        raise ImageNotFoundError()


class RedisImageStore(ImageStore):
    """The `ImageStore` contract in Redis (see the module docstring)."""

    def __init__(self, redis: Redis, **retention: Any) -> None:
        super().__init__(**retention)
        self._redis = redis
        self._add = redis.register_script(ADD_SCRIPT)
        self._get = redis.register_script(GET_SCRIPT)
        self._delete = redis.register_script(DELETE_SCRIPT)
        self._put_mask = redis.register_script(PUT_MASK_SCRIPT)
        self._pin = redis.register_script(PIN_SCRIPT)

    @property
    def _expire_s(self) -> int:
        return int(self.ttl_s + PIN_LEASE_S) + 1

    async def add(self, image: StoredImage) -> StoredImage:
        now = self._clock()
        meta = {
            "client": image.client,
            "width": image.width,
            "height": image.height,
            "upload_bytes": image.upload_bytes,
            "sha256": image.sha256,
            "size": list(image.size),
            "modes": {part: pixels.mode for part, pixels in image.fitted.items()},
        }
        fields: list[Any] = ["meta", json.dumps(meta), "pins", 0]
        for part, pixels in image.fitted.items():
            fields += [f"fit:{part}", pixels.data]
        await self._add(
            args=[
                PREFIX,
                image.image_id,
                image.client,
                now,
                self.ttl_s,
                self.max_bytes,
                self.max_images_per_client,
                image.nbytes,
                self._expire_s,
                *fields,
                now,
            ]
        )
        return StoredImage(**{**image.__dict__, "last_used": now, "expires_at": now + self.ttl_s})

    async def get(self, image_id: str, owner: str | None, *, touch: bool = True) -> StoredImage:
        state, last_used = await self._get(
            args=[
                PREFIX,
                image_id,
                owner or "",
                self._clock(),
                self.ttl_s,
                int(touch),
                self._expire_s,
                self._clock(),
            ]
        )
        _raise(state.decode())
        names = ["meta", *(f"fit:{part}" for part in FITTED_PARTS)]
        values = await self._redis.hmget(f"{PREFIX}img:{image_id}", names)
        if values[0] is None:  # deleted between the two calls
            raise ImageNotFoundError()
        meta = json.loads(values[0])
        width, height = meta["size"]
        fitted = {
            part: Pixels(meta["modes"][part], width, height, _raw(data))
            for part, data in zip(FITTED_PARTS, values[1:], strict=True)
        }
        used = float(last_used)
        return StoredImage(
            image_id=image_id,
            client=meta["client"],
            width=meta["width"],
            height=meta["height"],
            upload_bytes=meta["upload_bytes"],
            sha256=meta["sha256"],
            size=(width, height),
            fitted=fitted,
            last_used=used,
            expires_at=used + self.ttl_s,
        )

    async def delete(self, image_id: str, owner: str | None) -> None:
        state = await self._delete(args=[PREFIX, image_id, owner or "", self._clock()])
        _raise(state.decode())

    async def mask(self, image_id: str, cloth_type: str) -> Pixels | None:
        meta, data = await self._redis.hmget(
            f"{PREFIX}img:{image_id}", ["meta", f"mask:{cloth_type}"]
        )
        if meta is None or data is None:
            return None
        width, height = json.loads(meta)["size"]
        return Pixels("L", width, height, _raw(data))

    async def put_mask(self, image_id: str, cloth_type: str, mask: Pixels) -> None:
        await self._put_mask(
            args=[
                PREFIX,
                image_id,
                f"mask:{cloth_type}",
                mask.data,
                self._clock(),
                self.max_bytes,
                self.max_images_per_client,
                self._clock(),
            ]
        )

    async def pin(self, image_id: str) -> None:
        lease = int(PIN_LEASE_S)
        await self._pin(args=[PREFIX, image_id, 1, self._clock() + lease, lease])

    async def unpin(self, image_id: str) -> None:
        await self._pin(args=[PREFIX, image_id, -1, 0, 0])

    async def nbytes(self) -> int:
        return int(await self._redis.get(PREFIX + "bytes") or 0)
