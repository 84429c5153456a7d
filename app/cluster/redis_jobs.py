"""The Redis `JobStore`: the same records, results, claims and retention for every ingress replica.

Layout (all under `catvton:`): `job:{id}` the record's JSON, `job:{id}:result-digest` the
`result_digest` of its result, `jobs:result:{digest}` a hash of that result's bytes
(`redis_results`) and `refs`, how many jobs hold it (results are content-addressed: the equal
results of cache hits are stored and counted once, and deleted with their last holder),
`job:{id}:preview` a hash of the latest preview (step, JPEG), `jobkey:{sha1(client, key)}` an
Idempotency-Key claim, sorted sets `jobs` (every record, for the count cap), `jobs:finished` (by
expiry time: expiry and eviction take the lowest first), `jobs:finished-by:{sha1(client)}` (each
client's finished jobs by finish time, for `max_jobs_per_client`) and `jobs:tombstones`
(forgotten ids, for 410), a byte counter `jobs:result-bytes` (of the distinct results), and a
stream `job:{id}:versions` per job holding each version for `watch` (every version reaches every
watcher, in order, as from the in-memory store).

Steps that must not interleave between replicas run as one server-side script (create with its
claim, forget, holding a result) or as a WATCH/MULTI transaction (update, finish: its result is
held by a script inside the transaction). Expiry is lazy and driven by the
`clock` as in the in-memory store, so a test can move time; nothing depends on Redis key TTLs.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from app.cluster.redis_results import result_fields, result_from_fields
from app.edge.errors import JobExpiredError, JobNotFoundError
from app.jobs.records import JobRecord
from app.jobs.store import MAX_TOMBSTONES, TOMBSTONE_S, JobStore, result_digest
from app.media.encoding import EncodedResult

PREFIX = "catvton:"
ALL_KEY = PREFIX + "jobs"
FINISHED_KEY = PREFIX + "jobs:finished"
TOMBSTONES_KEY = PREFIX + "jobs:tombstones"
BYTES_KEY = PREFIX + "jobs:result-bytes"
RESULT_PREFIX = PREFIX + "jobs:result:"  # + digest: one stored copy of equal results
WATCH_BLOCK_MS = 1000  # a watcher also re-reads the record this often (a stream lost in a restart)
VERSIONS_KEPT = 500  # per job: more than the steps and stages of one try-on
FINAL_VERSIONS_TTL_S = 60  # a final job's versions: for watchers still catching up

# KEYS: record, all, claim (or none). ARGV: id, record JSON, created_at, prefix.
CREATE_SCRIPT = """
if KEYS[3] then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    local raw = redis.call('GET', ARGV[4] .. 'job:' .. existing)
    if raw then return {0, raw} end
  end
  redis.call('SET', KEYS[3], ARGV[1])
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return {1, ARGV[2]}
"""

# The job named by the digest key no longer holds its result; the last holder deletes it.
RELEASE_RESULT = """
local function release(digest_key, bytes_key, result_prefix)
  local digest = redis.call('GET', digest_key)
  if not digest then return end
  redis.call('DEL', digest_key)
  local stored = result_prefix .. digest
  if redis.call('HINCRBY', stored, 'refs', -1) <= 0 then
    local nbytes = redis.call('HGET', stored, 'nbytes')
    if nbytes then redis.call('DECRBY', bytes_key, nbytes) end
    redis.call('DEL', stored)
  end
end
"""

# KEYS: digest key, stored result, bytes. ARGV: digest, nbytes, result prefix, field, value, ...
HOLD_RESULT_SCRIPT = (
    RELEASE_RESULT
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
release(KEYS[1], KEYS[3], ARGV[3])
if redis.call('HINCRBY', KEYS[2], 'refs', 1) == 1 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 4))
  redis.call('INCRBY', KEYS[3], ARGV[2])
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""
)

# KEYS: record, digest key, all, finished, bytes, tombstones, versions, preview.
# ARGV: id, tombstone (1/0), now, prefix, max tombstones, result prefix.
FORGET_SCRIPT = (
    RELEASE_RESULT
    + """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
release(KEYS[2], KEYS[5], ARGV[6])
redis.call('DEL', KEYS[1], KEYS[7], KEYS[8])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local record = cjson.decode(raw)
if type(record['client']) == 'string' then
  redis.call('ZREM', ARGV[4] .. 'jobs:finished-by:' .. redis.sha1hex(record['client']), ARGV[1])
end
local key = record['idempotency_key']
if type(key) == 'string' then
  local claim = ARGV[4] .. 'jobkey:' .. redis.sha1hex(record['client'] .. '\\n' .. key)
  if redis.call('GET', claim) == ARGV[1] then redis.call('DEL', claim) end
end
if ARGV[2] == '1' then
  redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
  local extra = redis.call('ZCARD', KEYS[6]) - tonumber(ARGV[5])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[6], 0, extra - 1) end
