"""Where job records and results live: the `JobStore` interface and the in-memory default.

The routes and the job runner only use this interface, so a Redis implementation (the scaled-out
mode, app/cluster) stands in without touching them. Every method is `async` for that reason; the
in-memory store never actually waits.

The contract every implementation keeps:

- Records are `JobRecord` snapshots; `update` and `finish` replace a record and bump its `version`.
- `create` and its Idempotency-Key claim are one atomic step: two submissions with the same key
  make one job (the second gets the first's record back, `created` False).
- Results are `EncodedResult` bytes (never base64), stored by `finish`, read by `result`.
- A job's latest preview (JPEG bytes and its denoising step) is kept beside the record by
  `save_preview`, which also sets the record's `preview_step` in the same change; it lives and is
  forgotten with the record, and counts toward no cap (a few KB).
- Retention: a final record and its result live `ttl_s` seconds after they finish. Results are
  bounded by `max_bytes`, records by `max_jobs`: the oldest FINISHED jobs are evicted first; a
  queued or running job is never evicted (the newest result is kept even if it alone is over the
  byte cap: its client has not fetched it yet). Each client (`JobRecord.client`) keeps at most
  `max_jobs_per_client` finished records: when one of its jobs finishes beyond that, its OWN
  oldest finished jobs go (another client's never do for it).
- A result shared by several jobs (result-cache hits store equal results) is kept and counted
  against `max_bytes` once: results are keyed by `result_digest`, with the jobs holding each,
  and forgotten with the last of them. A forgotten (expired or evicted) id raises
  `JobExpiredError` (410) for `TOMBSTONE_S` seconds, then `JobNotFoundError` (404); a deleted
  id is forgotten at once (404).
- `watch` yields the current record, then each newer one in order, and ends after a final record,
  or when the job is forgotten (the last record yielded is then not final). Every watcher gets
  every version (the Redis store keeps them in a stream per job).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from abc import ABC, abstractmethod
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from app.edge.errors import JobExpiredError, JobNotFoundError
from app.jobs.records import JobRecord
from app.media.encoding import EncodedResult
from app.settings import Settings

TOMBSTONE_S = 24 * 3600
MAX_TOMBSTONES = 100_000  # ~10 MB of ids; beyond it the oldest answer 404 instead of 410 early


def result_digest(result: EncodedResult) -> str:
    """The SHA-256 (hex) of everything a result holds: equal results share one stored copy."""
    digest = hashlib.sha256()
    for image in (result.image, result.mask):
        header = f"{image.mime_type}\n{image.width}x{image.height}\n{len(image.data)}\n"
        digest.update(header.encode())
        digest.update(image.data)
    digest.update(f"seed {result.seed}".encode())
    return digest.hexdigest()


def job_retention(settings: Settings) -> dict[str, Any]:
    """The retention keywords of every job store, as `settings` say (one place for both)."""
    return {
        "ttl_s": settings.job_ttl,
        "max_bytes": settings.job_store_bytes,
        "max_jobs": settings.max_jobs,
        "max_jobs_per_client": settings.max_jobs_per_client,
    }


class JobStore(ABC):
    """Job records, their results and the Idempotency-Key claims (see the module docstring).

    Every implementation keeps the same retention: `ttl_s` after a job is final, at most
    `max_bytes` of distinct results, `max_jobs` records and `max_jobs_per_client` finished
    records of each client, by `clock` (seconds since the epoch).
    """

    def __init__(
        self,
        *,
        ttl_s: float,
        max_bytes: int,
        max_jobs: int,
        max_jobs_per_client: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_jobs_per_client < 1:
            raise ValueError(f"max_jobs_per_client must be at least 1; got {max_jobs_per_client}")
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.max_jobs = max_jobs
        self.max_jobs_per_client = max_jobs_per_client
        self._clock = clock

    @abstractmethod
    async def create(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Add `record`; with `record.idempotency_key`, claim it for `record.client` atomically.

        Returns (record, True), or (the existing job's record, False) when the client's key is
        already claimed (the caller compares fingerprints).
        """

    @abstractmethod
    async def claimed(self, client: str, idempotency_key: str) -> JobRecord | None:
        """The record of the job that `client`'s `idempotency_key` names, or None."""

    @abstractmethod
    async def get(self, job_id: str) -> JobRecord:
        """The current record; raises JobNotFoundError or JobExpiredError."""

    @abstractmethod
    async def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Replace the named fields, bump `version`, wake the watchers; raises as `get`."""

    @abstractmethod
    async def finish(
        self, job_id: str, result: EncodedResult | None = None, **changes: Any
    ) -> JobRecord:
        """Like `update` for the final change (`changes` holds the final status): stores `result`
        (or links the equal one already kept), sets `expires_at`, evicts the client's own oldest
        finished jobs beyond `max_jobs_per_client`, then the oldest finished beyond the caps."""

    @abstractmethod
    async def result(self, job_id: str) -> EncodedResult | None:
        """The stored result (None for a job without one); raises as `get`."""

    @abstractmethod
    async def save_preview(self, job_id: str, step: int, jpeg: bytes) -> JobRecord:
        """Keep `jpeg` as the job's latest preview, of denoising step `step`, replacing the one
        before, and set the record's `preview_step` (an `update`); raises as `get`."""

    @abstractmethod
    async def preview(self, job_id: str) -> tuple[int, bytes] | None:
        """The latest preview as (step, JPEG bytes), None before the first; raises as `get`."""

    @abstractmethod
    async def delete(self, job_id: str) -> None:
        """Forget the job, its result and its idempotency key; later lookups answer 404."""

    @abstractmethod
    async def counts(self) -> dict[str, int]:
        """Jobs kept, by status (the `catvton_jobs` gauge reads it at each scrape)."""

    @abstractmethod
    def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        """The current record, then each newer one, until a final one or the job is forgotten.

        Raises as `get` (on the first iteration) when the job is unknown.
        """


