"""`--max-active-per-client` counted across every ingress replica, in Redis.

Each client has one hash; each ingress replica writes its own field with the number of that
client's try-ons it holds (queued or running, synchronous or jobs). A new one is admitted when the
fields of the live replicas add up to less than the cap, in one server-side script. A replica
whose lease (`shared_jobs.LEASE_PREFIX`) has run out is dead: its field is dropped, so the slots
of a replica that crashed come back by themselves.

Every write puts this replica's own count (kept in memory, always right) rather than adding to
the stored one, so a release lost while Redis was down is mended by the next acquire or release.
While Redis cannot be reached the cap is not enforced (the request is served and it is logged), as
for the rate limits.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.access.limits import ActiveSlot, ActiveWork
from app.cluster.shared_jobs import LEASE_PREFIX

logger = logging.getLogger(__name__)

KEY_PREFIX = "catvton:active:"  # + client: hash, ingress replica id -> its count
EXPIRE_S = 24 * 3600  # a client silent for a day leaves nothing behind

# KEYS[1]: the client's hash. ARGV: this replica's id, its count with the new slot, the cap, the
# lease prefix, the expiry. Returns {admitted (0/1), slots held before this one}. The lease keys are
# read by name (not in KEYS): this needs one Redis, not a Redis Cluster.
ACQUIRE_SCRIPT = """
local held = tonumber(ARGV[2]) - 1
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local replica = fields[i]
  if replica ~= ARGV[1] then
    if redis.call('EXISTS', ARGV[4] .. replica) == 1 then
      held = held + tonumber(fields[i + 1])
    else
      redis.call('HDEL', KEYS[1], replica)
    end
  end
end
if held >= tonumber(ARGV[3]) then
  return {0, held}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {1, held}
"""


class RedisActiveWork(ActiveWork):
    """`ActiveWork` shared by the ingress replicas (see the module docstring)."""

    def __init__(self, redis: Redis, replica_id: str, max_per_client: int) -> None:
        super().__init__(max_per_client)
        self._redis = redis
        self.replica_id = replica_id
        self._acquire = redis.register_script(ACQUIRE_SCRIPT)
        self._writes: set[asyncio.Task[None]] = set()  # releases on their way to Redis

    async def acquire(self, client: str) -> ActiveSlot:
        self.counts[client] += 1  # reserved first: a concurrent acquire here counts it
        try:
            args = [self.replica_id, self.counts[client], self.max_per_client, LEASE_PREFIX]
            admitted, held = await self._acquire(keys=[KEY_PREFIX + client], args=[*args, EXPIRE_S])
        except RedisError as exc:
            logger.warning("active work not counted for %s: Redis unavailable (%s)", client, exc)
            return ActiveSlot(self, client)  # served; released here like any other
        except BaseException:
            self._forget(client)
            raise
        if not admitted:
            self._forget(client)
            raise self.refuse(held)
        return ActiveSlot(self, client)

    def release(self, client: str) -> None:
        """Called from sync code (a response's end, a job's end): the write runs as a task."""
        self._forget(client)
        task = asyncio.get_running_loop().create_task(self._write(client))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, client: str) -> None:
        """Put this replica's count for `client` (none: its field goes)."""
        key, count = KEY_PREFIX + client, self.counts[client]
        try:
            if count:
                await self._redis.hset(key, self.replica_id, count)
            else:
                await self._redis.hdel(key, self.replica_id)
        except RedisError as exc:
            logger.warning("active work of %s not written: Redis unavailable (%s)", client, exc)