end
return 1
"""
)


def record_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def digest_key(job_id: str) -> str:
    """Holds the `result_digest` of the job's result, the key of its stored copy."""
    return f"{PREFIX}job:{job_id}:result-digest"


def stored_result_key(digest: str) -> str:
    return RESULT_PREFIX + digest


def client_finished_key(client: str) -> str:
    """The client's finished jobs; FORGET_SCRIPT computes the same with redis.sha1hex."""
    return f"{PREFIX}jobs:finished-by:{hashlib.sha1(client.encode()).hexdigest()}"


def claim_key(client: str, idempotency_key: str) -> str:
    """The claim's key; FORGET_SCRIPT computes the same with redis.sha1hex."""
    digest = hashlib.sha1(f"{client}\n{idempotency_key}".encode()).hexdigest()
    return f"{PREFIX}jobkey:{digest}"


def preview_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:preview"


def versions_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:versions"


class RedisJobStore(JobStore):
    """The `JobStore` contract (app/jobs/store.py) over one Redis shared by all replicas."""

    def __init__(self, redis: Redis, **retention: Any) -> None:
        super().__init__(**retention)
        self._redis = redis
        self._create = redis.register_script(CREATE_SCRIPT)
        self._forget_script = redis.register_script(FORGET_SCRIPT)
        self._hold_result = redis.register_script(HOLD_RESULT_SCRIPT)

    async def result_bytes(self) -> int:
        return int(await self._redis.get(BYTES_KEY) or 0)

    async def count(self) -> int:
        return await self._redis.zcard(ALL_KEY)

    async def create(self, record: JobRecord) -> tuple[JobRecord, bool]:
        await self._expire()
        keys = [record_key(record.job_id), ALL_KEY]
        if record.idempotency_key is not None:
            keys.append(claim_key(record.client, record.idempotency_key))
        created, raw = await self._create(
            keys=keys, args=[record.job_id, record.model_dump_json(), record.created_at, PREFIX]
        )
        if not created:
            return JobRecord.model_validate_json(raw), False
        await self._evict_beyond_caps(keep=record.job_id)
        return record, True

    async def claimed(self, client: str, idempotency_key: str) -> JobRecord | None:
        await self._expire()
        job_id = await self._redis.get(claim_key(client, idempotency_key))
        if job_id is None:
            return None
        raw = await self._redis.get(record_key(job_id.decode()))
        return None if raw is None else JobRecord.model_validate_json(raw)

    async def get(self, job_id: str) -> JobRecord:
        await self._expire()
        raw = await self._redis.get(record_key(job_id))
        if raw is None:
            raise await self._missing(job_id)
        return JobRecord.model_validate_json(raw)

    async def update(self, job_id: str, **changes: Any) -> JobRecord:
        # No expiry pass here: an update (one per denoising step) is of an active job, which never
        # expires, and the next read, create or count drops what did.
        return await self._replace(job_id, changes)

    async def finish(
        self, job_id: str, result: EncodedResult | None = None, **changes: Any
    ) -> JobRecord:
        await self._expire()
        now = self._clock()
        expires_at = now + self.ttl_s
        digest = None if result is None else result_digest(result)

        def store_result(pipe: Pipeline, record: JobRecord) -> None:
            if result is not None and digest is not None:
                # In the transaction: a script, as a second holder only adds itself (the bytes
                # travel each time, but are stored once).
                flat = [item for pair in result_fields(result).items() for item in pair]
                pipe.scripts.add(self._hold_result)
                pipe.evalsha(
                    self._hold_result.sha,
                    3,
                    digest_key(job_id),
                    stored_result_key(digest),
                    BYTES_KEY,
                    digest,
                    result.nbytes,
                    RESULT_PREFIX,
                    *flat,
                )
            pipe.zadd(FINISHED_KEY, {job_id: expires_at})
            pipe.zadd(client_finished_key(record.client), {job_id: now})

        changes = {"finished_at": now, "expires_at": expires_at, **changes}
        record = await self._replace(job_id, changes, also=store_result)
        await self._evict_own_beyond_share(record.client, keep=job_id)
        await self._evict_beyond_caps(keep=job_id)
        return record

    async def result(self, job_id: str) -> EncodedResult | None:
        await self.get(job_id)
        digest = await self._redis.get(digest_key(job_id))
        if digest is None:
            return None
        return result_from_fields(await self._redis.hgetall(stored_result_key(digest.decode())))

    async def save_preview(self, job_id: str, step: int, jpeg: bytes) -> JobRecord:
        def store_preview(pipe: Pipeline, record: JobRecord) -> None:
            pipe.hset(preview_key(job_id), mapping={"step": step, "data": jpeg})

        # In the record's transaction: a forgotten record (the WATCH sees it go) keeps no preview.
        return await self._replace(job_id, {"preview_step": step}, also=store_preview)

    async def preview(self, job_id: str) -> tuple[int, bytes] | None:
        await self.get(job_id)
        fields = await self._redis.hgetall(preview_key(job_id))
        if b"step" not in fields or b"data" not in fields:
            return None
        return int(fields[b"step"]), fields[b"data"]

    async def delete(self, job_id: str) -> None:
        await self.get(job_id)
        await self._forget(job_id, tombstone=False)

    async def counts(self) -> dict[str, int]:
        """Jobs kept, by status: every record read at each scrape (bounded by `max_jobs`)."""
        await self._expire()
        ids = await self._redis.zrange(ALL_KEY, 0, -1)
        if not ids:
            return {}
        raws = await self._redis.mget([record_key(job_id.decode()) for job_id in ids])
        statuses = (JobRecord.model_validate_json(raw).status for raw in raws if raw is not None)
        return dict(Counter(statuses))

    async def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        stream = versions_key(job_id)
        newest = await self._redis.xrevrange(stream, count=1)  # before the read: nothing slips by
        last_id = newest[0][0] if newest else b"0-0"
        record = await self.get(job_id)
        yield record
        while not record.final:
            read = await self._redis.xread({stream: last_id}, block=WATCH_BLOCK_MS, count=100)
            entries = read[0][1] if read else []
            if not entries:  # quiet, or the versions are gone: the record itself says
                raw = await self._redis.get(record_key(job_id))
                if raw is None:  # forgotten: the caller sees a last record that is not final
                    return
                entries = [(last_id, {b"record": raw})]
            for entry_id, fields in entries:
                last_id = entry_id
                current = JobRecord.model_validate_json(fields[b"record"])
                if current.version > record.version:
                    record = current
                    yield record

    # -- internals -------------------------------------------------------------------------------

    async def _missing(self, job_id: str) -> Exception:
        """410 for an id forgotten within a day, else 404."""
        forgotten_at = await self._redis.zscore(TOMBSTONES_KEY, job_id)
        if forgotten_at is not None and forgotten_at + TOMBSTONE_S > self._clock():
            return JobExpiredError()
        return JobNotFoundError()

    async def _replace(
        self,
        job_id: str,
        changes: dict[str, Any],
        also: Callable[[Pipeline, JobRecord], None] | None = None,
    ) -> JobRecord:
        """Read, change and write the record atomically (retried if another replica wrote it)."""
        key = record_key(job_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        raise await self._missing(job_id)
                    record = JobRecord.model_validate_json(raw)
                    record = record.model_copy(update={**changes, "version": record.version + 1})
                    pipe.multi()
                    text = record.model_dump_json()
                    pipe.set(key, text)
                    stream = versions_key(job_id)
                    pipe.xadd(stream, {"record": text}, maxlen=VERSIONS_KEPT, approximate=True)
                    if record.final:
                        pipe.expire(stream, FINAL_VERSIONS_TTL_S)
                    if also is not None:
                        also(pipe, record)
                    await pipe.execute()
                    return record
                except WatchError:
                    continue

    async def _forget(self, job_id: str, *, tombstone: bool) -> None:
        await self._forget_script(
            keys=[
                record_key(job_id),
                digest_key(job_id),
                ALL_KEY,
                FINISHED_KEY,
                BYTES_KEY,
                TOMBSTONES_KEY,
                versions_key(job_id),
                preview_key(job_id),
            ],
            args=[job_id, int(tombstone), self._clock(), PREFIX, MAX_TOMBSTONES, RESULT_PREFIX],
        )

    async def _expire(self) -> None:
        now = self._clock()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(FINISHED_KEY, "-inf", now)
            pipe.zremrangebyscore(TOMBSTONES_KEY, "-inf", now - TOMBSTONE_S)
            expired, _ = await pipe.execute()
        for job_id in expired:
            await self._forget(job_id.decode(), tombstone=True)

    async def _evict_own_beyond_share(self, client: str, *, keep: str) -> None:
        """Forget the client's own oldest finished jobs beyond `max_jobs_per_client` (never
        `keep`). Replicas doing this at once agree: each forgets all but the newest share."""
        beyond = await self._redis.zrange(
            client_finished_key(client), 0, -(self.max_jobs_per_client + 1)
        )
        for raw_id in beyond:
            if (job_id := raw_id.decode()) != keep:
                await self._forget(job_id, tombstone=True)

    async def _evict_beyond_caps(self, *, keep: str) -> None:
        """Forget the oldest finished jobs (never `keep`, never an active one) until within caps."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(ALL_KEY)
            pipe.get(BYTES_KEY)
            count, nbytes = await pipe.execute()
        nbytes = int(nbytes or 0)
        if count <= self.max_jobs and nbytes <= self.max_bytes:
            return  # the usual case: no need to list the finished jobs
        for raw_id in await self._redis.zrange(FINISHED_KEY, 0, -1):
            if count <= self.max_jobs and nbytes <= self.max_bytes:
                return
            job_id = raw_id.decode()
            if job_id == keep:
                continue
            await self._forget(job_id, tombstone=True)
            count -= 1
            # A shared result frees its bytes only with its last holder: read the counter.
            nbytes = int(await self._redis.get(BYTES_KEY) or 0)