class InMemoryJobStore(JobStore):
    """The single-process default: dicts in this process, bounded and expiring as promised.

    Expiry is lazy: each call first drops what expired (finished jobs sit in an ordered dict in
    finish order, so this is O(expired)), so no background task is needed.
    """

    def __init__(self, **retention: Any) -> None:
        super().__init__(**retention)
        self._records: dict[str, JobRecord] = {}
        self._results: dict[str, str] = {}  # job id -> its result's digest
        # Digest -> (the result, how many jobs hold it): shared results are kept and counted once.
        self._distinct: dict[str, tuple[EncodedResult, int]] = {}
        self._previews: dict[str, tuple[int, bytes]] = {}  # job id -> (step, JPEG bytes)
        self._result_bytes = 0  # of the distinct results
        self._finished: OrderedDict[str, None] = OrderedDict()  # oldest finished first
        # Each client's finished jobs, oldest first (for `max_jobs_per_client`).
        self._finished_by_client: dict[str, OrderedDict[str, None]] = {}
        self._keys: dict[tuple[str, str], str] = {}  # (client, Idempotency-Key) -> job id
        self._tombstones: OrderedDict[str, float] = OrderedDict()  # forgotten id -> when
        # Each watcher's queue of new versions; None: the job was forgotten.
        self._watchers: dict[str, set[asyncio.Queue[JobRecord | None]]] = {}

    @property
    def result_bytes(self) -> int:
        return self._result_bytes

    def __len__(self) -> int:
        return len(self._records)

    async def create(self, record: JobRecord) -> tuple[JobRecord, bool]:
        self._expire()
        if record.idempotency_key is not None:
            scope = (record.client, record.idempotency_key)
            if (existing := self._keys.get(scope)) is not None:
                return self._records[existing], False
            self._keys[scope] = record.job_id
        self._records[record.job_id] = record
        self._evict_beyond_caps(keep=record.job_id)
        return record, True

    async def claimed(self, client: str, idempotency_key: str) -> JobRecord | None:
        self._expire()
        job_id = self._keys.get((client, idempotency_key))
        return None if job_id is None else self._records[job_id]

    async def get(self, job_id: str) -> JobRecord:
        self._expire()
        return self._lookup(job_id)

    async def update(self, job_id: str, **changes: Any) -> JobRecord:
        self._expire()
        return self._replace(job_id, changes)

    async def finish(
        self, job_id: str, result: EncodedResult | None = None, **changes: Any
    ) -> JobRecord:
        self._expire()
        now = self._clock()
        record = self._replace(
            job_id, {"finished_at": now, "expires_at": now + self.ttl_s, **changes}
        )
        if result is not None:
            self._hold_result(job_id, result)
        self._finished[job_id] = None
        own = self._finished_by_client.setdefault(record.client, OrderedDict())
        own[job_id] = None
        for oldest in list(own)[: max(0, len(own) - self.max_jobs_per_client)]:
            if oldest != job_id:
                self._forget(oldest, tombstone=True)
        self._evict_beyond_caps(keep=job_id)
        return record

    async def result(self, job_id: str) -> EncodedResult | None:
        self._expire()
        self._lookup(job_id)
        digest = self._results.get(job_id)
        return None if digest is None else self._distinct[digest][0]

    async def save_preview(self, job_id: str, step: int, jpeg: bytes) -> JobRecord:
        self._expire()
        self._lookup(job_id)
        self._previews[job_id] = (step, jpeg)
        return self._replace(job_id, {"preview_step": step})

    async def preview(self, job_id: str) -> tuple[int, bytes] | None:
        self._expire()
        self._lookup(job_id)
        return self._previews.get(job_id)

    async def delete(self, job_id: str) -> None:
        self._expire()
        self._lookup(job_id)
        self._forget(job_id, tombstone=False)

    async def counts(self) -> dict[str, int]:
        self._expire()
        return dict(Counter(record.status for record in self._records.values()))

    async def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        record: JobRecord | None = await self.get(job_id)
        changes: asyncio.Queue[JobRecord | None] = asyncio.Queue()
        watchers = self._watchers.setdefault(job_id, set())
        watchers.add(changes)
        try:
            while record is not None:  # None: forgotten, the last record yielded is not final
                yield record
                if record.final:
                    return
                record = await changes.get()
        finally:
            watchers.discard(changes)
            if not watchers:
                self._watchers.pop(job_id, None)

    # -- internals -------------------------------------------------------------------------------

    def _lookup(self, job_id: str) -> JobRecord:
        record = self._records.get(job_id)
        if record is not None:
            return record
        if job_id in self._tombstones:
            raise JobExpiredError()
        raise JobNotFoundError()

    def _replace(self, job_id: str, changes: dict[str, Any]) -> JobRecord:
        record = self._lookup(job_id)
        record = record.model_copy(update={**changes, "version": record.version + 1})
        self._records[job_id] = record
        self._notify(job_id, record)
        return record

    def _notify(self, job_id: str, record: JobRecord | None) -> None:
        for changes in self._watchers.get(job_id, ()):
            changes.put_nowait(record)

    def _hold_result(self, job_id: str, result: EncodedResult) -> None:
        """`job_id` holds `result`: the equal one already kept, if any (its bytes count once)."""
        self._release_result(job_id)  # a second finish replaces the first's result
        digest = result_digest(result)
        kept, holders = self._distinct.get(digest, (result, 0))
        if not holders:
            self._result_bytes += kept.nbytes
        self._distinct[digest] = (kept, holders + 1)
        self._results[job_id] = digest

    def _release_result(self, job_id: str) -> None:
        """`job_id` no longer holds its result; the last holder frees the bytes."""
        digest = self._results.pop(job_id, None)
        if digest is None:
            return
        kept, holders = self._distinct[digest]
        if holders > 1:
            self._distinct[digest] = (kept, holders - 1)
        else:
            del self._distinct[digest]
            self._result_bytes -= kept.nbytes

    def _forget(self, job_id: str, *, tombstone: bool) -> None:
        record = self._records.pop(job_id)
        self._release_result(job_id)
        self._previews.pop(job_id, None)
        self._finished.pop(job_id, None)
        own = self._finished_by_client.get(record.client)
        if own is not None:
            own.pop(job_id, None)
            if not own:
                del self._finished_by_client[record.client]
        if record.idempotency_key is not None:
            self._keys.pop((record.client, record.idempotency_key), None)
        if tombstone:
            self._tombstones[job_id] = self._clock()
            while len(self._tombstones) > MAX_TOMBSTONES:
                self._tombstones.popitem(last=False)
        self._notify(job_id, None)

    def _expire(self) -> None:
        now = self._clock()
        while self._finished:
            oldest = next(iter(self._finished))
            expires_at = self._records[oldest].expires_at
            if expires_at is None or expires_at > now:
                break
            self._forget(oldest, tombstone=True)
        while self._tombstones:
            oldest, forgotten_at = next(iter(self._tombstones.items()))
            if forgotten_at + TOMBSTONE_S > now:
                break
            del self._tombstones[oldest]

    def _evict_beyond_caps(self, *, keep: str) -> None:
        """Evict the oldest finished jobs (never `keep`, never an active one) until within caps."""
        for job_id in list(self._finished):
            if len(self._records) <= self.max_jobs and self._result_bytes <= self.max_bytes:
                return
            if job_id != keep:
                self._forget(job_id, tombstone=True)
